"""faas-coscheduler: the loop that backfills lent capacity with queued invocations.

One ROUTER socket serves agents (one per node) and clients. The loop is a sequence of
small named steps; the work of each belongs to a room (coscheduler/hub.py names them and
what they share):

  receive    frames off the socket: each must be [connection, one msgpack frame] of at
             most ``max_request_bytes``; agents' messages go to the agents' room
             (agents.py) in one transaction, a HELLO and every client request first to a
             credential check in a worker thread (identity.py)
  verified   requests and HELLOs whose credential check finished, in arrival order
             (requests.py, agents.py), and WELCOMEs whose credential was made
  bulk       one chunk of each bulk cancel under way (requests.py)
  schedule   claim, place and dispatch queued invocations (dispatch.py)
  liveness   agents silent past their grace lose their work to the queue (agents.py)
  reconcile  lends of jobs Slurm says ended are revoked (reconcile.py)
  retention  finished invocations past their age deleted, a chunk a turn (retention.py)
  push       ENDED to the clients subscribed to invocations that ended (subscriptions.py)

Each step owns its database session (one transaction) and queues what it sends in the
hub's outbox, which the loop flushes only after the step committed: nothing goes out for
work the database does not hold. A failing step is logged and retried next turn.

Signal handlers only set a flag. On SIGTERM/SIGINT the loop finishes its step, handles
the messages that already arrived (results are bookkept, nothing new is dispatched), sends
what those transactions produced, and exits. Every fact the loop needs survives a
``kill -9`` in the database: agents re-announce their lends and what they hold when they
meet a new co-scheduler (their next message gets ``unknown-agent``; their HELLO lists it),
and resend the results it never acknowledged.
"""
from __future__ import annotations

import itertools
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import click
import zmq

from faas_runtime import auth, curve, munge
from faas_runtime import protocol as P
from faas_runtime.logsetup import setup_logging

from . import db as D
from .agents import AgentRoom
from .config import Config, ConfigError, load as load_config
from .dispatch import Dispatcher
from .hub import Hub, RequestFailed
from .identity import CredentialChecks, OffLoop
from .leases import install as install_leases
from .reconcile import Reconciler
from .requests import ClientRoom
from .retention import Retention
from .subscriptions import install as install_subscriptions
from .slurm import SlurmAccess, make_backend

log = logging.getLogger("faas.coscheduler")

RECEIVE_BATCH = 2000  # frames per receive step, so scheduling is never starved
RECEIVE_BUDGET_S = 0.02  # ... and at most this long, or as long as the rest of the last turn
# took (at most RECEIVE_MAX_S): with thousands of agents, a fixed budget read less than
# they sent, and their messages (a revoke among them) waited in ZeroMQ's queues for seconds.
RECEIVE_MAX_S = 0.25


class Coscheduler:
    def __init__(self, config: Config, database: D.Database, slurm: SlurmAccess,
                 verify: Optional[Callable[[str, str], int]] = None,
                 issue: Optional[Callable[[bytes], str]] = None):
        """``verify(cred, digest) -> uid`` proves who sent a request or a HELLO (munge;
        replaceable in tests), ``issue(payload) -> credential`` proves the co-scheduler to
        an agent in its WELCOME (munge)."""
        self.config = config
        self.database = database
        self.stop_requested = False
        self.receive_backlog = False  # the last receive step left frames on the socket
        self._rest_of_turn_s = 0.0  # how long the steps after it took, last turn
        self.hub = Hub(config, database)
        verify = verify or (lambda cred, digest: auth.verify_credential(cred, digest, config.munge_socket).uid)
        issue = issue or (lambda payload: munge.encode(payload, config.munge_socket))
        self.checks = CredentialChecks(verify)
        self.welcomes = OffLoop(threads=2, name="welcome")  # WELCOME credentials (agents.py)
        self.agent_room = AgentRoom(self.hub, issue, self.welcomes.call)
        self.clients = ClientRoom(self.hub, self.checks)
        self.dispatcher = Dispatcher(self.hub)
        self.reconciler = Reconciler(self.hub, slurm, self.agent_room.revoke_slot)
        self.retention = Retention(self.hub)
        self.leases = install_leases(self.hub, self.clients, self.agent_room, self.dispatcher)
        self.subscriptions = install_subscriptions(self.hub, self.clients)
        self.leadership = None  # high availability: set by main (leader.py); its step watches the lock
        self.exporter = None
        if config.metrics_bind:
            from .prometheus import Exporter  # prometheus_client only where metrics are served

            self.exporter = Exporter(self.hub, config.metrics_bind)
        self.ctx = zmq.Context()
        self.sock = P.configure(self.ctx.socket(zmq.ROUTER), max_frame_bytes=config.max_request_bytes)
        # No ROUTER_HANDOVER: a connection cannot take over another's name; ZeroMQ names
        # each connection itself, and an agent's session is bound to that name.
        self.curve = curve.CurveServer(self.ctx, self.sock, curve.directory()) if curve.directory() else None
        self.sock.bind(self.config.bind)

    @property
    def agents(self):
        """Node -> session of the agents that hold one."""
        return self.hub.sessions

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        log.info("co-scheduler listening on %s, database %s (revision %s)", self.config.bind,
                 _safe_url(self.database.url), self.database.revision())
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.checks.wake_fd, zmq.POLLIN)
        poller.register(self.welcomes.wake_fd, zmq.POLLIN)
        while not self.stop_requested:
            if self.dispatcher.pipelined and not self.receive_backlog:
                # Agents hold work dispatched ahead: no core idles while the loop waits, so
                # let reports and requests gather and take them in one transaction each.
                time.sleep(max(0.0, self.dispatcher.next_pass_at - time.monotonic()))
            idle = not (self.dispatcher.pipelined or self.clients.bulk or self.hub.dirty)  # dirty: more to place
            ready = dict(poller.poll(timeout=int(self.config.tick_s * 1000) if idle else 0))
            if self.sock in ready:
                self._guarded(self.step_receive)
            turn = time.monotonic()
            for step in (self.step_verified, self.clients.step_bulk, self.dispatcher.step_schedule,
                         self.agent_room.step_liveness, self.reconciler.step_reconcile,
                         self.retention.step_retention, self.subscriptions.step_push, *self._extra_steps()):
                if self.stop_requested:
                    break
                self._guarded(step)
            self._rest_of_turn_s = time.monotonic() - turn
        self.shutdown()

    def _extra_steps(self) -> tuple:
        steps = (self.exporter.step_observe,) if self.exporter is not None else ()
        return steps + ((self.leadership.step_watch,) if self.leadership is not None else ())

    def shutdown(self) -> None:
        """Finish the bookkeeping of what already arrived, send its replies, close."""
        log.info("co-scheduler stopping: handling the messages already received")
        self._guarded(self.step_receive)
        if self.exporter is not None:
            self.exporter.close()
        self.reconciler.close()
        self.checks.close()
        self.welcomes.close()
        self.sock.close()
        if self.curve is not None:
            self.curve.stop()
        self.ctx.term()
        log.info("co-scheduler stopped")

    def _guarded(self, step: Callable[[], None]) -> None:
        """A failing step is logged and retried next turn; it never kills the daemon."""
        try:
            self.hub.metrics.timed(getattr(step, "__name__", "step"), step)
        except Exception:
            self.hub.outbox.clear()  # its transaction rolled back: send nothing it prepared
            log.exception("step %s failed", getattr(step, "__name__", step))
        self._flush()

    def _flush(self) -> None:
        for identity, frames in self.hub.outbox:
            try:
                self.sock.send_multipart([identity, *frames], flags=zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.warning("could not send to %r: %s", identity, exc)
        self.hub.outbox.clear()

    # -- receive ------------------------------------------------------------------------

    def step_receive(self) -> None:
        agent_msgs: list[tuple[bytes, dict]] = []
        deadline = time.monotonic() + max(RECEIVE_BUDGET_S, min(self._rest_of_turn_s, RECEIVE_MAX_S))
        client_kinds = self.clients.kinds()
        self.receive_backlog = True  # until the socket is found empty
        for _ in range(RECEIVE_BATCH):
            try:
                parts = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=self.curve is None)
            except zmq.Again:
                self.receive_backlog = False
                break
            if len(parts) != 2:
                continue  # [connection, frame] is the only shape we send and take: anything else is dropped
            identity, frame = parts
            if self.curve is not None:  # frames, with the peer's CurveZMQ name as metadata
                meta, identity, frame = frame, identity.bytes, frame.bytes
            rid = None
            try:
                msg = P.decode(frame)
                rid = msg.get("rid")
                kind = msg["type"]
                if kind in P.AGENT_TYPES:
                    if self.curve is not None and self.curve.check_agent(meta, msg.get("node")):
                        raise P.ProtocolError(P.E_AUTH, self.curve.check_agent(meta, msg.get("node")))
                    if kind == P.HELLO:
                        self._check_hello(identity, msg)
                    elif kind == P.REPORTS:
                        agent_msgs.extend((identity, report) for report in _unbatch(msg))
                    elif kind == P.HEARTBEAT:  # memory only: no transaction (thousands a second at scale)
                        self.agent_room.heartbeat(identity, msg)
                    else:
                        agent_msgs.append((identity, msg))
                elif kind in client_kinds:
                    self.clients.receive(identity, kind, msg)
                else:
                    raise P.ProtocolError(P.E_UNKNOWN_TYPE, f"unknown message type {str(kind)[:64]!r}")
            except P.ProtocolError as exc:
                log.info("refused a message: %s: %s", exc.code, exc)
                self.hub.send(identity, P.ERROR, rid=rid, code=exc.code, message=str(exc))
            if time.monotonic() > deadline:
                break
        if agent_msgs:
            self.agent_room.batch(agent_msgs)

    def _check_hello(self, identity: bytes, msg: dict) -> None:
        cred = msg.get("cred")
        if not isinstance(cred, str) or len(cred) > 4096:
            raise P.ProtocolError(P.E_AUTH, "a HELLO carries a munge credential")
        if not self.checks.submit((identity, P.HELLO, msg), cred, P.body_digest(msg)):
            raise P.ProtocolError(P.E_BUSY, "the co-scheduler is checking too many credentials; try again")

    def step_verified(self) -> None:
        """Requests and HELLOs whose credential was checked, in the order they came; then
        the WELCOMEs whose credential was made (agents.py: the sessions begin)."""
        for (identity, kind, msg), outcome in itertools.chain(self.checks.finished(), self.welcomes.finished()):
            if kind not in (P.HELLO, P.WELCOME):
                self.clients.answer_checked(identity, kind, msg, outcome)
                continue
            try:
                if kind == P.WELCOME:
                    self.agent_room.welcome(identity, msg, outcome)
                elif isinstance(outcome, BaseException):
                    raise RequestFailed(P.E_AUTH, f"HELLO refused: {outcome}")
                else:
                    self.agent_room.hello(identity, msg, int(outcome))
            except (P.ProtocolError, RequestFailed) as exc:
                log.warning("refused a HELLO for node %r: %s", str(msg.get("node"))[:64], exc)
                self.hub.send(identity, P.ERROR, code=exc.code, message=str(exc))
            except Exception as exc:
                log.exception("internal error handling a HELLO")
                self.hub.send(identity, P.ERROR, code=P.E_INTERNAL, message=f"internal error: {exc}")
            self._flush()  # each HELLO is its own transaction, already committed


def _unbatch(msg: dict) -> list[dict]:
    """The reports a REPORTS message carries, each a message of its own from the same node."""
    reports = msg.get("reports")
    if not isinstance(reports, list) or len(reports) > P.MAX_BATCH_ENTRIES:
        raise P.ProtocolError(P.E_MALFORMED, f"reports must be a list of at most {P.MAX_BATCH_ENTRIES}")
    out = []
    for r in reports:
        if not isinstance(r, dict) or r.get("type") not in P.REPORT_TYPES:
            raise P.ProtocolError(P.E_MALFORMED, "each report is a map with type started, result or evicted")
        out.append({**r, "v": P.VERSION, **({"node": msg["node"]} if "node" in msg else {})})
    return out


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, cred = head.partition("://")
    return f"{scheme}://{cred.split(':')[0]}:***@{tail}"


def _daemonize(pid_file: Optional[Path]) -> None:
    """Detach from the terminal: fork twice, new session, standard streams to /dev/null."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), envvar="FAAS_CONFIG",
              default=None, help="TOML configuration file (default /etc/slurm-faas/coscheduler.toml if present)")
@click.option("--db", "db_url", default=None, help="SQLAlchemy URL, e.g. sqlite:////var/lib/slurm-faas/faas.db "
              "[env: FAAS_DB_URL]")
@click.option("--bind", default=None, help="ZeroMQ address to bind [default tcp://127.0.0.1:7800; env: "
              "FAAS_COSCHEDULER_BIND]")
@click.option("--munge-socket", default=None, help="munged socket (default: munge's own) [env: FAAS_MUNGE_SOCKET]")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None, help="also log to this file")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default=None, help="[default INFO]")
@click.option("--reconcile-interval", "reconcile_s", type=float, default=None, help="seconds between squeue checks")
@click.option("--slurm-backend", type=click.Choice(["auto", "cli", "pyslurm"]), default=None,
              help="how to ask Slurm [default auto]")
@click.option("--foreground/--background", default=False, show_default=True,
              help="stay attached to the terminal (logging to stderr too), or detach")
@click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="with --background: write the daemon's pid here")
@click.option("--ha", is_flag=True, default=None,
              help="high availability: one of several co-schedulers on one PostgreSQL database, active while it "
                   "holds the leadership, else standing by [config ha; env FAAS_HA]")
def main(config_path: Optional[Path], db_url: Optional[str], bind: Optional[str], munge_socket: Optional[str],
         log_file: Optional[str], log_level: Optional[str], reconcile_s: Optional[float],
         slurm_backend: Optional[str], foreground: bool, pid_file: Optional[Path], ha: Optional[bool]) -> None:
    """Run the slurm-faas co-scheduler."""
    try:
        config = load_config(config_path, overrides={
            "db_url": db_url, "bind": bind, "munge_socket": munge_socket, "log_file": log_file,
            "log_level": log_level, "reconcile_s": reconcile_s, "slurm_backend": slurm_backend, "ha": ha})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not foreground and not config.log_file:
        raise click.ClickException("in the background the co-scheduler needs a log file (--log-file or "
                                   "log_file in the configuration), or run it with --foreground")
    # The queue holds every user's payloads and results: nothing this process creates (the
    # database and its WAL, logs, pid file) is readable by anyone else.
    os.umask(0o077)
    if not foreground:
        _daemonize(pid_file)
    setup_logging(config.log_level, config.log_file)
    database = D.Database(config.db_url)
    running: dict[str, Coscheduler] = {}
    stopping: list[int] = []

    def request_stop(signum, _frame):
        stopping.append(signum)
        if "daemon" in running:
            running["daemon"].stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    leadership = None
    try:
        if config.ha:  # only the active one migrates the schema and serves (leader.py)
            from .leader import Leadership, stand_by

            leadership = Leadership(database)
            if not stand_by(config, leadership, lambda: bool(stopping)):
                leadership.close()
                database.dispose()
                return
        database.create_schema()
        D.make_private(config.db_url)
        if leadership is not None:
            leadership.take_over()
        daemon = running["daemon"] = Coscheduler(config, database, make_backend(config.slurm_backend))
        daemon.leadership = leadership
        daemon.stop_requested = bool(stopping)
    except Exception as exc:
        log.error("cannot start: %s", exc)
        database.dispose()
        sys.exit(1)
    _run(daemon, database)


def _run(daemon: Coscheduler, database: D.Database) -> None:
    from .leader import EXIT_LOST, LeadershipLost

    try:
        daemon.run()
    except LeadershipLost as exc:
        # Nothing this process prepared may go out; its threads must not hold the exit up.
        log.error("%s: exiting, so that the supervisor restarts this co-scheduler as a standby", exc)
        logging.shutdown()
        os._exit(EXIT_LOST)
    if daemon.leadership is not None:
        daemon.leadership.close()
    database.dispose()


if __name__ == "__main__":
    main()
