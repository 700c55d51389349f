"""faas-agent: one per node. Turns lend records into slots and runs invocations on them.

Steps of the loop (each small, none blocking for long):

  receive    RUN / CANCEL / WELCOME / ERROR from the co-scheduler
  spool      read <spool>/<node>/*.json: a new "lent" record becomes a slot (LEND), a
             "revoked" one takes the slot back at once (REVOKE; its invocations get
             SIGTERM, then SIGKILL after the grace)
  reap       collect finished executors and report their results; kill the ones past
             their timeout
  heartbeat  every second, with the ids of the invocations running here

The agent keeps nothing that the spool and the running processes cannot tell it again:
after a restart it re-reads the spool and says HELLO; the co-scheduler requeues work
the agent no longer runs.
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import click
import zmq

from .logsetup import setup_logging

from . import protocol as P

log = logging.getLogger("faas.agent")

SPOOL_SCAN_S = 0.05


@dataclass
class Slot:
    slot_id: str
    job_id: int
    record: dict
    revoked: bool = False


@dataclass
class Running:
    invocation_id: int
    attempt: int
    slot_id: str
    proc: subprocess.Popen
    workdir: Path
    deadline: float  # monotonic
    kill_at: Optional[float] = None  # monotonic; set once SIGTERM was sent
    reason: Optional[str] = None  # why it is being stopped (None: it runs normally)


@dataclass
class Agent:
    node: str
    spool: Path
    endpoint: str
    workdir: Path
    grace_s: float = 2.0
    python: str = sys.executable
    slots: dict[str, Slot] = field(default_factory=dict)
    running: dict[int, Running] = field(default_factory=dict)
    stop_requested: bool = False
    welcomed: bool = False
    _seen: dict[str, int] = field(default_factory=dict)  # record path -> mtime_ns

    def __post_init__(self) -> None:
        self.node_spool = self.spool / self.node
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ctx = zmq.Context()
        self.sock = P.configure(self.ctx.socket(zmq.DEALER))
        self.sock.setsockopt(zmq.IDENTITY, f"agent:{self.node}".encode())
        self.sock.connect(self.endpoint)

    def send(self, msg_type: str, **fields) -> None:
        try:
            self.sock.send(P.encode(msg_type, node=self.node, **fields), flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("co-scheduler queue full; dropped %s (the heartbeat repairs it)", msg_type)

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        log.info("agent %s: spool %s, co-scheduler %s", self.node, self.node_spool, self.endpoint)
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        next_beat = next_scan = 0.0
        while not self.stop_requested:
            ready = dict(poller.poll(timeout=int(SPOOL_SCAN_S * 1000)))
            if ready:
                self._guarded(self.step_receive)
            now = time.monotonic()
            if now >= next_scan:
                self._guarded(self.step_spool)
                next_scan = now + SPOOL_SCAN_S
            self._guarded(self.step_reap)
            if now >= next_beat:
                self._guarded(self.step_heartbeat)
                next_beat = now + P.HEARTBEAT_INTERVAL_S
        self.shutdown()

    def _guarded(self, step) -> None:
        try:
            step()
        except Exception:
            log.exception("step %s failed", step.__name__)

    def shutdown(self) -> None:
        """Stop every executor (the co-scheduler requeues them) and close the socket."""
        for run in list(self.running.values()):
            self._stop(run, "agent shutting down")
        deadline = time.monotonic() + self.grace_s
        while self.running and time.monotonic() < deadline + 1:
            self.step_reap()
            time.sleep(0.05)
        self.sock.close()
        self.ctx.term()

    # -- receive ------------------------------------------------------------------------

    def step_receive(self) -> None:
        while True:
            try:
                frame = self.sock.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = P.decode(frame)
            except P.ProtocolError as exc:
                log.warning("ignored a bad message from the co-scheduler: %s", exc)
                continue
            kind = msg["type"]
            if kind == P.WELCOME:
                self.welcomed = True
                for slot in self.slots.values():  # lends are idempotent: announce them all again
                    if not slot.revoked:
                        self.send(P.LEND, record=slot.record)
            elif kind == P.ERROR and msg.get("code") == P.E_UNKNOWN_AGENT:
                self.welcomed = False
                self._hello()
            elif kind == P.ERROR:
                log.warning("co-scheduler error: %s: %s", msg.get("code"), msg.get("message"))
            elif kind == P.RUN:
                self._start(msg)
            elif kind == P.REVOKE:
                self._revoked_by_coscheduler(int(msg["job_id"]), msg.get("reason", "revoked by the co-scheduler"))
            elif kind == P.CANCEL:
                run = self.running.get(int(msg["invocation_id"]))
                if run is not None:
                    self._stop(run, "cancelled")

    def _hello(self) -> None:
        self.send(P.HELLO, running=sorted(self.running))

    # -- spool --------------------------------------------------------------------------

    def step_spool(self) -> None:
        try:
            entries = list(os.scandir(self.node_spool))
        except FileNotFoundError:
            return  # no job has lent anything on this node yet
        for entry in entries:
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            try:
                mtime = entry.stat().st_mtime_ns
                if self._seen.get(entry.path) == mtime:
                    continue
                with open(entry.path) as fh:
                    record = json.load(fh)
            except (OSError, ValueError) as exc:
                log.warning("unreadable lend record %s: %s", entry.path, exc)
                continue
            self._seen[entry.path] = mtime
            self._apply_record(record)

    def _apply_record(self, record: dict) -> None:
        if record.get("version") != 1:
            log.warning("lend record of unknown version %r ignored", record.get("version"))
            return
        job_id = int(record["job_id"])
        slot_id = f"{job_id}@{self.node}"
        slot = self.slots.get(slot_id)
        if record.get("state") == "lent":
            if slot is None and record.get("slurm_cpus"):
                self.slots[slot_id] = Slot(slot_id, job_id, record)
                log.info("job %d lends CPUs %s (OS %s), %s MiB", job_id, record["slurm_cpus"],
                         record["os_cpus"], record["mem_mb"])
                if self.welcomed:
                    self.send(P.LEND, record=record)
        elif record.get("state") == "revoked":
            if slot is None:
                slot = self.slots[slot_id] = Slot(slot_id, job_id, record)
            if not slot.revoked:
                slot.revoked = True
                self.revoke(slot, "the batch job ended")

    def _revoked_by_coscheduler(self, job_id: int, reason: str) -> None:
        slot = self.slots.get(f"{job_id}@{self.node}")
        if slot is None or slot.revoked:
            return
        slot.revoked = True
        for run in list(self.running.values()):
            if run.slot_id == slot.slot_id:
                self._stop(run, f"slot {slot.slot_id} revoked: {reason}")
        log.info("slot %s revoked by the co-scheduler: %s", slot.slot_id, reason)

    def revoke(self, slot: Slot, reason: str) -> None:
        """Give a slot back now: tell the co-scheduler first, then stop what runs on it."""
        self.send(P.REVOKE, job_id=slot.job_id, reason=reason)
        for run in list(self.running.values()):
            if run.slot_id == slot.slot_id:
                self._stop(run, f"slot {slot.slot_id} revoked: {reason}")
        log.info("slot %s revoked: %s", slot.slot_id, reason)

    # -- running invocations ------------------------------------------------------------

    def _start(self, msg: dict) -> None:
        inv_id, attempt = int(msg["invocation_id"]), int(msg["attempt"])
        slot = self.slots.get(msg["slot_id"])
        if slot is None or slot.revoked:
            self.send(P.EVICTED, invocation_id=inv_id, attempt=attempt, reason=f"slot {msg['slot_id']} is not lent here")
            return
        lent = set(slot.record["os_cpus"])
        if not set(msg["os_cpus"]) <= lent:
            self.send(P.RESULT, invocation_id=inv_id, attempt=attempt, outcome="error",
                      error=f"CPUs {msg['os_cpus']} are not lent by job {slot.job_id}")
            return
        workdir = self.workdir / f"{inv_id}.{attempt}"
        try:
            proc = self._spawn(msg, workdir)
        except (OSError, KeyError, ValueError) as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            self.send(P.RESULT, invocation_id=inv_id, attempt=attempt, outcome="error",
                      error=f"could not start the function: {exc}")
            return
        self.running[inv_id] = Running(inv_id, attempt, slot.slot_id, proc, workdir,
                                       time.monotonic() + float(msg["timeout_s"]))
        self.send(P.STARTED, invocation_id=inv_id, attempt=attempt)

    def _spawn(self, msg: dict, workdir: Path) -> subprocess.Popen:
        uid, gid = int(msg["uid"]), int(msg["gid"])
        as_other_user = uid != os.geteuid()
        if as_other_user and os.geteuid() != 0:
            raise ValueError(f"this agent runs as uid {os.geteuid()} and cannot run functions of uid {uid}")
        account = pwd.getpwuid(uid)
        workdir.mkdir(parents=True)
        (workdir / "input.json").write_text(msg["payload_json"])
        if as_other_user:
            os.chown(workdir, uid, gid)
        workdir.chmod(0o700)  # results are the owner's alone
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": account.pw_dir, "USER": account.pw_name,
            "LOGNAME": account.pw_name, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "FAAS_INVOCATION_ID": str(msg["invocation_id"]), "SLURM_FAAS_JOB_ID": str(msg["job_id"]),
        }
        argv = [
            self.python, "-m", "faas_runtime.executor", "--cpus", ",".join(map(str, msg["os_cpus"])),
            "--entrypoint", msg["entrypoint"], "--code", msg["code_dir"],
            "--input", str(workdir / "input.json"), "--output", str(workdir / "result.json"),
        ]
        with open(workdir / "output.log", "wb") as out:
            return subprocess.Popen(
                argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
                **({"user": uid, "group": gid, "extra_groups": os.getgrouplist(account.pw_name, gid)}
                   if as_other_user else {}),
            )

    def _stop(self, run: Running, reason: str) -> None:
        if run.kill_at is not None:
            return
        run.reason = reason
        run.kill_at = time.monotonic() + self.grace_s
        _signal_group(run.proc, signal.SIGTERM)

    def step_reap(self) -> None:
        now = time.monotonic()
        for inv_id, run in list(self.running.items()):
            code = run.proc.poll()
            if code is None:
                if run.kill_at is None and now > run.deadline:
                    _signal_group(run.proc, signal.SIGKILL)
                    run.reason = "timeout"
                    run.kill_at = now
                elif run.kill_at is not None and now >= run.kill_at:
                    _signal_group(run.proc, signal.SIGKILL)
                continue
            _signal_group(run.proc, signal.SIGKILL)  # children the function left behind
            del self.running[inv_id]
            self._report(run, code)
            shutil.rmtree(run.workdir, ignore_errors=True)

    def _report(self, run: Running, exit_code: int) -> None:
        ids = {"invocation_id": run.invocation_id, "attempt": run.attempt}
        if run.reason == "timeout":
            self.send(P.RESULT, **ids, outcome="timeout", error="timed out (killed at the function's timeout)")
            return
        if run.reason is not None:
            self.send(P.EVICTED, **ids, reason=run.reason)
            return
        try:
            result = json.loads((run.workdir / "result.json").read_text())
        except (OSError, ValueError):
            tail = _tail(run.workdir / "output.log")
            self.send(P.RESULT, **ids, outcome="error",
                      error=f"executor exited {exit_code} without a result" + (f": {tail}" if tail else ""))
            return
        self.send(P.RESULT, **ids, outcome=result.get("outcome", "error"), value_json=result.get("value_json"),
                  error=result.get("error"), cpus=result.get("cpus"))

    def step_heartbeat(self) -> None:
        if not self.welcomed:
            self._hello()
            return
        self.send(P.HEARTBEAT, running=sorted(self.running))


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, limit: int = 500) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


@click.command()
@click.option("--node", envvar="FAAS_NODE", required=True, help="this node's Slurm name")
@click.option("--spool", envvar="FAAS_SPOOL", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/var/spool/slurm-faas"), show_default=True, help="the plugin's spool directory")
@click.option("--coscheduler", "endpoint", envvar="FAAS_COSCHEDULER", required=True, help="e.g. tcp://head:7800")
@click.option("--workdir", envvar="FAAS_AGENT_WORKDIR", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/var/lib/slurm-faas/agent"), show_default=True)
@click.option("--grace", type=float, default=2.0, show_default=True, help="seconds between SIGTERM and SIGKILL on revoke")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None)
@click.option("--log-level", default="INFO", show_default=True)
def main(node: str, spool: Path, endpoint: str, workdir: Path, grace: float, log_file: Optional[str],
         log_level: str) -> None:
    """Run the slurm-faas node agent in the foreground."""
    setup_logging(log_level, log_file)
    agent = Agent(node=node, spool=spool, endpoint=endpoint, workdir=workdir / node, grace_s=grace)

    def request_stop(signum, _frame):
        agent.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    agent.run()


if __name__ == "__main__":
    main()
