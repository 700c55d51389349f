"""High availability: which of several co-schedulers on one PostgreSQL database is active.

Election: a session-level advisory lock (``pg_try_advisory_lock(LOCK_KEY)``) taken on a
connection of its own and held for the life of the active co-scheduler. PostgreSQL
releases it when that connection ends: at once when the process dies (the kernel closes
its socket), within about ``KEEPALIVE`` seconds (TCP keepalives and ``tcp_user_timeout``,
set on the session) when its host or its network is lost. A standby tries the lock every
``POLL_S``. A stopped holder (SIGSTOP, a frozen VM) keeps its connection open: the active
one uses its lock connection every ``WATCH_S`` from a thread, and a standby that finds it
silent for ``STALLED_S`` ends every session of it (they carry its name as
``application_name``; both co-schedulers connect as one database role) and takes the lock.

Fencing: the lock alone does not stop a co-scheduler that lost it without noticing (its
lock connection died in a partition) from committing over its other connections. So each
co-scheduler that becomes active raises the epoch in ``coscheduler_leader`` (db/models.py,
``Leader``), and every transaction it runs begins by reading that row FOR SHARE: another
epoch fails the transaction (``LeadershipLost``) before it writes anything, and the loop
sends nothing for a step that did not commit (daemon.py). The row lock orders the two: the
new one's UPDATE waits for the old one's transactions in flight, and every later one reads
the new epoch. The old one then exits; its supervisor (systemd) restarts it as a standby.

Standing by: the standby binds the co-scheduler's address and answers every message with
ERROR ``standby``, so agents and clients move on to the next address at once
(faas_runtime/failover.py) instead of waiting for a timeout.

Owns: the lock connection, the epoch, the standby's socket. May not touch: the queue.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable, Optional

import zmq
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from faas_runtime import curve
from faas_runtime import protocol as P

from . import db as D
from .config import Config

log = logging.getLogger("faas.coscheduler")

LOCK_KEY = 0x53_46_41_41_53_48_41  # "SFAASHA": the same constant in every co-scheduler of a site
POLL_S = 0.5  # a standby tries the lock this often
WATCH_S = 1.0  # the active one uses its lock connection this often (a thread: see _watch)
STALLED_S = 10.0  # a holder whose lock connection is silent this long is stopped: a standby ends it
EXIT_LOST = 75  # EX_TEMPFAIL: the active one that lost the leadership exits; systemd restarts it
KEEPALIVE = 5  # seconds: idle 2 + 3 probes 1 s apart; unacknowledged data: tcp_user_timeout
# A lost peer is dropped by the server (the lock goes with it) and noticed by the client.
SERVER_TIMEOUTS = ("SET tcp_keepalives_idle = 2; SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3; "
                   f"SET tcp_user_timeout = {KEEPALIVE * 1000}")
CLIENT_TIMEOUTS = {"keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1, "keepalives_count": 3,
                   "tcp_user_timeout": KEEPALIVE * 1000, "connect_timeout": KEEPALIVE}


class LeadershipLost(BaseException):
    """Another co-scheduler is active now (or ours cannot know it still is). A
    BaseException: no step's ``except Exception`` may carry on as if it were active."""


class Leadership:
    """This co-scheduler's claim to be the active one: the lock connection and the epoch."""

    def __init__(self, database: D.Database, holder: Optional[str] = None):
        self.database = database
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        # Every connection of this co-scheduler carries it: a standby ends them all (stalled holder).
        self.app_name = f"faas-coscheduler {self.holder}"[:63]
        self.epoch: Optional[int] = None
        self.lost: Optional[str] = None  # why this one is not the active one any more (the watcher's)
        # Autocommit: the lock connection never sits in a transaction (no snapshot held).
        self._engine = create_engine(database.url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                                     connect_args={**CLIENT_TIMEOUTS, "application_name": self.app_name})
        self._conn: Optional[Connection] = None
        self._conn_lock = threading.RLock()  # the loop's thread and the watcher's share the connection
        self._stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None

    def try_acquire(self) -> bool:
        """One attempt at the lock; True when this co-scheduler holds it. A holder whose
        lock connection has been silent for ``STALLED_S`` is stopped (SIGSTOP, a frozen VM):
        its sessions are ended, which frees the lock for a later attempt."""
        with self._conn_lock:
            return self._try_acquire()

    def _try_acquire(self) -> bool:
        try:
            if self._conn is None:
                self._conn = self._engine.connect()
                self._conn.exec_driver_sql(SERVER_TIMEOUTS)
            if self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar():
                if self._watcher is None:  # from now on (migrations included) standbys must see us alive
                    self._watcher = threading.Thread(target=self._watch, name="leadership-watch", daemon=True)
                    self._watcher.start()
                return True
            self._end_stalled_holder()
        except SQLAlchemyError as exc:
            log.warning("cannot reach the database to ask for the leadership: %s", exc)
            self._drop()
        return False

    def _end_stalled_holder(self) -> None:
        assert self._conn is not None
        row = self._conn.execute(text(
            "SELECT a.application_name, extract(epoch FROM now() - a.query_start) FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.classid::bigint = :hi AND l.objid::bigint = :lo AND l.objsubid = 1"),
            {"hi": LOCK_KEY >> 32, "lo": LOCK_KEY & 0xFFFFFFFF}).first()
        if row is None or row[1] is None or float(row[1]) < STALLED_S or not row[0]:
            return
        log.warning("the active co-scheduler (%s) has not used its lock connection for %.0f s: ending its "
                    "sessions to take over", row[0], float(row[1]))
        self._conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :a"),
                           {"a": row[0]})

    def take_over(self) -> int:
        """Become the active one (the lock is held, the schema is current): raise the epoch,
        which fences the previous one, and check every later transaction of ours against it."""
        with self._conn_lock:
            assert self._conn is not None
            self.epoch = int(self._conn.execute(text(
                "UPDATE coscheduler_leader SET epoch = epoch + 1, holder = :h, since = now() WHERE id = 1 "
                "RETURNING epoch"), {"h": self.holder[:300]}).scalar_one())
        # The pool's connections too: a partitioned old leader's row lock must not outlive it by
        # hours, and a standby that finds us stalled ends them by name.
        event.listen(self.database.engine, "connect",
                     lambda dbapi_conn, _record: _set_session(dbapi_conn, self.app_name))
        self.database.engine.dispose()  # connections made before have the defaults
        self.database.check_each_transaction(self.fence)
        log.info("co-scheduler %s is the active one (epoch %d)", self.holder, self.epoch)
        return self.epoch

    def fence(self, connection: Connection) -> None:
        epoch = connection.execute(text("SELECT epoch FROM coscheduler_leader WHERE id = 1 FOR SHARE")).scalar()
        if epoch != self.epoch:
            raise LeadershipLost(f"another co-scheduler became active (epoch {epoch}; ours was {self.epoch})")

    def step_watch(self) -> None:
        """The loop's step: leave when the watcher found the leadership lost."""
        if self.lost is not None:
            raise LeadershipLost(self.lost)

    def _watch(self) -> None:
        """A thread (a loop step slower than ``STALLED_S`` must not look like a stopped
        process): use the lock connection every ``WATCH_S``, so standbys see it alive; if it
        broke (the lock went with it), take the lock back unless another took over meanwhile."""
        try:
            while not self._stop.wait(WATCH_S) and self.lost is None:
                with self._conn_lock:
                    self._check_lock()
        except Exception as exc:  # without this thread a standby would end us: leave first
            log.exception("the leadership watcher failed")
            self.lost = f"the leadership watcher failed: {exc}"

    def _check_lock(self) -> None:
        if self._conn is not None:
            try:
                self._conn.exec_driver_sql("SELECT 1")
                return
            except SQLAlchemyError as exc:
                log.warning("lost the connection that holds the leadership lock: %s", exc)
                self._drop()
        for _ in range(5):  # the server frees the lock when it has ended the broken connection's backend
            if self.try_acquire():
                break
            time.sleep(0.2)
        else:
            self.lost = "lost the leadership lock, and cannot take it back"
            return
        assert self._conn is not None
        if self.epoch is not None and \
                self._conn.execute(text("SELECT epoch FROM coscheduler_leader WHERE id = 1")).scalar() != self.epoch:
            self.lost = "another co-scheduler was active while the leadership lock was lost"
            return
        log.info("took the leadership lock back (epoch %d unchanged)", self.epoch)

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception:  # already broken: nothing to release
                pass
            self._conn = None

    def close(self) -> None:
        """Release the lock (the connection's end does that) on a clean stop."""
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=10)
        with self._conn_lock:
            self._drop()
        self._engine.dispose()


def _set_session(dbapi_conn, app_name: str) -> None:
    with dbapi_conn.cursor() as cur:
        cur.execute(SERVER_TIMEOUTS)
        cur.execute("SELECT set_config('application_name', %s, false)", (app_name,))
    dbapi_conn.commit()  # a SET inside a transaction the pool rolls back would be undone


def stand_by(config: Config, leadership: Leadership, stopping: Callable[[], bool]) -> bool:
    """Until this co-scheduler holds the lock: bind ``config.bind`` and answer every message
    with ERROR ``standby``. True when it holds the lock, False when asked to stop first."""
    if leadership.try_acquire():
        return True
    ctx = zmq.Context()
    sock = P.configure(ctx.socket(zmq.ROUTER), max_frame_bytes=config.max_request_bytes)
    keys = curve.directory()
    server = curve.CurveServer(ctx, sock, keys) if keys else None  # agents and clients must reach our answer
    sock.bind(config.bind)
    log.info("standing by on %s: another co-scheduler is active; asking for the leadership every %g s",
             config.bind, POLL_S)
    try:
        while not stopping():
            deadline = time.monotonic() + POLL_S
            while (remaining := deadline - time.monotonic()) > 0 and not stopping():
                if sock.poll(int(remaining * 1000) + 1):
                    _answer_standby(sock)
            if not stopping() and leadership.try_acquire():
                return True
        return False
    finally:
        if server is not None:
            server.stop()
        sock.close(linger=0)
        ctx.term()


def _answer_standby(sock: zmq.Socket) -> None:
    for _ in range(1000):
        try:
            parts = sock.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return
        if len(parts) != 2:
            continue
        try:
            rid = P.decode(parts[1]).get("rid")
        except P.ProtocolError:
            rid = None
        reply = P.encode(P.ERROR, rid=rid if isinstance(rid, str) else None, code=P.E_STANDBY,
                         message="this co-scheduler is a standby; the active one is at another address")
        try:
            sock.send_multipart([parts[0], reply], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
