"""faas-admin analyze through click's CliRunner."""
from __future__ import annotations

import json

from click.testing import CliRunner

from coscheduler.cli.admin.analyze import analyze_command as analyze

SWF = """\
; MaxProcs: 8
    1      0   0  1000  4  500.0  100  4  2000  200  1  1 1 1 1 -1 -1 -1
    2     10   5  600  2  600   -1   2  600   -1  1  2 1 1 1 -1 -1 -1
    3     20   0  300  8  30   -1   8  600   -1  1  2 1 1 1 -1 -1 -1
not a job line
"""


def write(tmp_path, text=SWF, name="t.swf"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_help_renders():
    r = CliRunner().invoke(analyze, ["--help"])
    assert r.exit_code == 0
    for opt in ("--format", "--json", "--plots", "--html", "--simulate", "--mix", "--opt-in",
                "--seed", "--sacct"):
        assert opt in r.output


def test_text_summary(tmp_path):
    r = CliRunner().invoke(analyze, [str(write(tmp_path))])
    assert r.exit_code == 0, r.output
    assert "malformed lines: 1" in r.output
    assert "idle periods on 8 processors" in r.output


def test_json_with_simulation(tmp_path):
    r = CliRunner().invoke(analyze, [str(write(tmp_path)), "--json", "--simulate", "--mix", "short",
                                     "--opt-in", "1", "--seed", "3"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["format"] == "swf"
    assert d["parse"]["malformed"]["count"] == 1
    assert d["analysis"]["jobs"] == 3
    sims = d["simulation"]["scenarios"]
    assert sims["walltime_aware"]["simulated"]["completions"] > 0
    assert set(sims) == {"walltime_aware", "walltime_unaware"}


def test_plots_and_html(tmp_path):
    out = tmp_path / "plots"
    html = tmp_path / "r.html"
    r = CliRunner().invoke(analyze, [str(write(tmp_path)), "--simulate", "--plots", str(out),
                                     "--html", str(html)])
    assert r.exit_code == 0, r.output
    assert (out / "utilisation_cdf.png").stat().st_size > 1000
    text = html.read_text()
    assert "data:image/png;base64," in text and "<img" in text and "src=\"http" not in text
    # it opens with the headline table, before the detailed summary
    assert text.index('<table class="headline">') < text.index("<pre>")
    assert "<th>CPU used, share of allocated core-seconds</th>" in text and "placements evicted" in text


def test_errors_are_click_exceptions(tmp_path):
    runner = CliRunner()
    r = runner.invoke(analyze, [])
    assert r.exit_code == 1 and "exactly one" in r.output
    r = runner.invoke(analyze, [str(write(tmp_path, "hello world\n", "x.txt"))])
    assert r.exit_code == 1 and "cannot tell the format" in r.output
    r = runner.invoke(analyze, [str(write(tmp_path, "garbage\n", "y.txt")), "--format", "swf"])
    assert r.exit_code == 1 and "no jobs read" in r.output and "1 malformed" in r.output
    r = runner.invoke(analyze, [str(write(tmp_path)), "--simulate", "--mix", "nope"])
    assert r.exit_code == 1 and "unknown mix" in r.output


def test_jobcomp_autodetect(tmp_path):
    line = ("JobId=3 UserId=root(0) GroupId=root(0) Name=wrap JobState=COMPLETED Partition=debug "
            "TimeLimit=UNLIMITED StartTime=2026-11-28T19:40:01 EndTime=2026-11-28T19:40:02 "
            "NodeList=n1 NodeCnt=1 ProcCnt=1 WorkDir=/ ReservationName= "
            "Tres=cpu=1,mem=1000M,node=1,billing=1 Account= QOS= WcKey= Cluster=unknown "
            "SubmitTime=2026-11-28T19:40:00 EligibleTime=2026-11-28T19:40:00 ArrayJobId=0 "
            "DerivedExitCode=0:0 ExitCode=0:0\n")
    r = CliRunner().invoke(analyze, [str(write(tmp_path, line, "jobcomp.log")), "--json",
                                     "--capacity", "4"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["format"] == "jobcomp" and d["analysis"]["jobs"] == 1
    assert d["analysis"]["idle_periods"]["capacity"] == 4
