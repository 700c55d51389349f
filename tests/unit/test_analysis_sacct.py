"""sacct --parsable2 and jobcomp/filetxt readers."""
from __future__ import annotations

import pytest

from coscheduler.tools.analysis.sacct import (JobcompReader, SacctReader, parse_duration, parse_mem_kb,
                                        parse_time)

SACCT = """\
JobID|Submit|Start|End|ElapsedRaw|NNodes|NCPUS|TotalCPU|ReqMem|ReqTRES|MaxRSS|NTasks|State|TimelimitRaw
10|2026-01-01T00:00:00|2026-01-01T00:00:10|2026-01-01T01:00:10|3600|1|4|02:00:00|4G|billing=4,cpu=4,mem=4G,node=1|||COMPLETED|120
10.batch|2026-01-01T00:00:10|2026-01-01T00:00:10|2026-01-01T01:00:10|3600|1|4|01:00:00|||1048576K|1|COMPLETED|
10.0|2026-01-01T00:00:12|2026-01-01T00:00:12|2026-01-01T01:00:00|3588|1|4|01:00:00|||262144K|2|COMPLETED|
11|2026-01-01T00:05:00|Unknown|Unknown|0|1|2|00:00:00|1000Mc||||PENDING|60
12|2026-01-01T00:06:00|2026-01-01T00:07:00|2026-01-01T00:17:00|600|2|8|1-00:00:00|2Gn||||CANCELLED by 0|UNLIMITED
broken|line
13|2026-01-01T00:08:00|not-a-date|2026-01-01T00:17:00|600|1|1|00:01.500|||||COMPLETED|10
"""


def test_parsers():
    assert parse_duration("1-02:03:04") == 86400 + 2 * 3600 + 3 * 60 + 4
    assert parse_duration("05:06.250") == 306.25
    assert parse_duration("UNLIMITED") is None
    assert parse_mem_kb("4G") == 4 * 1024**2 and parse_mem_kb("512") == 512 * 1024
    assert parse_time("2026-01-01T00:00:00") == 1767225600.0
    assert parse_time("Unknown") is None


def test_sacct_folds_steps_and_counts_bad_lines():
    r = SacctReader(SACCT.splitlines(keepends=True))
    jobs = {j.job_id: j for j in r}
    assert set(jobs) == {"10", "11", "12"}
    j = jobs["10"]
    assert j.run == 3600 and j.procs == 4 and j.start == parse_time("2026-01-01T00:00:10")
    assert j.cpu_per_proc == pytest.approx(7200 / 4)  # the job line's TotalCPU
    assert j.mem_req_kb == pytest.approx(4 * 1024**2 / 4)  # mem= of ReqTRES, per CPU
    assert j.mem_used_kb == pytest.approx(1048576 / 4)  # max(1 GiB x 1, 256 MiB x 2) per CPU
    assert j.req_time == 7200 and j.status == "COMPLETED"
    assert jobs["11"].run is None and jobs["11"].start is None
    j12 = jobs["12"]
    assert j12.mem_req_kb == pytest.approx(2 * 2 * 1024**2 / 8)  # 2G per node x 2 nodes / 8 CPUs
    assert j12.req_time is None and j12.status == "CANCELLED"
    assert r.issues.count == 2
    assert set(r.issues.by_reason) == {"expected 14 fields, got 2",
                                       "unreadable value (Invalid isoformat string: 'not-a-date')"}


JOBCOMP = """\
JobId=3 UserId=root(0) GroupId=root(0) Name=wrap JobState=COMPLETED Partition=debug TimeLimit=UNLIMITED StartTime=2026-11-28T19:40:01 EndTime=2026-11-28T19:40:02 NodeList=n1 NodeCnt=1 ProcCnt=1 WorkDir=/ ReservationName= Tres=cpu=1,mem=1000M,node=1,billing=1 Account= QOS= WcKey= Cluster=unknown SubmitTime=2026-11-28T19:40:00 EligibleTime=2026-11-28T19:40:00 ArrayJobId=0 DerivedExitCode=0:0 ExitCode=0:0
JobId=4 UserId=u(1000) GroupId=u(1000) Name=my job JobState=TIMEOUT Partition=debug TimeLimit=10 StartTime=2026-11-28T19:41:00 EndTime=2026-11-28T19:51:00 NodeList=n[1-2] NodeCnt=2 ProcCnt=4 WorkDir=/home/u ReservationName= Tres=cpu=4,mem=8G,node=2 Account= QOS= WcKey= Cluster=c SubmitTime=2026-11-28T19:40:30 EligibleTime=2026-11-28T19:40:30 ArrayJobId=0 DerivedExitCode=0:0 ExitCode=0:1
garbage without fields
JobId=5 StartTime=yesterday EndTime=2026-11-28T19:51:00 ProcCnt=1
"""


def test_jobcomp():
    r = JobcompReader(JOBCOMP.splitlines(keepends=True))
    jobs = list(r)
    assert [j.job_id for j in jobs] == ["3", "4"]
    a, b = jobs
    assert (a.run, a.procs, a.req_time, a.status) == (1.0, 1, None, "COMPLETED")
    assert a.mem_req_kb == 1000 * 1024 and a.cpu_per_proc is None
    assert (b.run, b.procs, b.req_time) == (600.0, 4, 600.0)
    assert b.mem_req_kb == pytest.approx(8 * 1024**2 / 4)
    assert b.submit == parse_time("2026-11-28T19:40:30")
    assert r.issues.count == 2
