"""Trace analysis for ``faas-admin analyze``: how much a cluster leaves idle, and how much
slurm-faas would recover.

- ``records``: the one ``JobRecord`` all readers yield, and malformed-line bookkeeping;
- ``swf``: Standard Workload Format (Parallel Workloads Archive) reader;
- ``sacct``: ``sacct --parsable2`` and jobcomp/filetxt readers;
- ``stats``: streaming utilisation, duration and idle-period statistics;
- ``simulate``: trace replay that backfills functions with ``coscheduler.scheduler.place``;
- ``report``: text, JSON, PNG and HTML output.

Definitions of every figure: ``stats`` module docstring and docs/analyze.md.
"""
from .records import JobRecord, ParseIssues
from .stats import Analysis, analyze

__all__ = ["Analysis", "JobRecord", "ParseIssues", "analyze"]
