"""Munge off the loop: who sent each request, decoded by worker threads
(``CredentialChecks``); the WELCOMEs' credentials, encoded by others (``OffLoop``).

A munge decode is a round trip to munged (about 100 us with libmunge, milliseconds when
munged is loaded or a flood of bogus credentials arrives). The loop must answer pings and
agents meanwhile, so decoding happens in a small thread pool (libmunge releases the GIL),
and the loop takes the results in the order the requests arrived: a client's pipelined
requests are handled in its order, and one slow decode delays only those behind it.

``wake_fd`` is readable whenever a check finished, so the loop's poller wakes at once.
At most ``max_pending`` checks wait; beyond that a request is refused with ``busy``
instead of growing the co-scheduler without bound.

May not touch: requests (requests.py handles them once checked).
"""
from __future__ import annotations

import collections
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

log = logging.getLogger("faas.coscheduler")


class OffLoop:
    """Calls that wait on munged, run by worker threads; their outcomes come back to the
    loop in the order they were made (``finished``)."""

    def __init__(self, threads: int = 4, max_pending: int = 10_000, name: str = "munge"):
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._pending: collections.deque[tuple[Any, Future]] = collections.deque()
        self.max_pending = max_pending
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def wake_fd(self) -> int:
        return self._rfd

    def __len__(self) -> int:
        return len(self._pending)

    def call(self, item: Any, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` in a worker; ``finished`` yields ``item`` with what it returned
        or raised. False when too many wait."""
        if len(self._pending) >= self.max_pending:
            return False
        future = self._pool.submit(fn, *args)
        future.add_done_callback(self._wake)
        self._pending.append((item, future))
        return True

    def _wake(self, _future: Future) -> None:
        try:
            os.write(self._wfd, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the loop wakes anyway

    def finished(self) -> Iterator[tuple[Any, Any]]:
        """(item, what the call returned or raised) of the calls done, in the order made."""
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass
        while self._pending and self._pending[0][1].done():
            item, future = self._pending.popleft()
            exc = future.exception()
            yield item, (exc if exc is not None else future.result())

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        os.close(self._rfd)
        os.close(self._wfd)


class CredentialChecks(OffLoop):
    def __init__(self, verify: Callable[[str, str], int], threads: int = 4, max_pending: int = 10_000):
        super().__init__(threads, max_pending, "credential")
        self._verify = verify

    def submit(self, item: Any, cred: str, digest: str) -> bool:
        """Check ``cred`` against ``digest`` for ``item`` (``finished`` yields the uid it
        proves, or the exception); False when too many wait."""
        return self.call(item, self._verify, cred, digest)
