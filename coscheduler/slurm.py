"""What the co-scheduler asks Slurm, behind one small protocol, with two backends.

``SlurmAccess``: ``jobs()`` (the jobs Slurm knows: state, end time, nodes, user),
``job(id)`` (one job, also one that squeue no longer lists), ``nodes()`` (node totals and
allocations). Backends:

- ``CliBackend``: ``squeue --json`` and ``sinfo --json`` (Slurm 22.05 and later; 22.05
  ignores their filters in JSON mode, so filtering happens here, in Python) and
  ``scontrol -o show job ID`` (one record per line; 22.05 has no ``scontrol --json``).
- ``PyslurmBackend``: the API of pyslurm 25.11 (``pyslurm.Jobs.load()``,
  ``pyslurm.Nodes.load()``), imported only when this backend is made; pyslurm 25.11 runs
  only against Slurm 25.11, so on 22.05 the CLI backend is the one that runs.

``make_backend("auto")`` picks pyslurm when it imports and matches the running Slurm,
the CLI otherwise.

Owns: asking Slurm (squeue/sinfo JSON, scontrol; pyslurm). May not touch: the database, sockets.
"""
from __future__ import annotations

import json
import logging
import re
import subprocess
from dataclasses import dataclass
from typing import Any, Optional, Protocol

log = logging.getLogger("faas.slurm")

# Job states in which a job still holds its allocation (lent capacity may be used).
# COMPLETING is not among them: the batch step has ended, so the lend is over.
ALIVE_STATES = frozenset({"RUNNING", "SUSPENDED", "CONFIGURING"})


class SlurmError(Exception):
    """Slurm could not be asked (command missing, controller down, bad output)."""


@dataclass(frozen=True)
class JobInfo:
    job_id: int
    state: str
    end_time: Optional[float]  # unix seconds; None when Slurm gives none (no limit)
    nodes: str  # Slurm's host list, e.g. "n[1-3]"
    user_id: Optional[int] = None

    @property
    def alive(self) -> bool:
        return self.state in ALIVE_STATES

    @property
    def node_names(self) -> list[str]:
        return expand_hostlist(self.nodes)


@dataclass(frozen=True)
class NodeInfo:
    name: str
    state: str  # lower case, e.g. "idle", "mixed", "allocated", "down"
    cpus: int
    real_memory_mb: int
    alloc_cpus: int
    alloc_memory_mb: int

    @property
    def usable(self) -> bool:
        return not any(w in self.state for w in ("down", "drain", "fail", "unknown", "not_responding"))


class SlurmAccess(Protocol):
    def jobs(self) -> dict[int, JobInfo]: ...

    def job(self, job_id: int) -> Optional[JobInfo]: ...

    def nodes(self) -> dict[str, NodeInfo]: ...


# -- helpers shared by the backends ------------------------------------------------------


def expand_hostlist(hostlist: str) -> list[str]:
    """``n[1-3,5],gpu01`` -> ``["n1", "n2", "n3", "n5", "gpu01"]`` (zero padding kept)."""
    names: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", hostlist or ""):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            if part:
                names.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            if not hi:
                names.append(f"{prefix}{lo}{suffix}")
                continue
            width = len(lo) if lo.startswith("0") else 0
            for i in range(int(lo), int(hi) + 1):
                names.append(f"{prefix}{str(i).zfill(width)}{suffix}")
    return names


def _number(value: Any) -> Optional[float]:
    """22.05 gives plain numbers; later releases give {"set":..,"infinite":..,"number":..}."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if value in (None, 0, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _state(value: Any) -> str:
    if isinstance(value, (list, tuple)):  # 23.02+: a list of flags, the base state first
        return str(value[0]).upper() if value else "UNKNOWN"
    return str(value).upper()


def _run(argv: list[str], timeout_s: float) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmError(f"{argv[0]} failed: {exc}") from None
    if out.returncode != 0:
        raise SlurmError(f"{' '.join(argv)} exited {out.returncode}: {out.stderr.strip()}")
    return out.stdout


# -- the CLI backend ---------------------------------------------------------------------


def _json_list(document: str, key: str, command: str) -> list:
    """The list under ``key`` of what ``command --json`` printed; SlurmError if it is not one."""
    try:
        entries = json.loads(document)[key]
        if not isinstance(entries, list):
            raise TypeError(f"{key} is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise SlurmError(f"{command} --json gave unexpected output: {exc}") from None
    return entries


def parse_squeue_json(document: str) -> dict[int, JobInfo]:
    entries = _json_list(document, "jobs", "squeue")
    jobs: dict[int, JobInfo] = {}
    for entry in entries:
        try:
            job_id = int(entry["job_id"])
        except (KeyError, TypeError, ValueError):
            continue
        uid = entry.get("user_id")
        jobs[job_id] = JobInfo(
            job_id=job_id,
            state=_state(entry.get("job_state", "UNKNOWN")),
            end_time=_number(entry.get("end_time")),
            nodes=str(entry.get("nodes") or ""),
            user_id=int(uid) if isinstance(uid, int) else None,
        )
    return jobs


def parse_sinfo_json(document: str) -> dict[str, NodeInfo]:
    entries = _json_list(document, "nodes", "sinfo")
    nodes: dict[str, NodeInfo] = {}
    for n in entries:
        name = n.get("name")
        if not isinstance(name, str):
            continue
        state = n.get("state", "unknown")
        flags = n.get("state_flags") or []
        if isinstance(state, list):  # 23.02+
            state = "+".join(state)
        state = "+".join([str(state), *map(str, flags)]).lower()
        nodes[name] = NodeInfo(name, state, int(n.get("cpus") or 0), int(n.get("real_memory") or 0),
                               int(n.get("alloc_cpus") or 0), int(n.get("alloc_memory") or 0))
    return nodes


def parse_scontrol_line(line: str) -> dict[str, str]:
    """One ``scontrol -o show ...`` record: ``Key=value`` pairs separated by spaces.

    Values may contain spaces only in a few free-text fields (e.g. ``Reason=``), which run
    up to the next ``Key=``."""
    fields: dict[str, str] = {}
    key = None
    for token in line.strip().split(" "):
        k, sep, v = token.partition("=")
        if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9_:/]*", k):
            key = k
            fields[key] = v
        elif key is not None and token:
            fields[key] += " " + token
    return fields


def _scontrol_time(value: Optional[str]) -> Optional[float]:
    import datetime as dt

    if not value or value in ("Unknown", "None", "N/A"):
        return None
    try:
        return dt.datetime.fromisoformat(value).astimezone().timestamp()  # Slurm prints local time
    except ValueError:
        return None


def job_from_scontrol(fields: dict[str, str]) -> Optional[JobInfo]:
    try:
        job_id = int(fields["JobId"])
    except (KeyError, ValueError):
        return None
    uid = re.search(r"\((\d+)\)", fields.get("UserId", ""))
    nodes = fields.get("NodeList", "")
    return JobInfo(job_id, fields.get("JobState", "UNKNOWN").upper(), _scontrol_time(fields.get("EndTime")),
                   "" if nodes == "(null)" else nodes, int(uid.group(1)) if uid else None)


class CliBackend:
    """squeue/sinfo --json and scontrol -o, with filtering in Python."""

    def __init__(self, squeue: str = "squeue", sinfo: str = "sinfo", scontrol: str = "scontrol",
                 timeout_s: float = 20.0):
        self.squeue, self.sinfo, self.scontrol = squeue, sinfo, scontrol
        self.timeout_s = timeout_s

    def jobs(self) -> dict[int, JobInfo]:
        return parse_squeue_json(_run([self.squeue, "--json"], self.timeout_s))

    def job(self, job_id: int) -> Optional[JobInfo]:
        try:
            out = _run([self.scontrol, "-o", "show", "job", str(int(job_id))], self.timeout_s)
        except SlurmError as exc:
            if "Invalid job id" in str(exc):
                return None  # purged from the controller's memory: long gone
            raise
        for line in out.splitlines():
            info = job_from_scontrol(parse_scontrol_line(line))
            if info is not None and info.job_id == int(job_id):
                return info
        return None

    def nodes(self) -> dict[str, NodeInfo]:
        return parse_sinfo_json(_run([self.sinfo, "--json"], self.timeout_s))


SqueueJSON = CliBackend  # the foundation's name


# -- the pyslurm backend -----------------------------------------------------------------


def job_from_pyslurm(job: Any) -> JobInfo:
    """Map a ``pyslurm.Job`` (25.11: ``id``, ``state``, ``end_time``, ``nodes``, ``user_id``)."""
    end = getattr(job, "end_time", None)
    return JobInfo(int(job.id), _state(getattr(job, "state", "UNKNOWN")), float(end) if end else None,
                   str(getattr(job, "nodes", None) or ""), getattr(job, "user_id", None))


def node_from_pyslurm(node: Any) -> NodeInfo:
    """Map a ``pyslurm.Node`` (25.11: ``name``, ``state``, ``total_cpus``, ``real_memory``,
    ``allocated_cpus``, ``allocated_memory``; memory in MiB)."""
    state = getattr(node, "state", "UNKNOWN")
    if isinstance(state, (list, tuple)):
        state = "+".join(map(str, state))
    return NodeInfo(str(node.name), str(state).lower(), int(getattr(node, "total_cpus", 0) or 0),
                    int(getattr(node, "real_memory", 0) or 0), int(getattr(node, "allocated_cpus", 0) or 0),
                    int(getattr(node, "allocated_memory", 0) or 0))


class PyslurmBackend:
    """The pyslurm 25.11 API; ``module`` is injectable so the mapping is testable anywhere."""

    def __init__(self, module: Any = None):
        if module is None:
            try:
                import pyslurm as module  # type: ignore[import-not-found, no-redef]
            except Exception as exc:  # ImportError, or pyslurm's own "Slurm version mismatch"
                raise SlurmError(f"pyslurm is not usable here: {exc}") from None
        self.pyslurm = module

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # pyslurm raises RPCError and others
            raise SlurmError(f"pyslurm {what} failed: {exc}") from None

    def jobs(self) -> dict[int, JobInfo]:
        loaded = self._call("Jobs.load", self.pyslurm.Jobs.load)
        return {int(j.id): job_from_pyslurm(j) for j in loaded.values()}

    def job(self, job_id: int) -> Optional[JobInfo]:
        try:
            return job_from_pyslurm(self.pyslurm.Job.load(int(job_id)))
        except Exception as exc:
            if "Invalid job id" in str(exc) or type(exc).__name__ == "RPCError" and "job id" in str(exc).lower():
                return None
            raise SlurmError(f"pyslurm Job.load failed: {exc}") from None

    def nodes(self) -> dict[str, NodeInfo]:
        loaded = self._call("Nodes.load", self.pyslurm.Nodes.load)
        return {str(n.name): node_from_pyslurm(n) for n in loaded.values()}


def make_backend(kind: str = "auto") -> SlurmAccess:
    if kind == "cli":
        return CliBackend()
    if kind == "pyslurm":
        return PyslurmBackend()
    try:
        backend = PyslurmBackend()
    except SlurmError as exc:
        log.info("Slurm access through squeue/sinfo --json and scontrol (%s)", exc)
        return CliBackend()
    log.info("Slurm access through pyslurm")
    return backend
