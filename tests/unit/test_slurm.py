"""The Slurm access protocol: both backends' mapping, from recorded 22.05 output and from
objects shaped like pyslurm 25.11's (pyslurm 25.11 refuses Slurm 22.05, so no real
pyslurm runs here; the CLI backend also runs against the real cluster in the
integration tests)."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from coscheduler import slurm as S

DATA = Path(__file__).parent / "data" / "slurm-22.05"


def test_recorded_squeue_json():
    jobs = S.parse_squeue_json((DATA / "squeue.json").read_text())
    assert set(jobs) == {1}
    j = jobs[1]
    assert j.state == "RUNNING" and j.alive and j.nodes == "n1" and j.user_id == 0
    assert j.end_time and j.end_time > 1.7e9


def test_recorded_sinfo_json():
    nodes = S.parse_sinfo_json((DATA / "sinfo.json").read_text())
    assert set(nodes) == {"n1", "n2", "n3"}
    n1 = nodes["n1"]
    assert (n1.cpus, n1.real_memory_mb, n1.alloc_cpus, n1.alloc_memory_mb) == (8, 16000, 4, 4000)
    assert n1.state == "mixed" and n1.usable


def test_recorded_scontrol_line():
    line = (DATA / "scontrol_show_job.txt").read_text().splitlines()[0]
    info = S.job_from_scontrol(S.parse_scontrol_line(line))
    assert info.job_id == 1 and info.state == "RUNNING" and info.nodes == "n1" and info.user_id == 0
    assert info.end_time is None  # TimeLimit=UNLIMITED: EndTime=Unknown


def test_scontrol_free_text_values_and_times():
    f = S.parse_scontrol_line("JobId=7 UserId=bob(1001) JobState=COMPLETING Reason=Node down now "
                              "EndTime=2030-01-02T03:04:05 NodeList=n[1-2]")
    assert f["Reason"] == "Node down now"
    info = S.job_from_scontrol(f)
    assert info.user_id == 1001 and not info.alive and info.node_names == ["n1", "n2"]
    assert info.end_time is not None


def test_newer_slurm_json_shapes():
    doc = {"jobs": [{"job_id": 5, "job_state": ["RUNNING", "COMPLETING"], "nodes": "c[01-02]",
                     "end_time": {"set": True, "infinite": False, "number": 1800000000}},
                    {"job_id": 6, "job_state": ["PENDING"], "end_time": {"set": False, "number": 0}},
                    {"job_id": "junk"}]}
    jobs = S.parse_squeue_json(json.dumps(doc))
    assert jobs[5].state == "RUNNING" and jobs[5].end_time == 1800000000 and jobs[5].node_names == ["c01", "c02"]
    assert jobs[6].end_time is None and not jobs[6].alive and set(jobs) == {5, 6}


@pytest.mark.parametrize("doc", ["not json", "{}", '{"jobs": 3}'])
def test_bad_output_is_a_slurm_error(doc):
    with pytest.raises(S.SlurmError):
        S.parse_squeue_json(doc)


@pytest.mark.parametrize("hostlist,names", [
    ("n1", ["n1"]), ("n[1-3]", ["n1", "n2", "n3"]), ("n[1,3-4],gpu[01-02]", ["n1", "n3", "n4", "gpu01", "gpu02"]),
    ("", []), ("a,b", ["a", "b"]),
])
def test_expand_hostlist(hostlist, names):
    assert S.expand_hostlist(hostlist) == names


def test_missing_command_is_a_slurm_error():
    with pytest.raises(S.SlurmError, match="failed"):
        S.CliBackend(squeue="/nonexistent/squeue").jobs()


class FakePyslurm:
    """Duck types of pyslurm 25.11's Jobs/Job/Nodes (dict subclasses keyed by id/name)."""

    def __init__(self, jobs, nodes, fail=False):
        outer = self

        class Jobs:
            @staticmethod
            def load():
                if outer.fail:
                    raise RuntimeError("Slurm controller unreachable")
                return {j.id: j for j in jobs}

        class Job:
            @staticmethod
            def load(job_id):
                for j in jobs:
                    if j.id == job_id:
                        return j
                raise type("RPCError", (Exception,), {})("Invalid job id specified")

        class Nodes:
            @staticmethod
            def load():
                return {n.name: n for n in nodes}

        self.Jobs, self.Job, self.Nodes, self.fail = Jobs, Job, Nodes, fail


def _fake(**kw):
    jobs = [SimpleNamespace(id=12, state="RUNNING", end_time=1800000000, nodes="n[1-2]", user_id=1000),
            SimpleNamespace(id=13, state="COMPLETED", end_time=None, nodes=None, user_id=1000)]
    nodes = [SimpleNamespace(name="n1", state="MIXED", total_cpus=64, real_memory=256000, allocated_cpus=32,
                             allocated_memory=128000)]
    return FakePyslurm(jobs, nodes, **kw)


def test_pyslurm_backend_maps_jobs_and_nodes():
    b = S.PyslurmBackend(_fake())
    jobs = b.jobs()
    assert jobs[12] == S.JobInfo(12, "RUNNING", 1800000000.0, "n[1-2]", 1000)
    assert not jobs[13].alive and jobs[13].nodes == ""
    assert b.job(12).node_names == ["n1", "n2"] and b.job(99) is None
    n1 = b.nodes()["n1"]
    assert (n1.cpus, n1.real_memory_mb, n1.alloc_cpus, n1.state) == (64, 256000, 32, "mixed")


def test_pyslurm_errors_become_slurm_errors():
    with pytest.raises(S.SlurmError, match="unreachable"):
        S.PyslurmBackend(_fake(fail=True)).jobs()


def test_auto_falls_back_to_the_cli_without_pyslurm(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyslurm", None)  # `import pyslurm` raises ImportError
    assert isinstance(S.make_backend("auto"), S.CliBackend)
    with pytest.raises(S.SlurmError, match="pyslurm is not usable"):
        S.make_backend("pyslurm")
