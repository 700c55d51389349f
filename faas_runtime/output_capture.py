"""One invocation's stdout and stderr, captured by the executor itself.

The executor points its file descriptors 1 and 2 at a private in-memory file for the
length of a call, so ``print()``, C code and child processes are all caught, and sends
the last ``protocol.MAX_OUTPUT_BYTES`` with the RESULT. Nothing is left on disk and the
agent (root) never opens a path the function could replace (docs/security.md): the text
arrives in the executor's reply, as any other field.

Owns: an executor's per-call stdout/stderr capture. May not touch: files by name.
"""
from __future__ import annotations

import os
import sys

from . import protocol as P


class OutputCapture:
    """A memfd that takes over fds 1 and 2 during a call (``start`` / ``stop``)."""

    def __init__(self, limit: int = P.MAX_OUTPUT_BYTES):
        self.limit = limit
        self.fd = os.memfd_create("faas-output", os.MFD_CLOEXEC)
        self._saved: list[int] = []  # the process' own fds 1 and 2, duplicated once

    def start(self) -> None:
        _flush()
        if os.fstat(self.fd).st_size:  # most calls print nothing: then no truncate and no seek
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
        if not self._saved:
            self._saved = [os.dup(1), os.dup(2)]
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)

    def stop(self) -> str:
        """Restore fds 1 and 2; the call's output (its end, if longer than the limit)."""
        _flush()
        for target, saved in zip((1, 2), self._saved):
            os.dup2(saved, target)
        return tail(self.fd, self.limit)


def tail(fd: int, limit: int) -> str:
    """The last ``limit`` bytes of ``fd`` as text, saying how much was cut before them."""
    size = os.fstat(fd).st_size
    if not size:
        return ""
    data = os.pread(fd, limit, max(0, size - limit))
    text = data.decode("utf-8", errors="replace")
    return f"[... {size - limit} earlier bytes not kept ...]\n{text}" if size > limit else text


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass  # closed or replaced by the function: nothing buffered to keep
