"""A lend the co-scheduler revoked is marked revoked on disk, so a restarted agent does not
announce it again."""
import json

from faas_runtime import protocol as P
from spank_plugin.core import Lend, lend_record_path, write_lend_record

from .runtime_fixtures import harness  # noqa: F401  (fixture)


def test_a_coscheduler_revoke_marks_the_record_and_a_restart_does_not_reannounce(harness):
    h = harness(cgroups=False)
    spool = h.agent.spool
    spool.mkdir(parents=True, exist_ok=True)
    write_lend_record(spool, 41, "t1", 0, 0, 0, "cores=1", Lend((1,), (0,), 512))
    write_lend_record(spool, 42, "t1", 0, 0, 0, "cores=1", Lend((1,), (0,), 512))
    h.agent.step_spool()
    assert {"41@t1", "42@t1"} <= set(h.agent.slots)
    h.agent._dispatch({"v": P.VERSION, "type": P.REVOKE, "job_id": 41, "reason": "job 41 is not in squeue"})
    assert h.agent.slots["41@t1"].revoked
    assert json.loads(lend_record_path(spool, "t1", 41).read_text())["state"] == "revoked"
    assert json.loads(lend_record_path(spool, "t1", 42).read_text())["state"] == "lent"
    h.agent._dispatch({"v": P.VERSION, "type": P.REVOKE, "job_id": 41, "reason": "again"})  # idempotent
    h.agent._dispatch({"v": P.VERSION, "type": P.REVOKE, "job_id": 99, "reason": "no such record"})

    restarted = harness(cgroups=False)  # a new agent on the same spool
    restarted.agent.spool = spool
    restarted.agent.node_spool = spool / "t1"
    restarted.agent.welcomed = False  # a new agent announces its lends once welcomed
    restarted.agent.step_spool()
    restarted.agent._dispatch({"v": P.VERSION, "type": P.WELCOME})
    announced = [f["record"]["job_id"] for kind, f in restarted.sent if kind == P.LEND]
    assert announced == [42]
