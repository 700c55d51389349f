"""Watch a node's spool directory for lend records, without polling delay.

The SPANK plugin writes ``<spool>/<node>/<job>.json`` atomically (temp file, rename), so
a new or rewritten record shows up as an ``IN_MOVED_TO`` in the node directory. On Linux
the watcher uses inotify through ctypes (no extra dependency) and exposes its file
descriptor, which the agent puts into its zmq poller beside its sockets: a revoke wakes the
agent the moment it is renamed into place. Elsewhere, or when inotify is not available
(no more watches, an odd file system), it falls back to rescanning every ``rescan_s``.

Inotify alone is not trusted with everything: the node directory may not exist yet (the
plugin creates it at the first lend), may be removed and recreated, and the kernel queue
may overflow; each of these leads to a full rescan. A full rescan also runs every
``rescan_s`` even with inotify, as a cheap backstop for spools on network file systems.

    watcher = SpoolWatcher(spool / node)
    poller.register(watcher.fileno(), zmq.POLLIN)   # when not None
    for path, record in watcher.changes():           # records new or changed since last call
        ...
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import struct
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

log = logging.getLogger("faas.spool")

__all__ = ["SpoolWatcher", "inotify_available", "read_record"]

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len
_NODE_MASK = IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_PARENT_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def inotify_available() -> bool:
    return _LIBC is not None


def read_record(path: Path) -> Optional[dict]:
    """A lend record as a dict, or None (logged) when it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("unreadable lend record %s: %s", path, exc)
        return None
    if not isinstance(record, dict):
        log.warning("lend record %s is not a JSON object", path)
        return None
    return record


def _is_record(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")


class SpoolWatcher:
    """New and changed lend records of one node directory (``<spool>/<node>``)."""

    def __init__(self, node_dir: Path, *, use_inotify: bool = True, rescan_s: float = 5.0):
        self.node_dir = Path(node_dir)
        self.rescan_s = rescan_s
        self._seen: dict[str, tuple[int, int]] = {}  # path -> (inode, mtime_ns)
        self._dirty: set[str] = set()
        self._full = True  # the first call reads everything: a restarted agent rebuilds its view
        self._next_rescan = 0.0
        self._fd: Optional[int] = None
        self._wd_node = self._wd_parent = -1
        if use_inotify and _LIBC is not None:
            fd = _LIBC.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                log.warning("inotify unavailable (%s); polling %s every %g s", os.strerror(ctypes.get_errno()),
                            self.node_dir, rescan_s)
            else:
                self._fd = fd
                self._watch()

    # -- inotify --------------------------------------------------------------------------

    def _add_watch(self, path: Path, mask: int) -> int:
        assert self._fd is not None and _LIBC is not None
        wd = _LIBC.inotify_add_watch(self._fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            if err not in (errno.ENOENT, errno.ENOTDIR):
                log.warning("cannot watch %s: %s; relying on rescans", path, os.strerror(err))
        return wd

    def _watch(self) -> None:
        """(Re)arm the watches: the parent catches the node directory appearing."""
        if self._fd is None:
            return
        if self._wd_parent < 0:
            self._wd_parent = self._add_watch(self.node_dir.parent, _PARENT_MASK)
        if self._wd_node < 0:
            self._wd_node = self._add_watch(self.node_dir, _NODE_MASK)
            if self._wd_node >= 0:
                self._full = True  # records may have arrived before the watch

    def fileno(self) -> Optional[int]:
        """The inotify descriptor to poll for readability, or None when polling."""
        return self._fd

    @property
    def uses_inotify(self) -> bool:
        return self._fd is not None

    def _drain(self) -> None:
        if self._fd is None:
            return
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("reading inotify events failed: %s; rescanning", exc)
                self._full = True
                break
            if not data:
                break
            off = 0
            while off + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
                name = data[off + _EVENT.size: off + _EVENT.size + length].split(b"\0", 1)[0]
                off += _EVENT.size + length
                self._event(wd, mask, os.fsdecode(name))

    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            self._full = True
            return
        if wd == self._wd_node and wd >= 0:
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                self._wd_node = -1
                self._full = True
            elif name and _is_record(name):
                self._dirty.add(str(self.node_dir / name))
            return
        if wd == self._wd_parent and wd >= 0:
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                self._wd_parent = -1
            if name == self.node_dir.name or not name:
                self._wd_node = -1 if mask & (IN_DELETE | IN_MOVED_FROM) else self._wd_node
                self._full = True

    # -- the records ----------------------------------------------------------------------

    def _check(self, path: str) -> Optional[dict]:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._seen.pop(path, None)
            return None
        except OSError as exc:
            log.warning("cannot stat lend record %s: %s", path, exc)
            return None
        key = (st.st_ino, st.st_mtime_ns)
        if self._seen.get(path) == key:
            return None
        record = read_record(Path(path))
        if record is not None:
            self._seen[path] = key
        return record

    def changes(self) -> Iterator[tuple[Path, dict]]:
        """Records new or changed since the last call (each at most once per change)."""
        self._drain()
        now = time.monotonic()
        if now >= self._next_rescan:
            self._full = True
        if self._full:
            self._watch()
            self._full = False
            self._next_rescan = now + self.rescan_s
            try:
                names = [e.name for e in os.scandir(self.node_dir) if _is_record(e.name)]
            except FileNotFoundError:
                names = []  # no job has lent anything on this node yet
            except OSError as exc:
                log.warning("cannot list %s: %s", self.node_dir, exc)
                names = []
            self._dirty.update(str(self.node_dir / n) for n in names)
            present = {str(self.node_dir / n) for n in names}
            for gone in set(self._seen) - present:
                del self._seen[gone]
        dirty, self._dirty = sorted(self._dirty), set()
        for path in dirty:
            record = self._check(path)
            if record is not None:
                yield Path(path), record

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "SpoolWatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
