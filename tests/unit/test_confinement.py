"""Executor cgroups on a fake cgroup tree: the files v1 and v2 get, and where."""
from pathlib import Path

import pytest

from faas_runtime import confinement as K


def _files(d: Path, **content: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in content.items():
        (d / name.replace("__", ".")).write_text(text)


@pytest.fixture
def v1(tmp_path):
    _files(tmp_path / "cpuset", cgroup__procs="", cpuset__cpus="0-7", cpuset__mems="0-1")
    for c in ("memory", "cpu", "pids"):
        _files(tmp_path / c / "slurm", cgroup__procs="")
        _files(tmp_path / c, cgroup__procs="")
    return tmp_path


def test_v1_subtree_under_the_agents_own_cgroups(v1):
    own = {"cpuset": "/", "memory": "/slurm", "cpu": "/slurm", "pids": "/slurm"}
    st = K.Subtree("faas-n1", root=v1, version=1, own=own)
    assert st.base == {"cpuset": v1 / "cpuset/faas-n1", "memory": v1 / "memory/slurm/faas-n1",
                       "cpu": v1 / "cpu/slurm/faas-n1", "pids": v1 / "pids/slurm/faas-n1"}
    # v1 cpuset: a new cgroup has no CPUs until given its parent's
    assert (v1 / "cpuset/faas-n1/cpuset.cpus").read_text() == "0-7"
    assert (v1 / "cpuset/faas-n1/cpuset.mems").read_text() == "0-1"
    cg = st.create("e1", K.Limits(cpus=(6, 7, 6), mem_mb=256, pids_max=64, cpu_weight=10))
    assert (v1 / "cpuset/faas-n1/e1/cpuset.cpus").read_text() == "6,7"
    assert (v1 / "cpuset/faas-n1/e1/cpuset.mems").read_text() == "0-1"
    assert (v1 / "memory/slurm/faas-n1/e1/memory.limit_in_bytes").read_text() == str(256 << 20)
    assert (v1 / "cpu/slurm/faas-n1/e1/cpu.shares").read_text() == "102"
    assert (v1 / "pids/slurm/faas-n1/e1/pids.max").read_text() == "64"
    assert cg.name == "e1" and [c.name for c in st.existing()] == ["e1"]


def test_v1_oom_counter(v1):
    st = K.Subtree("f", root=v1, version=1, own={})
    cg = st.create("e1", K.Limits(cpus=(1,), mem_mb=64))
    (cg.dirs["memory"] / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cg.oom_kills() == 2


def test_v2_subtree_enables_controllers_and_leaves_the_agent_in_a_leaf(tmp_path):
    all_c = "cpuset cpu io memory pids"
    _files(tmp_path, cgroup__controllers=all_c)
    _files(tmp_path / "svc", cgroup__controllers=all_c, cgroup__subtree_control="", cgroup__procs="4242\n")
    _files(tmp_path / "svc/faas-n1", cgroup__controllers=all_c, cgroup__subtree_control="")
    st = K.Subtree("faas-n1", root=tmp_path, version=2, own={"": "/svc"})
    assert (tmp_path / "svc/agent/cgroup.procs").read_text() == "4242"  # no processes in inner nodes
    assert (tmp_path / "svc/cgroup.subtree_control").read_text() == "+cpuset +memory +cpu +pids"
    assert (tmp_path / "svc/faas-n1/cgroup.subtree_control").read_text() == "+cpuset +memory +cpu +pids"
    (tmp_path / "svc/faas-n1/e1").mkdir()
    (tmp_path / "svc/faas-n1/e1/memory.swap.max").write_text("max")
    cg = st.create("e1", K.Limits(cpus=(2, 3), mem_mb=128, pids_max=32, cpu_weight=10))
    d = tmp_path / "svc/faas-n1/e1"
    assert (d / "cpuset.cpus").read_text() == "2,3"
    assert (d / "memory.max").read_text() == str(128 << 20)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "cpu.weight").read_text() == "10"
    assert (d / "pids.max").read_text() == "32"
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.oom_kills() == 1


def test_v2_refuses_a_subtree_without_delegated_controllers(tmp_path):
    _files(tmp_path, cgroup__controllers="")
    _files(tmp_path / "svc", cgroup__controllers="cpu", cgroup__subtree_control="", cgroup__procs="")
    with pytest.raises(K.ConfinementError, match="not delegated"):
        K.Subtree("f", root=tmp_path, version=2, own={"": "/svc"})


def test_detect_and_own_cgroups(tmp_path):
    _files(tmp_path, cgroup__controllers="cpu")
    assert K.detect_version(tmp_path) == 2
    (tmp_path / "cgroup.controllers").unlink()
    _files(tmp_path / "cpuset", cgroup__procs="")
    assert K.detect_version(tmp_path) == 1
    (tmp_path / "self").write_text("12:pids:/a\n4:cpu,cpuacct:/b\n0::/c\n")
    assert K.own_cgroups(tmp_path / "self") == {"pids": "/a", "cpu": "/b", "cpuacct": "/b", "": "/c"}


def test_never_root_by_default():
    with pytest.raises(K.ConfinementError, match="never run as root"):
        K.spawn(["/bin/true"], env={}, cwd="/", cgroup=None, identity=K.Identity(0, 0), stdout=None)
