"""Pythonic layer over the C core of the SPANK plugin (csrc/faas_core.c).

The C functions are the ones slurmstepd runs; this module only converts
between Python values and the C structs, so the co-scheduler, the agent and
the tests apply exactly the plugin's rules. Callers never see cffi objects.

    >>> parse_spec("cores=2,mem=4G")
    ShareSpec(mode='explicit', cores=2, mem_mb=4096, until_min=0)
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

from spank_plugin._faas_core import ffi, lib

__all__ = [
    "MAX_CPUS",
    "LEND_RECORD_VERSION",
    "SpecError",
    "ConfigError",
    "ShareSpec",
    "Config",
    "Lend",
    "parse_spec",
    "parse_size_mb",
    "parse_cpulist",
    "parse_config",
    "compute_spare",
    "write_lend_record",
    "revoke_lend_record",
    "lend_record_path",
    "job_cpuset_cpus",
    "policy_allows",
    "tasks_estimate",
    "Pending",
    "write_pending",
    "read_pending",
    "remove_pending",
    "peek_lend_record",
]

MAX_CPUS: int = lib.FAAS_MAX_CPUS
LEND_RECORD_VERSION: int = lib.FAAS_LEND_RECORD_VERSION
_ERR_LEN: int = lib.FAAS_ERR_LEN

_MODES = {lib.FAAS_SPEC_NO: "no", lib.FAAS_SPEC_AUTO: "auto", lib.FAAS_SPEC_EXPLICIT: "explicit"}
_MODE_IDS = {name: num for num, name in _MODES.items()}
_CPU_MAPS = {lib.FAAS_CPU_MAP_IDENTITY: "identity", lib.FAAS_CPU_MAP_BLOCK: "block"}
_CPU_MAP_IDS = {name: num for num, name in _CPU_MAPS.items()}


class SpecError(ValueError):
    """A --faas-share value (or size, or core list) that does not parse."""


class ConfigError(ValueError):
    """A plugstack.conf argument that does not parse."""


@dataclass(frozen=True)
class ShareSpec:
    """A parsed --faas-share value; 0 means "not given" for every count."""

    mode: str = "auto"  # 'no' | 'auto' | 'explicit'
    cores: int = 0
    mem_mb: int = 0
    until_min: int = 0

    def __post_init__(self) -> None:
        if self.mode not in _MODE_IDS:
            raise ValueError(f"mode must be one of {sorted(_MODE_IDS)}, got {self.mode!r}")

    def to_text(self) -> str:
        """The canonical spec text; parse_spec(s.to_text()) == s."""
        if self.mode != "explicit":
            return self.mode
        parts = []
        if self.cores:
            parts.append(f"cores={self.cores}")
        if self.mem_mb:
            parts.append(f"mem={self.mem_mb}")
        if self.until_min:
            parts.append(f"until={self.until_min}")
        return ",".join(parts)


@dataclass(frozen=True)
class Config:
    """Site policy from the plugin's plugstack.conf arguments."""

    spool_dir: str = "/var/spool/slurm-faas"
    cpu_map: str = "identity"  # 'identity' | 'block'
    node_cpus: int = 0
    reserve_cores: int = 0
    reserve_mem_mb: int = 0
    auto_mem_percent: int = 50
    default_spec: ShareSpec = field(default_factory=lambda: ShareSpec(mode="no"))
    max_mem_percent: int = 100
    allow_partitions: tuple[str, ...] = ()
    allow_users: tuple[str, ...] = ()
    cgroup_root: str = "/sys/fs/cgroup"


@dataclass(frozen=True)
class Lend:
    """What one node lends: Slurm core ids, the OS CPUs they map to, memory."""

    slurm_cpus: tuple[int, ...] = ()
    os_cpus: tuple[int, ...] = ()
    mem_mb: int = 0
    cpu_source: str = "map"  # 'map' (cpu_map) | 'cgroup' (the job's cpuset)


# ---------------------------------------------------------------------------
# raw layer helpers


def _err_buf():
    return ffi.new("char[]", _ERR_LEN)


def _msg(err) -> str:
    return ffi.string(err).decode("utf-8", "replace")


def _encode(text: str, what: str, exc: Callable[[str], Exception] = ValueError) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str, not {type(text).__name__}")
    data = text.encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise exc(f"{what} contains a NUL character")
    return data


def _spec_from_c(c) -> ShareSpec:
    return ShareSpec(mode=_MODES[c.mode], cores=c.cores, mem_mb=c.mem_mb, until_min=c.until_min)


def _spec_to_c(spec: ShareSpec, c) -> None:
    c.mode = _MODE_IDS[spec.mode]
    c.cores = spec.cores
    c.mem_mb = spec.mem_mb
    c.until_min = spec.until_min


def _config_to_c(cfg: Config):
    c = ffi.new("struct faas_config *")
    spool = _encode(cfg.spool_dir, "spool_dir")
    if len(spool) >= len(c.spool_dir):
        raise ConfigError("spool path is too long")
    c.spool_dir = spool
    if cfg.cpu_map not in _CPU_MAP_IDS:
        raise ConfigError(f"cpu_map must be identity or block, got {cfg.cpu_map!r}")
    c.cpu_map = _CPU_MAP_IDS[cfg.cpu_map]
    c.node_cpus = cfg.node_cpus
    c.reserve_cores = cfg.reserve_cores
    c.reserve_mem_mb = cfg.reserve_mem_mb
    c.auto_mem_percent = cfg.auto_mem_percent
    _spec_to_c(cfg.default_spec, c.default_spec)
    c.max_mem_percent = cfg.max_mem_percent
    for name in ("allow_partitions", "allow_users"):
        raw = _encode(",".join(getattr(cfg, name)), name, ConfigError)
        if len(raw) >= len(getattr(c, name)):
            raise ConfigError(f"{name} is too long")
        setattr(c, name, raw)
    root = _encode(cfg.cgroup_root, "cgroup_root", ConfigError)
    if len(root) >= len(c.cgroup_root):
        raise ConfigError("cgroup_root is too long")
    c.cgroup_root = root
    return c


def _config_from_c(c) -> Config:
    return Config(
        spool_dir=ffi.string(c.spool_dir).decode("utf-8", "surrogateescape"),
        cpu_map=_CPU_MAPS[c.cpu_map],
        node_cpus=c.node_cpus,
        reserve_cores=c.reserve_cores,
        reserve_mem_mb=c.reserve_mem_mb,
        auto_mem_percent=c.auto_mem_percent,
        default_spec=_spec_from_c(c.default_spec),
        max_mem_percent=c.max_mem_percent,
        allow_partitions=_names(c.allow_partitions),
        allow_users=_names(c.allow_users),
        cgroup_root=ffi.string(c.cgroup_root).decode("utf-8", "surrogateescape"),
    )


def _names(buf) -> tuple[str, ...]:
    text = ffi.string(buf).decode("utf-8", "surrogateescape")
    return tuple(text.split(",")) if text else ()


# ---------------------------------------------------------------------------
# parsing


def parse_spec(text: str | None) -> ShareSpec:
    """Parse a --faas-share value; None or "" mean auto. Raises SpecError."""
    out = ffi.new("struct faas_spec *")
    err = _err_buf()
    raw = ffi.NULL if text is None else _encode(text, "spec", SpecError)
    if lib.faas_spec_parse(raw, out, err, _ERR_LEN) != 0:
        raise SpecError(_msg(err))
    return _spec_from_c(out)


def parse_size_mb(text: str) -> int:
    """Parse "4096", "4G", "512M", "1T" into MiB. Raises SpecError."""
    out = ffi.new("unsigned long long *")
    err = _err_buf()
    if lib.faas_size_parse_mb(_encode(text, "size", SpecError), out, err, _ERR_LEN) != 0:
        raise SpecError(_msg(err))
    return int(out[0])


def parse_cpulist(text: str) -> list[int]:
    """Parse a Slurm core list ("0-3,6,8-9") into ascending unique ids."""
    out = ffi.new("unsigned int[]", MAX_CPUS)
    err = _err_buf()
    n = lib.faas_cpulist_parse(_encode(text, "core list", SpecError), out, MAX_CPUS, err, _ERR_LEN)
    if n < 0:
        raise SpecError(_msg(err))
    return list(out[0:n])


def parse_config(args: Iterable[str]) -> Config:
    """Parse plugstack.conf arguments ("spool=/x", "cpu_map=block", ...) on top
    of the defaults. Raises ConfigError naming the bad argument."""
    c = ffi.new("struct faas_config *")
    lib.faas_config_defaults(c)
    err = _err_buf()
    for arg in args:
        if lib.faas_config_parse_arg(c, _encode(arg, "argument", ConfigError), err, _ERR_LEN) != 0:
            raise ConfigError(f"{arg}: {_msg(err)}")
    return _config_from_c(c)


# ---------------------------------------------------------------------------
# spare computation


def alloc_to_c(cores: Union[Sequence[int], str], mem_mb: int, online_cpus: int,
               job_os_cpus: Union[Sequence[int], str, None] = None):
    """A ``struct faas_node_alloc`` of the job's cores, memory, the machine's online
    CPUs and the job's cpuset (None: not confined). Raises ValueError on bad input."""
    ids = parse_cpulist(cores) if isinstance(cores, str) else [int(c) for c in cores]
    if len(ids) > MAX_CPUS:
        raise ValueError(f"more than {MAX_CPUS} cores")
    for name, value in (("mem_mb", mem_mb), ("online_cpus", online_cpus)):
        if value < 0:
            raise ValueError(f"{name} must not be negative")
    alloc = ffi.new("struct faas_node_alloc *")
    alloc.ncores = len(ids)
    alloc.cores[0 : len(ids)] = ids
    alloc.mem_mb = mem_mb
    alloc.online_cpus = online_cpus
    if job_os_cpus is not None:
        os_ids = parse_cpulist(job_os_cpus) if isinstance(job_os_cpus, str) else [int(c) for c in job_os_cpus]
        if len(os_ids) > MAX_CPUS:
            raise ValueError(f"more than {MAX_CPUS} OS CPUs")
        alloc.nos_cpus = len(os_ids)
        alloc.os_cpus[0 : len(os_ids)] = os_ids
    return alloc


def compute_spare(
    spec: Union[ShareSpec, str, None],
    config: Config,
    cores: Union[Sequence[int], str],
    used_cores: int,
    mem_mb: int,
    online_cpus: int,
    job_os_cpus: Union[Sequence[int], str, None] = None,
) -> Lend:
    """What a node lends, by the plugin's rules.

    cores: the job's Slurm core ids on the node (a list or a core list string);
    used_cores: what its tasks use (auto mode); mem_mb: its memory there;
    online_cpus: OS CPUs of the machine (block map); job_os_cpus: the job's
    OS CPUs from its cpuset cgroup when it is confined (they win over cpu_map).
    A spec given as text is parsed first. Raises ValueError on inconsistent input.
    """
    if not isinstance(spec, ShareSpec):
        spec = parse_spec(spec)
    if used_cores < 0:
        raise ValueError("used_cores must not be negative")
    c_spec = ffi.new("struct faas_spec *")
    _spec_to_c(spec, c_spec)
    c_cfg = _config_to_c(config)
    alloc = alloc_to_c(cores, mem_mb, online_cpus, job_os_cpus)
    alloc.used_cores = used_cores
    out = ffi.new("struct faas_lend *")
    err = _err_buf()
    if lib.faas_spare_compute(c_spec, c_cfg, alloc, out, err, _ERR_LEN) != 0:
        raise ValueError(_msg(err))
    n = out.ncpus
    return Lend(slurm_cpus=tuple(out.slurm_cpus[0:n]), os_cpus=tuple(out.os_cpus[0:n]), mem_mb=int(out.mem_mb),
                cpu_source="cgroup" if out.cpu_source == lib.FAAS_CPUS_FROM_CGROUP else "map")


# ---------------------------------------------------------------------------
# lend records


def lend_record_path(spool: Union[str, os.PathLike], node: str, job_id: int) -> Path:
    """Where the record of job_id on node lives: <spool>/<node>/<job_id>.json."""
    return Path(spool) / node / f"{job_id}.json"


def _bad_name(message: str) -> OSError:
    return OSError(errno.EINVAL, message)


def _raise_oserror(err) -> None:
    code = ffi.errno
    message = _msg(err)
    if code:
        raise OSError(code, message)
    raise OSError(message)


def write_lend_record(
    spool: Union[str, os.PathLike],
    job_id: int,
    node: str,
    uid: int,
    gid: int,
    end_time: int,
    spec_text: str,
    lend: Lend,
    until_min: int = 0,
    state: str = "lent",
    job_mem_mb: int = 0,
) -> Path:
    """Write <spool>/<node>/<job_id>.json atomically, as the plugin does.
    Returns the record's path. Raises OSError with the C message (errno EINVAL
    for a bad node name)."""
    if len(lend.slurm_cpus) != len(lend.os_cpus):
        raise ValueError("slurm_cpus and os_cpus differ in length")
    if len(lend.slurm_cpus) > MAX_CPUS:
        raise ValueError(f"more than {MAX_CPUS} cpus")
    meta = ffi.new("struct faas_lend_meta *")
    meta.job_id = job_id
    node_b = _encode(node, "node", _bad_name)
    spec_b = _encode(spec_text, "spec")
    if len(node_b) >= len(meta.node):
        raise OSError(errno.EINVAL, f"node name is too long ({len(node_b)} bytes)")
    if len(spec_b) >= len(meta.spec):
        raise ValueError(f"spec text is too long ({len(spec_b)} bytes)")
    meta.node = node_b
    meta.spec = spec_b
    meta.uid = uid
    meta.gid = gid
    meta.end_time = end_time
    meta.until_min = until_min
    meta.job_mem_mb = job_mem_mb
    c_lend = ffi.new("struct faas_lend *")
    n = len(lend.slurm_cpus)
    c_lend.ncpus = n
    c_lend.slurm_cpus[0:n] = list(lend.slurm_cpus)
    c_lend.os_cpus[0:n] = list(lend.os_cpus)
    c_lend.mem_mb = lend.mem_mb
    err = _err_buf()
    spool_b = os.fsencode(spool)
    if lib.faas_lend_record_write(spool_b, meta, c_lend, _encode(state, "state"), err, _ERR_LEN) != 0:
        _raise_oserror(err)
    return lend_record_path(spool, node, job_id)


def revoke_lend_record(spool: Union[str, os.PathLike], node: str, job_id: int) -> bool:
    """Mark the record revoked (atomically; a second call changes nothing).
    Returns False when there is no record. Raises OSError otherwise."""
    err = _err_buf()
    rc = lib.faas_lend_record_revoke(os.fsencode(spool), _encode(node, "node", _bad_name), job_id, err, _ERR_LEN)
    if rc < 0:
        _raise_oserror(err)
    return rc == 0


# ---------------------------------------------------------------------------
# the job's cpuset, site policy, the job_prolog -> extern step hand-over


def job_cpuset_cpus(root: Union[str, os.PathLike], node: str, uid: int, job_id: int) -> tuple[str, list[int]]:
    """The job's OS CPUs from its cpuset cgroup under root, as the plugin reads
    them: ("v1" | "v2", ids), or ("none", []) when the job is not confined.
    Raises OSError when the cgroup exists but cannot be read or parsed."""
    out = ffi.new("unsigned int[]", MAX_CPUS)
    version = ffi.new("int *")
    err = _err_buf()
    n = lib.faas_cgroup_job_cpus(os.fsencode(root), _encode(node, "node", _bad_name), uid, job_id, out, MAX_CPUS,
                                 version, err, _ERR_LEN)
    if n < 0:
        raise OSError(_msg(err))
    names = {lib.FAAS_CGROUP_NONE: "none", lib.FAAS_CGROUP_V1: "v1", lib.FAAS_CGROUP_V2: "v2"}
    return names[version[0]], list(out[0:n])


def policy_allows(config: Config, partition: str, user: str) -> tuple[bool, str]:
    """May a job of this partition and user lend? (allowed, reason when not)."""
    err = _err_buf()
    ok = lib.faas_policy_allows(_config_to_c(config), _encode(partition, "partition"), _encode(user, "user"), err,
                                _ERR_LEN)
    return bool(ok), "" if ok else _msg(err)


def tasks_estimate(ntasks: Optional[str], nnodes: Optional[str]) -> int:
    """ceil(ntasks / nnodes) from job_prolog's environment text; 0 if unknown."""
    return lib.faas_tasks_estimate(ffi.NULL if ntasks is None else _encode(ntasks, "ntasks"),
                                   ffi.NULL if nnodes is None else _encode(nnodes, "nnodes"))


@dataclass(frozen=True)
class Pending:
    """What job_prolog hands over to the extern step (see faas_core.h)."""

    given: bool
    tasks_on_node: int
    spec: str


def write_pending(spool: Union[str, os.PathLike], node: str, job_id: int, pending: Pending) -> None:
    c = ffi.new("struct faas_pending *")
    c.given = int(pending.given)
    c.tasks_on_node = pending.tasks_on_node
    spec = _encode(pending.spec, "spec")
    if len(spec) >= len(c.spec):
        raise ValueError("spec text is too long")
    c.spec = spec
    err = _err_buf()
    if lib.faas_pending_write(os.fsencode(spool), _encode(node, "node", _bad_name), job_id, c, err, _ERR_LEN) != 0:
        _raise_oserror(err)


def read_pending(spool: Union[str, os.PathLike], node: str, job_id: int) -> Optional[Pending]:
    c = ffi.new("struct faas_pending *")
    err = _err_buf()
    rc = lib.faas_pending_read(os.fsencode(spool), _encode(node, "node", _bad_name), job_id, c, err, _ERR_LEN)
    if rc < 0:
        _raise_oserror(err)
    if rc == 1:
        return None
    return Pending(given=bool(c.given), tasks_on_node=c.tasks_on_node, spec=ffi.string(c.spec).decode())


def remove_pending(spool: Union[str, os.PathLike], node: str, job_id: int) -> bool:
    err = _err_buf()
    rc = lib.faas_pending_remove(os.fsencode(spool), _encode(node, "node", _bad_name), job_id, err, _ERR_LEN)
    if rc < 0:
        _raise_oserror(err)
    return rc == 0


def peek_lend_record(spool: Union[str, os.PathLike], node: str, job_id: int) -> Optional[tuple[int, bool]]:
    """(CPUs lent, still lent?) of a record, None when there is none."""
    n = ffi.new("unsigned int *")
    lent = ffi.new("int *")
    err = _err_buf()
    rc = lib.faas_lend_record_peek(os.fsencode(spool), _encode(node, "node", _bad_name), job_id, n, lent, err,
                                   _ERR_LEN)
    if rc < 0:
        _raise_oserror(err)
    if rc == 1:
        return None
    return int(n[0]), bool(lent[0])
