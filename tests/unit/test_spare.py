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
