"""What a node lends (faas_spare_compute through cffi)."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spank_plugin.core import Config, Lend, ShareSpec, compute_spare, parse_config, parse_spec

IDENTITY = Config()
BLOCK8 = parse_config(["cpu_map=block", "node_cpus=8"])


def test_no_lends_nothing():
    assert compute_spare("no", IDENTITY, "0-7", 1, 8192, 2) == Lend()


def test_explicit_takes_highest_cores_and_block_map():
    # The dev cluster: 8 declared cores on a 2-CPU machine.
    lend = compute_spare("cores=2,mem=4G", BLOCK8, "0-7", 8, 8192, 2)
    assert lend == Lend(slurm_cpus=(6, 7), os_cpus=(1, 1), mem_mb=4096)


def test_block_map_spreads_over_online_cpus():
    lend = compute_spare("cores=7", BLOCK8, "0-7", 0, 0, 2)
    assert lend.slurm_cpus == (1, 2, 3, 4, 5, 6, 7)
    assert lend.os_cpus == (0, 0, 0, 1, 1, 1, 1)
    cfg = parse_config(["cpu_map=block", "node_cpus=4"])
    assert compute_spare("cores=3", cfg, "0-3", 0, 0, 8).os_cpus == (2, 4, 6)


def test_identity_map():
    lend = compute_spare("cores=3", IDENTITY, [2, 5, 9, 11], 0, 1000, 64)
    assert lend.slurm_cpus == (5, 9, 11)
    assert lend.os_cpus == (5, 9, 11)


def test_highest_cores_of_a_sparse_allocation():
    assert compute_spare("cores=2", IDENTITY, "0-1,4-5", 0, 0, 8).slurm_cpus == (4, 5)


def test_job_keeps_at_least_one_core():
    assert compute_spare("cores=8", IDENTITY, "0-7", 0, 0, 8).slurm_cpus == tuple(range(1, 8))
    assert compute_spare("cores=1", IDENTITY, "3", 0, 0, 8) == Lend()
    assert compute_spare("auto", IDENTITY, "0-7", 0, 0, 8).slurm_cpus == tuple(range(1, 8))


def test_explicit_missing_key_is_lent_as_auto():
    # mem=1G: the cores the tasks leave idle (7 of 8) and 1 GiB
    assert compute_spare("mem=1G", IDENTITY, "0-7", 1, 8192, 8) == Lend(tuple(range(1, 8)), tuple(range(1, 8)), 1024)
    # cores=1: one core and auto's half of the memory
    assert compute_spare("cores=1", IDENTITY, "0-7", 1, 8192, 8) == Lend((7,), (7,), 4096)


def test_explicit_capped_by_allocation():
    lend = compute_spare("cores=100,mem=100G", IDENTITY, "0-3", 1, 2000, 4)
    assert lend == Lend((1, 2, 3), (1, 2, 3), 2000)


def test_auto_lends_unused_cores_and_half_the_memory():
    lend = compute_spare("auto", IDENTITY, "0-7", 2, 8000, 8)
    assert lend == Lend(tuple(range(2, 8)), tuple(range(2, 8)), 4000)
    assert compute_spare("auto", IDENTITY, "0-7", 8, 8000, 8) == Lend(mem_mb=4000)
    assert compute_spare("auto", IDENTITY, "0-7", 20, 8000, 8) == Lend(mem_mb=4000)


def test_auto_mem_percent():
    cfg = parse_config(["auto_mem_percent=100"])
    assert compute_spare("auto", cfg, "0-1", 2, 999, 2).mem_mb == 999
    cfg = parse_config(["auto_mem_percent=33"])
    assert compute_spare("auto", cfg, "0-1", 2, 1000, 2).mem_mb == 330


def test_reserve_cores_and_mem():
    cfg = parse_config(["reserve_cores=2", "reserve_mem=1G"])
    # explicit: lendable = 8 - 2 = 6
    assert compute_spare("cores=8,mem=100G", cfg, "0-7", 0, 4096, 8) == Lend(
        tuple(range(2, 8)), tuple(range(2, 8)), 3072)
    # auto: 8 - 3 used - 2 reserved = 3; (4096 - 1024) / 2
    assert compute_spare("auto", cfg, "0-7", 3, 4096, 8) == Lend((5, 6, 7), (5, 6, 7), 1536)
    # reserve larger than the allocation: nothing, never negative
    cfg = parse_config(["reserve_cores=16", "reserve_mem=64G"])
    assert compute_spare("auto", cfg, "0-7", 0, 4096, 8) == Lend()
    assert compute_spare("cores=2,mem=1G", cfg, "0-7", 0, 4096, 8) == Lend()


def test_block_map_needs_node_cpus():
    cfg = parse_config(["cpu_map=block"])
    with pytest.raises(ValueError, match="node_cpus"):
        compute_spare("cores=2", cfg, "0-7", 0, 0, 2)
    with pytest.raises(ValueError, match="node_cpus"):
        compute_spare("cores=2", BLOCK8, "0-7", 0, 0, 0)  # online CPUs unknown
    # nothing to map: no error
    assert compute_spare("mem=1G", cfg, "0-7", 8, 4096, 2) == Lend(mem_mb=1024)  # tasks use every core


def test_core_beyond_node_cpus_is_an_error():
    with pytest.raises(ValueError, match="beyond node_cpus"):
        compute_spare("cores=2", BLOCK8, "0-9", 0, 0, 2)


def test_unsorted_allocation_is_an_error():
    with pytest.raises(ValueError, match="ascending"):
        compute_spare("cores=1", IDENTITY, [3, 1], 0, 0, 4)


def test_no_cores_lends_memory_only():
    assert compute_spare("cores=2,mem=1G", IDENTITY, [], 0, 4096, 4) == Lend(mem_mb=1024)


def test_spec_object_and_text_agree():
    spec = parse_spec("cores=2,mem=1G")
    assert compute_spare(spec, IDENTITY, "0-3", 0, 4096, 4) == compute_spare(
        "cores=2,mem=1G", IDENTITY, "0-3", 0, 4096, 4)
    assert compute_spare(ShareSpec("no"), IDENTITY, "0-3", 0, 4096, 4) == Lend()


@given(
    ncores=st.integers(0, 64),
    used=st.integers(0, 80),
    mem=st.integers(0, 2**50),
    reserve=st.integers(0, 70),
    want=st.integers(1, 100),
    auto=st.booleans(),
)
def test_invariants(ncores, used, mem, reserve, want, auto):
    cfg = Config(reserve_cores=reserve, cpu_map="block", node_cpus=64)
    cores = list(range(ncores))
    spec = ShareSpec("auto") if auto else ShareSpec("explicit", cores=want, mem_mb=mem // 2 + 1)
    lend = compute_spare(spec, cfg, cores, used, mem, 8)
    n = len(lend.slurm_cpus)
    assert n <= max(0, ncores - 1)  # the job keeps a core
    assert n <= max(0, ncores - reserve)
    assert lend.slurm_cpus == tuple(cores[ncores - n:])  # the highest ones, ascending
    assert all(0 <= c < 8 for c in lend.os_cpus)
    assert lend.mem_mb <= mem


# --- the job's cpuset (cgroup v1 and v2 trees in tmp dirs) and site policy -------------

from spank_plugin.core import job_cpuset_cpus, policy_allows, tasks_estimate  # noqa: E402


def _cpuset(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("rel,version", [
    ("system.slice/slurmstepd.scope/job_42/cpuset.cpus.effective", "v2"),
    ("system.slice/n1_slurmstepd.scope/job_42/cpuset.cpus.effective", "v2"),
    ("cpuset/slurm/uid_1000/job_42/cpuset.cpus", "v1"),
    ("cpuset/slurm_n1/uid_1000/job_42/cpuset.cpus", "v1"),
])
def test_cgroup_readers(tmp_path, rel, version):
    _cpuset(tmp_path, rel, "2-3,10-11\n")
    assert job_cpuset_cpus(tmp_path, "n1", 1000, 42) == (version, [2, 3, 10, 11])
    assert job_cpuset_cpus(tmp_path, "n1", 1000, 43) == ("none", [])  # another job: not confined


def test_cgroup_node_specific_path_wins(tmp_path):
    _cpuset(tmp_path, "cpuset/slurm/uid_0/job_7/cpuset.cpus", "0-1")
    _cpuset(tmp_path, "cpuset/slurm_n2/uid_0/job_7/cpuset.cpus", "4-5")
    assert job_cpuset_cpus(tmp_path, "n2", 0, 7) == ("v1", [4, 5])
    assert job_cpuset_cpus(tmp_path, "n1", 0, 7) == ("v1", [0, 1])


@pytest.mark.parametrize("content", ["", "garbage", "3-1", "0-99999"])
def test_cgroup_garbage_is_an_error(tmp_path, content):
    _cpuset(tmp_path, "cpuset/slurm/uid_0/job_1/cpuset.cpus", content)
    with pytest.raises(OSError, match="cpuset.cpus"):
        job_cpuset_cpus(tmp_path, "n1", 0, 1)


def test_cgroup_unreadable_is_an_error(tmp_path):
    (tmp_path / "cpuset/slurm/uid_0/job_1/cpuset.cpus").mkdir(parents=True)  # EISDIR even for root
    with pytest.raises(OSError, match="cannot read"):
        job_cpuset_cpus(tmp_path, "n1", 0, 1)
    with pytest.raises(OSError):
        job_cpuset_cpus(tmp_path, "../x", 0, 1)


def test_cpuset_maps_cores_to_os_cpus():
    # 4 cores, cpuset of 4 CPUs: positional; the job keeps cores 0-1 (CPUs 8, 9)
    lend = compute_spare("cores=2", BLOCK8, "0-3", 0, 0, 2, job_os_cpus="8-9,12,14")
    assert lend == Lend((2, 3), (12, 14), 0, "cgroup")
    # two threads per core: first thread of each lent core
    lend = compute_spare("cores=1", IDENTITY, [0, 1], 0, 0, 4, job_os_cpus="0,1,4,5")
    assert lend.os_cpus == (4,) and lend.cpu_source == "cgroup"
    with pytest.raises(ValueError, match="cpuset has 3 CPUs for 2"):
        compute_spare("cores=1", IDENTITY, [0, 1], 0, 0, 4, job_os_cpus="0-2")
    assert compute_spare("mem=1G", IDENTITY, [0, 1], 2, 4096, 4, job_os_cpus="0-2") == Lend(mem_mb=1024)


def test_max_mem_percent_caps_every_lend():
    cfg = parse_config(["max_mem_percent=25"])
    assert compute_spare("mem=100G", cfg, "0-1", 0, 8000, 2).mem_mb == 2000
    assert compute_spare("auto", cfg, "0-1", 0, 8000, 2).mem_mb == 2000
    assert compute_spare("auto", parse_config(["max_mem_percent=0"]), "0-1", 0, 8000, 2).mem_mb == 0


def test_policy():
    assert policy_allows(Config(), "", "") == (True, "")
    cfg = parse_config(["allow_partitions=batch,long", "allow_users=alice,bob"])
    assert cfg.allow_partitions == ("batch", "long") and cfg.allow_users == ("alice", "bob")
    assert policy_allows(cfg, "long", "bob")[0]
    ok, why = policy_allows(cfg, "debug", "bob")
    assert not ok and "partition 'debug' may not lend" in why
    ok, why = policy_allows(cfg, "batch", "carol")
    assert not ok and "user 'carol'" in why
    assert not policy_allows(cfg, "batc", "bob")[0] and not policy_allows(cfg, "", "bob")[0]


@pytest.mark.parametrize("arg", ["allow_users=", "allow_users=a,,b", "allow_partitions=a b", "max_mem_percent=101",
                                 "cgroup_root=relative"])
def test_bad_policy_args(arg):
    with pytest.raises(ConfigError):
        parse_config([arg])


def test_tasks_estimate():
    assert tasks_estimate("5", "3") == 2
    assert tasks_estimate("64", "2") == 32
    for bad in (("", "1"), ("x", "1"), ("4", "0"), (None, "2"), ("-1", "1"), ("4", "2(x3)")):
        assert tasks_estimate(*bad) == 0


from spank_plugin.core import ConfigError  # noqa: E402
