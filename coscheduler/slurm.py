"""What the co-scheduler asks Slurm, behind one small protocol.

``SlurmAccess.jobs()`` returns the jobs Slurm currently knows with their state and end
time. The backend here uses ``squeue --json``, which works on Slurm 22.05 and later
(22.05 ignores squeue's filters in JSON mode, so filtering happens in Python). A pyslurm
backend (pyslurm 25.11 matches only Slurm 25.11) can implement the same protocol.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Optional, Protocol

# Job states in which a job still holds its allocation (lent capacity may be used).
ALIVE_STATES = frozenset({"RUNNING", "SUSPENDED", "CONFIGURING"})


class SlurmError(Exception):
    """Slurm could not be asked (command missing, controller down, bad output)."""


@dataclass(frozen=True)
class JobInfo:
    job_id: int
    state: str
    end_time: Optional[float]  # unix seconds; None when Slurm gives none (no limit)
    nodes: str

    @property
    def alive(self) -> bool:
        return self.state in ALIVE_STATES


class SlurmAccess(Protocol):
    def jobs(self) -> dict[int, JobInfo]: ...


def _number(value) -> Optional[float]:
    """22.05 gives plain numbers; later releases give {"set":..,"infinite":..,"number":..}."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if value in (None, 0):
        return None
    return float(value)


def _state(value) -> str:
    if isinstance(value, list):  # 23.02+: a list of flags
        return value[0] if value else "UNKNOWN"
    return str(value)


class SqueueJSON:
    """The squeue --json backend."""

    def __init__(self, squeue: str = "squeue", timeout_s: float = 20.0):
        self.squeue = squeue
        self.timeout_s = timeout_s

    def jobs(self) -> dict[int, JobInfo]:
        try:
            out = subprocess.run([self.squeue, "--json"], capture_output=True, text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmError(f"squeue failed: {exc}") from None
        if out.returncode != 0:
            raise SlurmError(f"squeue --json exited {out.returncode}: {out.stderr.strip()}")
        return parse_squeue_json(out.stdout)


def parse_squeue_json(document: str) -> dict[int, JobInfo]:
    try:
        data = json.loads(document)
        entries = data["jobs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SlurmError(f"squeue --json gave unexpected output: {exc}") from None
    jobs: dict[int, JobInfo] = {}
    for entry in entries:
        try:
            job_id = int(entry["job_id"])
        except (KeyError, TypeError, ValueError):
            continue
        jobs[job_id] = JobInfo(
            job_id=job_id,
            state=_state(entry.get("job_state", "UNKNOWN")),
            end_time=_number(entry.get("end_time")),
            nodes=str(entry.get("nodes", "")),
        )
    return jobs
