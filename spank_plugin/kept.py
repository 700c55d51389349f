"""The cores a lending job keeps, by the plugin's own C rules (csrc/core_spare.c
``faas_kept_cpus``, csrc/core_record.c ``faas_lend_record_cores``): what the plugin binds
each task of the job to (csrc/spank_task.c), and what tests and tools compare with it."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from spank_plugin._faas_core import ffi, lib
from spank_plugin.core import MAX_CPUS, Config, _bad_name, _config_to_c, _encode, _err_buf, _ERR_LEN, _msg, \
    _raise_oserror, alloc_to_c

__all__ = ["kept_cpus", "lend_record_cores"]


def kept_cpus(config: Config, cores: Union[Sequence[int], str], lent_cores: Sequence[int], online_cpus: int,
              job_os_cpus: Union[Sequence[int], str, None] = None) -> tuple[list[int], bool]:
    """(OS CPUs the job keeps, shared): its allocated ``cores`` that are not in
    ``lent_cores``, mapped as lent ones are; ``shared`` when kept and lent cores map to the
    same OS CPUs only (a block map), so the kept list then includes lent OS CPUs."""
    alloc = alloc_to_c(cores, 0, online_cpus, job_os_cpus)
    lent = [int(c) for c in lent_cores]
    if len(lent) > MAX_CPUS:
        raise ValueError(f"more than {MAX_CPUS} lent cores")
    c_lent = ffi.new("unsigned int[]", lent or [0])
    out = ffi.new("unsigned int[]", MAX_CPUS)
    shared = ffi.new("int *")
    err = _err_buf()
    n = lib.faas_kept_cpus(_config_to_c(config), alloc, c_lent, len(lent), out, MAX_CPUS, shared, err, _ERR_LEN)
    if n < 0:
        raise ValueError(_msg(err))
    return list(out[0:n]), bool(shared[0])


def lend_record_cores(spool: Union[str, os.PathLike], node: str, job_id: int) -> Optional[tuple[list[int], bool]]:
    """(lent Slurm cores, still lent?) of a record as the plugin reads it; None: no record."""
    out = ffi.new("unsigned int[]", MAX_CPUS)
    n = ffi.new("unsigned int *")
    lent = ffi.new("int *")
    err = _err_buf()
    rc = lib.faas_lend_record_cores(os.fsencode(spool), _encode(node, "node", _bad_name), job_id, out, MAX_CPUS, n,
                                    lent, err, _ERR_LEN)
    if rc < 0:
        _raise_oserror(err)
    return None if rc == 1 else (list(out[0:n[0]]), bool(lent[0]))
