"""Streaming reader of the Standard Workload Format (SWF 2.2, Parallel Workloads Archive).

One job per line, 18 whitespace-separated numeric fields, ``-1`` for a missing value;
header lines start with ``;`` (``; Key: value``). The fields this package uses:

====  =========================  ===============================================
 no.  field                      used as
====  =========================  ===============================================
  1   job number                 ``job_id``
  2   submit time (s)            ``submit`` (relative to the header's UnixStartTime)
  3   wait time (s)              ``start = submit + wait``
  4   run time (s)               ``run``: wall-clock time the allocation was held
  5   allocated processors       ``procs``
  6   average CPU time used (s)  ``cpu_per_proc``: CPU seconds *per processor*
  7   used memory (KB)           ``mem_used_kb``: average KB *per processor*
  8   requested processors       not used (allocation is what is lent)
  9   requested time (s)         ``req_time``: the wall time limit the scheduler knows
 10   requested memory (KB)      ``mem_req_kb``: KB *per processor*
 11   status                     ``status`` (1 completed, 0 failed, 5 cancelled, ...)
====  =========================  ===============================================

Any value ``< 0`` is treated as missing (``None``); the format uses ``-1``. A line that does
not have exactly 18 fields, or has a field that is not a number, is *malformed*: it is
counted in ``reader.issues`` (by reason, with the first few line numbers) and skipped. The
reader never raises on a bad line and never holds more than one line in memory.
"""
from __future__ import annotations

from typing import IO, Iterator, Optional

from .records import JobRecord, TraceReader

N_FIELDS = 18


def _opt(v: float) -> Optional[float]:
    return None if v < 0 else v


class SWFReader(TraceReader):
    """Iterate ``JobRecord`` from an SWF file (plain or gzip) or an open text stream.

    After (or during) iteration, ``header`` holds the ``; Key: value`` comments seen,
    ``max_procs`` the machine size from ``MaxProcs`` (or ``MaxNodes``), ``issues`` the
    malformed lines and ``lines`` the number of lines read.
    """


    @property
    def max_procs(self) -> Optional[int]:
        for key in ("MaxProcs", "MaxNodes"):
            raw = self.header.get(key)
            if raw:
                try:
                    return int(raw.split()[0])
                except ValueError:
                    continue
        return None

    @property
    def unix_start_time(self) -> float:
        try:
            return float(self.header.get("UnixStartTime", "0").split()[0])
        except (ValueError, IndexError):
            return 0.0

    def _parse(self, fh: IO[str]) -> Iterator[JobRecord]:
        issues = self.issues
        for lineno, line in enumerate(fh, 1):
            self.lines = lineno
            s = line.strip()
            if not s:
                continue
            if s[0] == ";":
                key, sep, value = s[1:].partition(":")
                if sep and key.strip() and " " not in key.strip():
                    self.header.setdefault(key.strip(), value.strip())
                continue
            parts = s.split()
            if len(parts) != N_FIELDS:
                issues.add(lineno, f"expected {N_FIELDS} fields, got {len(parts)}", line)
                continue
            try:
                f = [float(x) for x in parts[:11]]
            except ValueError:
                issues.add(lineno, "non-numeric field", line)
                continue
            submit, wait, run, procs = f[1], f[2], f[3], f[4]
            submit_o = _opt(submit)
            start = submit + wait if (submit >= 0 and wait >= 0) else None
            self.jobs += 1
            yield JobRecord(
                job_id=parts[0],
                submit=submit_o,
                start=start,
                run=_opt(run),
                procs=int(procs) if procs > 0 else None,
                cpu_per_proc=_opt(f[5]),
                mem_used_kb=_opt(f[6]),
                mem_req_kb=_opt(f[9]) if f[9] > 0 else None,
                req_time=f[8] if f[8] > 0 else None,
                status=parts[10],
            )
