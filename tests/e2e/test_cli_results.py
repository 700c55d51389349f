"""submit-function as a user types it, against the co-scheduler's real loop in-process
(agents played by ZeroMQ sockets: tests/unit/daemon_harness.py): failures with their
traceback and output, results in bulk, payloads from files and stdin, error documents,
pending reasons, register-time bounds, versions in RUN, retention."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from coscheduler import retention
from coscheduler.cli.submit import main
from coscheduler.slurm import JobInfo
from faas_runtime import protocol as P
from faas_runtime import queue_client as client_mod
from tests.unit import daemon_harness
from tests.unit.daemon_harness import FakeAgent, wait_for

harness_factory = daemon_harness.harness_factory  # the in-process co-scheduler (a fixture)

TRACEBACK = ('Traceback (most recent call last):\n  File "/code/m.py", line 3, in f\n    return d["k"]\n'
             "KeyError: 'k'\n")


class FailingAgent(FakeAgent):
    """Runs every RUN at once, as FakeAgent; a payload {"fail": ...} fails the way an
    executor reports a raising function (error, traceback, the output it printed)."""

    def report(self, kind, **fields):
        if kind == P.RESULT and fields.get("outcome") == "ok":
            value = json.loads(fields["value_json"])
            fields["output"] = f"printed by {value}\n"
            if isinstance(value, dict) and "fail" in value:
                fields.update(outcome="error", error="KeyError: 'k'", traceback=TRACEBACK, value_json=None)
        super().report(kind, **fields)


@pytest.fixture
def cli(harness_factory):
    """(run(argv, input=None) -> click Result, client, harness), uid 4242's view."""
    h = harness_factory()
    with client_mod.Client(h.endpoint, timeout_s=20) as c:
        c.register(name="echo", entrypoint="m:f", code_dir="/tmp", cores=1, mem_mb=100, timeout_s=10,
                   max_attempts=1)

        def run(*argv, input=None):
            return CliRunner().invoke(main, ["--coscheduler", h.endpoint, *argv], input=input)

        yield run, c, h


def _agent(h, cls=FailingAgent, node="n1", job_id=1, **kw):
    """An agent of class ``cls`` lending one slot of job ``job_id`` (Slurm says it runs)."""
    h.slurm.alive[job_id] = JobInfo(job_id, "RUNNING", None, node, 0)
    a = cls(h.endpoint, node, job_id, **kw)
    h.agents.append(a)
    wait_for(lambda: a.node in h.daemon.agents and h.slot_state(f"{a.job_id}@{a.node}") == "ACTIVE")
    return a


def test_a_failure_shows_its_traceback_and_output_everywhere(cli):
    run, client, h = cli
    _agent(h)
    out = run("invoke", "echo", "--payload", '{"fail": 1}', "--wait")
    assert out.exit_code == 1
    assert "ended FAILED: KeyError: 'k'" in out.stderr and 'return d["k"]' in out.stderr
    inv = client.list()[0]["invocation_id"]
    status = run("status", str(inv)).stdout
    assert "error: KeyError: 'k'" in status and 'File "/code/m.py", line 3' in status
    assert f"submit-function output {inv}" in status
    doc = json.loads(run("status", str(inv), "-o", "json").stdout)
    assert doc["traceback"] == TRACEBACK and doc["error"] == "KeyError: 'k'"
    res = run("result", str(inv), "-o", "json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["error"]["code"] == "failed" and doc["traceback"] == TRACEBACK and doc["state"] == "FAILED"
    assert run("output", str(inv)).stdout == "printed by {'fail': 1}\n"


def test_output_of_a_success_and_before_the_end(cli):
    run, client, h = cli
    inv = int(run("invoke", "echo", "--payload", "[1]").stdout)
    out = run("output", str(inv))
    assert out.exit_code == 1 and "its output comes with its result" in out.stderr
    _agent(h)
    assert run("wait", str(inv)).stdout.strip() == "SUCCEEDED"
    assert run("output", str(inv)).stdout.strip() == "printed by [1]"


def test_results_in_bulk_in_input_order_and_failures_named(cli, tmp_path):
    run, client, h = cli
    _agent(h)
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"n": 1}\n{"fail": 2}\n{"n": 3}\n')
    out = run("invoke", "echo", "--batch", str(batch), "--wait", "-o", "json")
    assert out.exit_code == 1
    doc = json.loads(out.stdout)
    ids = doc["invocation_ids"]
    assert doc["states"] == {"SUCCEEDED": 2, "FAILED": 1}
    assert doc["invocations"][0] == {"invocation_id": ids[0], "state": "SUCCEEDED", "result": {"n": 1}}
    assert doc["invocations"][1]["error"] == "KeyError: 'k'"
    assert f"1 of 3 invocations did not succeed: {ids[1]} FAILED (KeyError: 'k')" in out.stderr
    # ids in any order, and ranges: JSON lines in that order
    out = run("result", str(ids[2]), str(ids[0]))
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [d["invocation_id"] for d in lines] == [ids[2], ids[0]] and lines[0]["result"] == {"n": 3}
    assert out.exit_code == 0
    out = run("result", f"{ids[0]}-{ids[2]}")
    assert [json.loads(line)["state"] for line in out.stdout.splitlines()] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert out.exit_code == 1 and "1 of 3 invocations did not succeed" in out.stderr
    out = run("result", "--function", "echo", "-o", "json")
    assert [d["invocation_id"] for d in json.loads(out.stdout)] == ids
    assert json.loads(run("result", str(ids[0]), "-o", "json").stdout) == {"invocation_id": ids[0],
                                                                          "result": {"n": 1}}


def test_many_results_come_in_bounded_replies(cli, monkeypatch):
    from coscheduler import readouts

    run, client, h = cli
    _agent(h)
    monkeypatch.setattr(readouts, "RESULTS_BYTES", 40)  # a few values per reply: the client asks again
    ids = client.invoke_batch("echo", [json.dumps("x" * 10 + str(i)) for i in range(30)])
    client.wait_many(ids)
    rows = client.results(ids)
    assert [r["invocation_id"] for r in rows] == ids and json.loads(rows[29]["value_json"]) == "x" * 10 + "29"


def test_payload_from_a_file_and_from_stdin(cli, tmp_path):
    run, client, h = cli
    _agent(h)
    big = {"data": "y" * 300_000}  # more than a command line may hold
    path = tmp_path / "p.json"
    path.write_text(json.dumps(big))
    out = run("invoke", "echo", "--payload", f"@{path}", "--wait")
    assert out.exit_code == 0 and json.loads(out.stdout) == big
    out = run("invoke", "echo", "--payload", "-", "--wait", "-o", "json", input='{"from": "stdin"}\n')
    assert json.loads(out.stdout)["result"] == {"from": "stdin"}
    out = run("invoke", "echo", "--payload", f"@{tmp_path / 'nope'}")
    assert out.exit_code == 2 and "cannot read" in out.stderr


def test_json_output_on_failure_is_an_error_document(cli):
    run, client, h = cli
    for argv, code in [(["invoke", "nope", "-o", "json"], "not-found"),
                       (["status", "99999", "-o", "json"], "not-found"),
                       (["result", "99999", "-o", "json"], "not-found")]:
        out = run(*argv)
        assert out.exit_code == 1, argv
        assert json.loads(out.stdout)["error"]["code"] == code, (argv, out.stdout)


def test_a_queued_invocation_says_why_it_waits(harness_factory):
    h = harness_factory(max_function_cores=4)
    with client_mod.Client(h.endpoint, timeout_s=20) as c:
        def run(*argv):
            return CliRunner().invoke(main, ["--coscheduler", h.endpoint, *argv])

        c.register(name="wide", entrypoint="m:f", code_dir="/tmp", cores=4, mem_mb=100, timeout_s=10)
        c.register(name="fat", entrypoint="m:f", code_dir="/tmp", cores=1, mem_mb=9000, timeout_s=10)
        wide = int(run("invoke", "wide").stdout)
        assert "reason: no lend" in run("status", str(wide)).stdout
        _agent(h, cls=FakeAgent, cores=2)
        assert "too many cores: the function asks for 4, the largest lend now has 2" in run("status", str(wide)).stdout
        fat = int(run("invoke", "fat").stdout)
        rows = {r["invocation_id"]: r for r in json.loads(run("list", "-o", "json").stdout)}
        assert rows[fat]["reason"].startswith("too much memory: the function asks for 9000 MiB")
        assert "too many cores" in run("list").stdout
        out = run("register", "huge", "--entrypoint", "m:f", "--code", "/tmp", "--cores", "8")
        assert out.exit_code == 1 and "no node of this site could ever run it: 8 cores" in out.stderr


def test_run_carries_the_function_version(cli, tmp_path):
    run, client, h = cli
    agent = _agent(h, cls=FakeAgent)
    client.wait(client.invoke("echo", "1"))
    first = agent.runs[-1]["version"]
    assert run("update", "echo", "--timeout", "9").exit_code == 0
    client.wait(client.invoke("echo", "2"))
    assert agent.runs[-1]["version"] != first


def test_register_sends_absolute_paths(cli, tmp_path, monkeypatch):
    run, client, h = cli
    (tmp_path / "code").mkdir()
    monkeypatch.chdir(tmp_path)
    out = run("register", "rel", "--entrypoint", "m:f", "--code", "code", "--image", "img.sqfs",
              "--runtime", "charliecloud")
    assert out.exit_code == 0, out.stderr
    fn = client.function("rel")
    assert fn["code_dir"] == str(tmp_path / "code") and fn["image"] == str(tmp_path / "img.sqfs")


def test_retention_deletes_finished_invocations_in_chunks(harness_factory, monkeypatch):
    monkeypatch.setattr(retention, "CHUNK", 7)
    monkeypatch.setattr(retention, "EVERY_S", 0.05)
    h = harness_factory(retention_s={"SUCCEEDED": 0.5})
    with client_mod.Client(h.endpoint, timeout_s=20) as c:
        c.register(name="echo", entrypoint="m:f", code_dir="/tmp", cores=1, mem_mb=100, timeout_s=10)
        _agent(h, cls=FakeAgent)
        ids = c.invoke_batch("echo", ["1"] * 20)
        c.wait_many(ids)
        wait_for(lambda: c.list(limit=100) == [])
        assert h.daemon.retention.deleted == 20
        with pytest.raises(client_mod.RequestError, match="no invocation"):
            c.status(ids[0])


def test_admin_slots_show_why_a_lend_was_revoked(cli):
    from coscheduler.cli.admin import main as admin

    run, client, h = cli
    _agent(h, cls=FakeAgent, job_id=7)
    del h.slurm.alive[7]  # Slurm no longer runs the job: reconciliation revokes its lend
    wait_for(lambda: h.slot_state("7@n1") == "REVOKED")
    out = CliRunner().invoke(admin, ["--coscheduler", h.endpoint, "slots"])
    line = next(line for line in out.stdout.splitlines() if " 7 " in line)
    assert "REVOKED" in line and line.split("REVOKED", 1)[1].strip().split("  ")[-1]
    doc = json.loads(CliRunner().invoke(admin, ["--coscheduler", h.endpoint, "slots", "-o", "json"]).stdout)
    assert doc[0]["revoke_reason"] and doc[0]["revoke_reason"] in line
