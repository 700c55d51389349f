"""The co-scheduler's loop in process, for tests: agents played by ZeroMQ sockets in the
test (FakeAgent), Slurm by a stub, and a harness that runs the real Coscheduler on SQLite or
PostgreSQL. Identity is stubbed: a credential's text is the uid it proves (munge itself is
exercised by the integration and adversarial tests)."""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Optional

import pytest
import zmq

from coscheduler import db as D
from coscheduler.config import Config
from coscheduler.daemon import Coscheduler
from coscheduler.slurm import JobInfo
from coscheduler.tools.devcluster_procs import poll_until
from faas_runtime import protocol as P
from faas_runtime import queue_client as client_mod

UID = 4242


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StubSlurm:
    def __init__(self):
        self.alive: dict[int, JobInfo] = {}

    def jobs(self):
        return dict(self.alive)

    def job(self, job_id):
        return self.alive.get(job_id)

    def nodes(self):
        return {}


class FakeAgent:
    """An agent that lends one slot and (if ``answer``) runs every RUN at once."""

    def __init__(self, endpoint: str, node: str, job_id: int, cores: int = 4, answer: bool = True,
                 run_s: Optional[float] = None, lend: Optional[dict] = None):
        self.node, self.job_id, self.answer, self.run_s = node, job_id, answer, run_s
        self.hold = False  # record RUN messages and answer nothing (work waiting at the agent)
        self.drop = 0  # RUN messages to record and forget: never reported, not in heartbeats
        self.ctx = zmq.Context()
        self.sock = P.configure(self.ctx.socket(zmq.DEALER))
        self.sock.connect(endpoint)
        self.record = {"version": 1, "state": "lent", "job_id": job_id, "node": node, "uid": 0, "gid": 0,
                       "slurm_cpus": list(range(cores)), "os_cpus": [0] * cores, "mem_mb": 8000,
                       "end_time": 0, "until_min": 0, **(lend or {})}
        self.runs: list[dict] = []
        self.cancels: list[dict] = []
        self.revokes: list[dict] = []
        self.beating = True
        self.finish: list[int] = []  # held invocations the test wants reported done (value: the node)
        self.stop = False
        self.running: dict[int, int] = {}  # invocation id -> attempt
        self.seen = 0.0  # sent_at of the newest RUN read, as a real agent reports it
        self._reports: list[dict] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def send(self, kind, **fields):
        self.sock.send(P.encode(kind, node=self.node, **fields))

    def _on_run(self, msg):
        self.runs.append(msg)
        self.seen = max(self.seen, msg.get("sent_at", 0.0))
        ids = {"invocation_id": msg["invocation_id"], "attempt": msg["attempt"]}
        if self.drop > 0:
            self.drop -= 1
        elif self.hold:
            self.running[msg["invocation_id"]] = msg["attempt"]
        elif self.answer:
            self.report(P.STARTED, **ids)
            self.report(P.RESULT, **ids, outcome="ok", value_json=msg["payload_json"], cpus=msg["os_cpus"],
                        **({} if self.run_s is None else {"run_s": self.run_s}))
        else:
            self.running[msg["invocation_id"]] = msg["attempt"]
            self.send(P.STARTED, **ids)

    def report(self, kind, **fields):
        """A report on an invocation, sent with the rest of this turn's in one REPORTS."""
        self._reports.append({"type": kind, **fields})

    def hello(self):
        # The harness's verify() takes the credential's text as the uid it proves: root.
        held = [{"invocation_id": i, "attempt": a, "slot_id": f"{self.job_id}@{self.node}", "cpus": [0],
                 "running": True} for i, a in sorted(self.running.items())]
        self.send(P.HELLO, held=held, nonce="n", cred="0")

    def _loop(self):
        self.hello()
        next_beat = time.monotonic() + 0.2
        while not self.stop:
            if self.sock.poll(20):
                msg = P.decode(self.sock.recv_multipart()[0])
                kind = msg["type"]
                if kind == P.WELCOME:
                    self.send(P.LEND, record=self.record)
                elif kind == P.ERROR and msg.get("code") == P.E_UNKNOWN_AGENT:
                    self.hello()
                elif kind in (P.RUN, P.RUNS):  # one, or a pass's worth for this node
                    for run in (msg["runs"] if kind == P.RUNS else [msg]):
                        self._on_run(run)
                elif kind == P.CANCEL:
                    self.cancels.append(msg)
                    self.running.pop(msg["invocation_id"], None)
                elif kind == P.REVOKE:
                    self.revokes.append(msg)
            if self._reports:  # this turn's reports in one message, as a real agent sends them
                self.send(P.REPORTS, reports=self._reports)
                self._reports = []
            while self.finish:
                inv = self.finish.pop()
                self.send(P.RESULT, invocation_id=inv, attempt=self.running.pop(inv), outcome="ok",
                          value_json=json.dumps(self.node))
            if self.beating and time.monotonic() >= next_beat:
                self.send(P.HEARTBEAT, running=sorted([i, a] for i, a in self.running.items()), seen=self.seen)
                next_beat = time.monotonic() + 0.2

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.sock.close()
        self.ctx.term()


def passes_after(h: "Harness", n: int, timeout_s: float = 30.0) -> None:
    """Wait until the loop has begun ``n`` more scheduling passes: the last whole pass began
    after this call, so whatever it would place is in the database (a positive event: a
    slow loop makes this wait longer, never pass too early)."""
    for _ in range(n):
        seen = h.daemon.dispatcher.last_schedule
        h.daemon.hub.mark_dirty()
        wait_for(lambda: h.daemon.dispatcher.last_schedule > seen, timeout_s)


def _count(c, state: str) -> int:
    return sum(1 for r in c.list(limit=1000) if r["state"] == state)


class Harness:
    def __init__(self, database, config: Config):
        self.endpoint = config.bind
        self.slurm = StubSlurm()
        self.daemon = Coscheduler(config, database, self.slurm, verify=lambda cred, digest: int(cred),
                                  issue=lambda payload: "welcome")
        self.database = database
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.thread.start()
        self.agents: list[FakeAgent] = []

    def agent(self, node="n1", job_id=1, **kw) -> FakeAgent:
        self.slurm.alive[job_id] = JobInfo(job_id, "RUNNING", None, node, 0)
        a = FakeAgent(self.endpoint, node, job_id, **kw)
        self.agents.append(a)
        wait_for(lambda: node in self.daemon.agents and self.slot_state(f"{job_id}@{node}") == "ACTIVE")
        return a

    def slot_state(self, slot_id) -> Optional[str]:
        with self.database.session() as s:
            slot = s.get(D.Slot, slot_id)
            return slot.state if slot else None

    def close(self):
        for a in self.agents:
            a.close()
        self.daemon.stop_requested = True
        self.thread.join(10)


def wait_for(check, timeout_s=30.0):
    if not poll_until(check, timeout_s, 0.02):
        raise AssertionError("timed out")


@pytest.fixture
def harness_factory(database, monkeypatch):
    monkeypatch.setattr(client_mod, "make_credential", lambda digest, socket=None: str(UID))
    made: list[Harness] = []

    def make(**cfg) -> Harness:
        # Identities here are stubs (uid 4242 has no account): the check of the code as its
        # user is exercised with real users in tests/adversarial.
        config = Config(db_url=database.url, bind=f"tcp://127.0.0.1:{_port()}", tick_s=0.01, reconcile_s=0.2,
                        check_code=False, **cfg)
        h = Harness(database, config)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


@pytest.fixture
def client(harness_factory):
    h = harness_factory()
    with client_mod.Client(h.endpoint, timeout_s=20) as c:
        c.harness = h
        c.register(name="echo", entrypoint="m:f", code_dir="/tmp", cores=1, mem_mb=100, timeout_s=10,
                   max_attempts=2)
        yield c
