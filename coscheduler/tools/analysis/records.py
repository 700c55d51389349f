"""The one job record every reader yields, and the bookkeeping of lines it could not read.

All readers (``swf``, ``sacct``, ``jobcomp``) turn their input into ``JobRecord`` values with
the SWF conventions: times in seconds, memory in KB *per allocated processor*, CPU time as
the *average* CPU seconds per allocated processor, and ``None`` where the source has no value
(SWF's ``-1``). Downstream code (``stats``, ``simulate``) never sees a source format.
"""
from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator, Optional


@dataclass(slots=True)
class JobRecord:
    job_id: str
    submit: Optional[float]  # unix seconds (SWF: seconds since the log's UnixStartTime)
    start: Optional[float]  # submit + wait; None when the wait time is missing
    run: Optional[float]  # wall-clock run time, seconds (SWF field 4)
    procs: Optional[int]  # allocated processors / CPUs (SWF field 5)
    cpu_per_proc: Optional[float] = None  # average CPU seconds used per processor (field 6)
    mem_used_kb: Optional[float] = None  # used memory per processor, KB (field 7)
    mem_req_kb: Optional[float] = None  # requested memory per processor, KB (field 10)
    req_time: Optional[float] = None  # requested wall time, seconds (field 9)
    status: Optional[str] = None

    @property
    def end(self) -> Optional[float]:
        if self.start is None or self.run is None:
            return None
        return self.start + self.run


@dataclass
class ParseIssues:
    """Lines a reader could not turn into a job: counted by reason, a few kept as examples."""

    max_examples: int = 5
    count: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[int, str, str]] = field(default_factory=list)  # (line no, reason, text)

    def add(self, lineno: int, reason: str, line: str) -> None:
        self.count += 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if len(self.examples) < self.max_examples:
            self.examples.append((lineno, reason, line.rstrip("\n")[:200]))

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "by_reason": dict(sorted(self.by_reason.items())),
            "examples": [{"line": n, "reason": r, "text": t} for n, r, t in self.examples],
        }


def open_text(path: str | Path) -> IO[str]:
    """Open a trace for reading, transparently gunzipping (detected by magic bytes)."""
    p = Path(path)
    with p.open("rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8", errors="replace")
    return p.open("r", encoding="utf-8", errors="replace")


class TraceReader:
    """Base of the readers: a path (plain or gzip) or an iterable of lines in, ``JobRecord`` out.

    Subclasses implement ``_parse(lines)``; ``issues``, ``lines``, ``jobs`` and ``header``
    fill in as the trace streams by.
    """

    def __init__(self, source: str | Path | Iterable[str]):
        self._source = source
        self.issues = ParseIssues()
        self.lines = 0
        self.jobs = 0
        self.header: dict[str, str] = {}

    def __iter__(self) -> Iterator[JobRecord]:
        if isinstance(self._source, (str, Path)):
            with open_text(self._source) as fh:
                yield from self._parse(fh)
        else:
            yield from self._parse(self._source)

    def _parse(self, lines: Iterable[str]) -> Iterator[JobRecord]:
        raise NotImplementedError
