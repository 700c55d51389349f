"""Streaming readers of Slurm accounting: ``sacct --parsable2`` and the jobcomp/filetxt log.

Both yield ``records.JobRecord`` with the SWF conventions (per-processor CPU seconds and KB).

sacct ``--parsable2`` (``-P``)
    A header line of ``|``-separated field names, then one line per job and per step. The
    reader recognises (case-insensitively) ``JobID``, ``JobIDRaw``, ``Submit``, ``Start``,
    ``End``, ``Elapsed``/``ElapsedRaw``, ``NCPUS``/``AllocCPUS``, ``TotalCPU``/``TotalCPURaw``,
    ``ReqMem``, ``ReqTRES``/``AllocTRES``, ``MaxRSS``, ``NTasks``, ``State``,
    ``Timelimit``/``TimelimitRaw``; other fields are ignored, missing ones are ``None``.
    Steps (``123.batch``, ``123.0``) follow their job in sacct's output and are folded into
    it: CPU time is the job line's ``TotalCPU`` (sacct sums the steps), or the steps' sum if
    the job line has none; used memory is the largest ``MaxRSS x NTasks`` of any step (MaxRSS
    is the largest task's RSS, so this is an upper estimate of the step's total); requested
    memory comes from ``mem=`` in AllocTRES/ReqTRES (the job total), else ``ReqMem``
    (suffix ``n`` per node, ``c`` per CPU, none: per node as printed by Slurm >= 21.08).
    Recommended call (``faas-admin analyze --sacct`` runs it)::

        sacct -a -P -S <start> -o JobID,Submit,Start,End,ElapsedRaw,NNodes,NCPUS,TotalCPU,
              ReqMem,ReqTRES,MaxRSS,NTasks,State,TimelimitRaw

jobcomp/filetxt
    One ``Key=value`` line per finished job (``JobId=3 ... StartTime=... EndTime=...
    ProcCnt=1 TimeLimit=UNLIMITED Tres=cpu=1,mem=1000M,node=1 SubmitTime=...``). It carries
    no CPU time or used memory, so only durations, requested memory and idle periods come
    out of it.

Timestamps without a zone are read as UTC (only differences matter to the analysis).
A line with the wrong number of fields, or an unreadable Start/End/CPU count, is counted in
``issues`` and skipped, never raised.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Iterable, Iterator, Optional

from .records import JobRecord, TraceReader

_MEM_UNITS_KB = {"K": 1.0, "M": 1024.0, "G": 1024.0**2, "T": 1024.0**3, "P": 1024.0**4}
_UNSET = {"", "unknown", "none", "n/a", "invalid"}


def parse_time(s: str) -> Optional[float]:
    """``2026-11-28T19:40:01`` (or a unix timestamp) -> unix seconds; unset -> None."""
    s = s.strip()
    if s.lower() in _UNSET:
        return None
    if s.isdigit():
        return float(s)
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def parse_duration(s: str) -> Optional[float]:
    """Slurm durations ``[D-][HH:]MM:SS[.mmm]`` or ``MM:SS.mmm`` -> seconds; unset -> None."""
    s = s.strip()
    if s.lower() in _UNSET or s.upper() in ("UNLIMITED", "PARTITION_LIMIT"):
        return None
    days = 0.0
    if "-" in s:
        d, s = s.split("-", 1)
        days = float(d)
    parts = [float(p) for p in s.split(":")]
    if len(parts) > 3 or not parts:
        raise ValueError(f"bad duration {s!r}")
    secs = 0.0
    for p in parts:
        secs = secs * 60 + p
    if len(parts) == 1 and days:  # "D-HH"
        secs *= 3600
    return days * 86400 + secs


def parse_mem_kb(s: str) -> Optional[float]:
    """``4000M``, ``1.5G``, ``123456K``, ``512`` (MB, Slurm's default unit) -> KB."""
    s = s.strip()
    if not s or s.lower() in _UNSET:
        return None
    unit = s[-1].upper()
    if unit in _MEM_UNITS_KB:
        return float(s[:-1]) * _MEM_UNITS_KB[unit]
    return float(s) * 1024.0


def _tres_mem_kb(tres: str) -> Optional[float]:
    for item in tres.split(","):
        k, _, v = item.partition("=")
        if k.strip() == "mem" and v:
            return parse_mem_kb(v)
    return None


class _Fold:
    """One job and its steps, being folded into a JobRecord."""

    __slots__ = ("base", "job", "step_cpu", "used_kb_total", "ncpus", "nnodes", "req_total_kb")

    def __init__(self, base: str):
        self.base = base
        self.job: Optional[dict[str, str]] = None
        self.step_cpu = 0.0
        self.used_kb_total: Optional[float] = None
        self.ncpus: Optional[int] = None
        self.nnodes: Optional[int] = None
        self.req_total_kb: Optional[float] = None


class SacctReader(TraceReader):
    """Iterate ``JobRecord`` from ``sacct --parsable2`` text (file path or line iterable)."""

    max_procs: Optional[int] = None  # accounting does not know the cluster size

    def _parse(self, lines: Iterable[str]) -> Iterator[JobRecord]:
        names: Optional[list[str]] = None
        fold: Optional[_Fold] = None
        for lineno, line in enumerate(lines, 1):
            self.lines = lineno
            s = line.rstrip("\r\n")
            if not s.strip():
                continue
            parts = s.split("|")
            if names is None:
                names = [p.strip().lower() for p in parts]
                if "jobid" not in names and "jobidraw" not in names:
                    self.issues.add(lineno, "no JobID column in header", line)
                    return
                continue
            if len(parts) != len(names):
                self.issues.add(lineno, f"expected {len(names)} fields, got {len(parts)}", line)
                continue
            row = dict(zip(names, parts))
            jid = row.get("jobid") or row.get("jobidraw") or ""
            base, dot, _step = jid.partition(".")
            if fold is not None and base != fold.base:
                rec = self._finish(fold)
                if rec is not None:
                    yield rec
                fold = None
            if fold is None:
                fold = _Fold(base)
            try:
                self._add(fold, row, is_step=bool(dot), lineno=lineno)
            except ValueError as exc:
                self.issues.add(lineno, f"unreadable value ({exc})", line)
        if fold is not None:
            rec = self._finish(fold)
            if rec is not None:
                yield rec

    def _add(self, fold: _Fold, row: dict[str, str], is_step: bool, lineno: int) -> None:
        ncpus_s = row.get("ncpus") or row.get("alloccpus") or ""
        ncpus = int(ncpus_s) if ncpus_s.strip() else None
        nnodes_s = row.get("nnodes") or ""
        nnodes = int(nnodes_s) if nnodes_s.strip() else None
        if not is_step:
            for k in ("start", "end", "submit"):
                if k in row:
                    parse_time(row[k])  # validate now so a bad line is counted
            fold.job = row
            fold.ncpus, fold.nnodes = ncpus, nnodes
            req = None
            for k in ("alloctres", "reqtres"):
                if row.get(k):
                    req = _tres_mem_kb(row[k])
                    if req is not None:
                        break
            if req is None and row.get("reqmem", "").strip():
                rm = row["reqmem"].strip()
                per = rm[-1].lower()
                if per in ("n", "c"):
                    rm = rm[:-1]
                kb = parse_mem_kb(rm)
                if kb is not None:
                    mult = (ncpus or 1) if per == "c" else (nnodes or 1)
                    req = kb * mult
            fold.req_total_kb = req
            return
        cpu = _cpu_seconds(row)
        if cpu is not None:
            fold.step_cpu += cpu
        rss = parse_mem_kb(row.get("maxrss", ""))
        if rss is not None:
            ntasks_s = row.get("ntasks", "").strip()
            used = rss * (int(ntasks_s) if ntasks_s.isdigit() else 1)
            if fold.used_kb_total is None or used > fold.used_kb_total:
                fold.used_kb_total = used

    def _finish(self, fold: _Fold) -> Optional[JobRecord]:
        row = fold.job
        if row is None:  # steps whose job line was not selected: nothing to attribute
            return None
        start = parse_time(row.get("start", ""))
        end = parse_time(row.get("end", ""))
        run: Optional[float] = None
        if row.get("elapsedraw", "").strip().isdigit():
            run = float(row["elapsedraw"])
        elif row.get("elapsed", "").strip():
            run = parse_duration(row["elapsed"])
        elif start is not None and end is not None:
            run = max(0.0, end - start)
        if start is None:
            run = None
        procs = fold.ncpus if fold.ncpus and fold.ncpus > 0 else None
        cpu_total = _cpu_seconds(row)
        if cpu_total is None and fold.step_cpu > 0:
            cpu_total = fold.step_cpu
        req_time = None
        if row.get("timelimitraw", "").strip().isdigit():
            req_time = float(row["timelimitraw"]) * 60
        elif row.get("timelimit", "").strip():
            try:
                req_time = parse_duration(row["timelimit"])
            except ValueError:
                req_time = None
        self.jobs += 1
        per = float(procs) if procs else None
        return JobRecord(
            job_id=fold.base,
            submit=parse_time(row.get("submit", "")) if "submit" in row else None,
            start=start,
            run=run,
            procs=procs,
            cpu_per_proc=cpu_total / per if (cpu_total is not None and per) else None,
            mem_used_kb=fold.used_kb_total / per if (fold.used_kb_total is not None and per) else None,
            mem_req_kb=fold.req_total_kb / per if (fold.req_total_kb and per) else None,
            req_time=req_time if req_time else None,
            status=(row.get("state") or "").split(" ")[0] or None,
        )


def _cpu_seconds(row: dict[str, str]) -> Optional[float]:
    raw = row.get("totalcpuraw", "").strip()  # not a real sacct field everywhere; accept it
    if raw:
        return float(raw)
    s = row.get("totalcpu", "").strip()
    return parse_duration(s) if s else None


_KV_SPLIT = re.compile(r"\s+(?=[A-Za-z][A-Za-z]*=)")


class JobcompReader(TraceReader):
    """Iterate ``JobRecord`` from a jobcomp/filetxt log (one ``Key=value`` line per job)."""

    max_procs: Optional[int] = None  # accounting does not know the cluster size

    def _parse(self, lines: Iterable[str]) -> Iterator[JobRecord]:
        for lineno, line in enumerate(lines, 1):
            self.lines = lineno
            s = line.strip()
            if not s:
                continue
            kv: dict[str, str] = {}
            for item in _KV_SPLIT.split(s):
                k, sep, v = item.partition("=")
                if sep:
                    kv[k] = v
            if "JobId" not in kv or "StartTime" not in kv or "EndTime" not in kv:
                self.issues.add(lineno, "missing JobId/StartTime/EndTime", line)
                continue
            try:
                start = parse_time(kv["StartTime"])
                end = parse_time(kv["EndTime"])
                procs_s = kv.get("ProcCnt", "")
                procs = int(procs_s) if procs_s.strip() else None
                tl = kv.get("TimeLimit", "").strip()
                if tl.isdigit():
                    req_time: Optional[float] = float(tl) * 60
                else:
                    req_time = parse_duration(tl) if tl else None
                mem_total = _tres_mem_kb(kv.get("Tres", ""))
                submit = parse_time(kv["SubmitTime"]) if kv.get("SubmitTime") else None
            except ValueError as exc:
                self.issues.add(lineno, f"unreadable value ({exc})", line)
                continue
            run = max(0.0, end - start) if (start is not None and end is not None) else None
            self.jobs += 1
            yield JobRecord(
                job_id=kv["JobId"],
                submit=submit,
                start=start,
                run=run,
                procs=procs if procs and procs > 0 else None,
                mem_req_kb=mem_total / procs if (mem_total and procs) else None,
                req_time=req_time or None,
                status=kv.get("JobState"),
            )
