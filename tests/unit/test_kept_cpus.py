"""The cores a lending job keeps (csrc/core_spare.c faas_kept_cpus) and the lent cores the
plugin reads back from a record (csrc/core_record.c faas_lend_record_cores): what
csrc/spank_task.c binds each task of the job to."""
from __future__ import annotations

import pytest

from spank_plugin.core import Lend, compute_spare, parse_config, peek_lend_record, revoke_lend_record, \
    write_lend_record
from spank_plugin.kept import kept_cpus, lend_record_cores


def test_identity_map_keeps_the_cores_not_lent():
    cfg = parse_config([])
    lend = compute_spare("cores=3", cfg, "0-7", 0, 8000, 8)
    assert lend.slurm_cpus == (5, 6, 7)
    kept, shared = kept_cpus(cfg, "0-7", lend.slurm_cpus, 8)
    assert kept == [0, 1, 2, 3, 4] and not shared


def test_cpuset_gives_every_thread_of_a_kept_core():
    # a confined job: 4 cores with 2 threads each (cpuset 8-15)
    cfg = parse_config([])
    lend = compute_spare("cores=1", cfg, "0-3", 0, 8000, 16, job_os_cpus="8-15")
    assert lend.os_cpus == (14,) and lend.cpu_source == "cgroup"
    kept, shared = kept_cpus(cfg, "0-3", lend.slurm_cpus, 16, job_os_cpus="8-15")
    assert kept == list(range(8, 14)) and not shared


def test_block_map_separates_kept_and_lent_os_cpus_when_it_can():
    # the dev cluster: 8 declared cores on 2 OS CPUs; -c8 lending 4 keeps CPU 0, lends CPU 1
    cfg = parse_config(["cpu_map=block", "node_cpus=8"])
    lend = compute_spare("cores=4", cfg, "0-7", 0, 8000, 2)
    assert set(lend.os_cpus) == {1}
    assert kept_cpus(cfg, "0-7", lend.slurm_cpus, 2) == ([0], False)


def test_block_map_sharing_one_os_cpu_says_so():
    # -c4 lending 2: cores 0-3 all map to OS CPU 0; nothing can be kept apart
    cfg = parse_config(["cpu_map=block", "node_cpus=8"])
    lend = compute_spare("cores=2", cfg, "0-3", 0, 8000, 2)
    assert kept_cpus(cfg, "0-3", lend.slurm_cpus, 2) == ([0], True)


def test_a_kept_cpu_shared_with_a_lent_core_is_left_out_when_others_remain():
    # node_cpus=6 on 3 OS CPUs: cores 0,1 -> CPU 0; 2,3 -> CPU 1; 4,5 -> CPU 2. Lending 3-5
    # keeps cores 0-2 (CPUs 0, 1), but CPU 1 also runs lent core 3: the job keeps CPU 0 alone.
    cfg = parse_config(["cpu_map=block", "node_cpus=6"])
    assert kept_cpus(cfg, "0-5", [3, 4, 5], 3) == ([0], False)


def test_bad_input_is_refused():
    cfg = parse_config(["cpu_map=block"])
    with pytest.raises(ValueError, match="node_cpus"):
        kept_cpus(cfg, "0-3", [3], 2)
    with pytest.raises(ValueError, match="cpuset has 3 CPUs for 2"):
        kept_cpus(parse_config([]), "0-1", [1], 4, job_os_cpus="0-2")


def test_record_cores_read_back(tmp_path):
    lend = Lend(slurm_cpus=(4, 5, 6, 7), os_cpus=(1, 1, 1, 1), mem_mb=512)
    write_lend_record(tmp_path, 12, "n1", 0, 0, 0, "cores=4", lend, job_mem_mb=2048)
    assert lend_record_cores(tmp_path, "n1", 12) == ([4, 5, 6, 7], True)
    assert peek_lend_record(tmp_path, "n1", 12) == (4, True)
    assert '"job_mem_mb":2048' in (tmp_path / "n1" / "12.json").read_text()
    revoke_lend_record(tmp_path, "n1", 12)
    assert lend_record_cores(tmp_path, "n1", 12) == ([4, 5, 6, 7], False)
    assert lend_record_cores(tmp_path, "n1", 13) is None


def test_record_cores_refuse_garbage(tmp_path):
    (tmp_path / "n1").mkdir(mode=0o700)
    (tmp_path / "n1" / "3.json").write_text('{"version":1,"state":"lent","slurm_cpus":[1,99999999999]}\n')
    with pytest.raises(OSError, match="not a version 1 lend record"):
        lend_record_cores(tmp_path, "n1", 3)
