"""The docs match the CLI: every command shown in a code block of README.md and docs/*.md
that starts with submit-function, faas-admin, sbatch, squeue, sacct or `scontrol show` is run
on the session's dev cluster (as root, in a temporary directory holding the files the docs
name), exactly as written except for the placeholders in PLACEHOLDERS, and must exit 0 with
output of the shape the docs describe. A command that cannot run here is in EXCLUDED with
the reason; a command in neither table fails test_every_doc_command_is_run_or_excluded.
"""
from __future__ import annotations

import gzip
import json
import random
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tests.conftest import missing

from .helpers import run, wait_until

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROGRAMS = ("submit-function", "faas-admin", "sbatch", "squeue", "sacct", "scontrol show")
STATES = ("QUEUED", "DISPATCHED", "RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED", "EVICTED")


# -- finding the commands ---------------------------------------------------------------

@dataclass(frozen=True)
class DocCommand:
    file: str      # relative to the repository
    line: int
    text: str      # the command as written, without prompt and trailing comment

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def strip_comment(line: str) -> str:
    """The line without a shell comment (a `#` outside quotes that starts a word)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _mentions_program(text: str) -> bool:
    """Whether a command (or one part of a pipeline, list or $(...)) runs one of PROGRAMS."""
    for part in re.split(r"\s\|\s|&&|\|\||;|\$\(", text):
        part = part.strip().lstrip("\"'")
        for prog in PROGRAMS:
            if re.match(rf"{re.escape(prog)}(\s|\||$)", part):
                return True
    return False


def code_lines(path: Path):
    """(line number, text) of every line in a code block: fenced (relative to the fence's
    indentation; in console blocks only `$ ` prompt lines, the rest is output) or indented."""
    lines = path.read_text().splitlines()
    fence: Optional[tuple[str, int, str]] = None   # (marker, indent, language)
    prev_blank = True
    for no, line in enumerate(lines, 1):
        m = re.match(r"^(\s*)(```+|~~~+)\s*(\S*)", line)
        if m:
            if fence is None:
                fence = (m.group(2)[:3], len(m.group(1)), m.group(3).lower())
            elif m.group(2).startswith(fence[0]):
                fence = None
            prev_blank = False
            continue
        if fence is not None:
            text = line[fence[1]:] if line[:fence[1]].strip() == "" else line.lstrip()
            if fence[2] == "console":
                if not text.startswith("$ "):
                    continue
                text = text[2:]
            yield no, text
        elif re.match(r"^ {4,}\S", line) and prev_blank:
            yield no, line[4:]
            continue   # an indented block goes on while lines stay indented
        prev_blank = line.strip() == ""


def doc_commands() -> list[DocCommand]:
    found = []
    for path in DOC_FILES:
        pending: list[tuple[int, str]] = []
        for no, text in code_lines(path):
            pending.append((no, text))
            if text.rstrip().endswith("\\"):
                continue   # a continued line: join it with the next
            first = pending[0][0]
            joined = " ".join(t.rstrip().rstrip("\\").rstrip() if i == 0 else t.strip().rstrip("\\").rstrip()
                              for i, (_, t) in enumerate(pending))
            pending = []
            command = strip_comment(joined)
            if command and not command[0].isspace() and _mentions_program(command):
                found.append(DocCommand(str(path.relative_to(REPO)), first, command))
    return found


# -- what the docs name, made real ----------------------------------------------------------

# Doc placeholder -> how this test fills it (applied in Step.shell). Files the docs name
# (./fns, job.sh, big.json, in.jsonl, TRACE.swf.gz, jobs.txt, ~/fn/code) are created in the
# working directory by make_workdir() and are not substituted.
PLACEHOLDERS: dict[str, str] = {
    "7 (README: status 7)": "the invocation id README's `invoke hello ... --wait` prints (stderr: invocation N ...)",
    "NAME": "hello, the function README registers (mymod:handler in ./fns)",
    "ID": "the id `invoke NAME --payload @big.json` prints (after waiting for it to end)",
    "100-199 250": "FIRST-LAST of the ids `invoke NAME --batch in.jsonl` printed, and ID",
    "generate": "printf '{\"x\": 2}\\n' (a program printing a JSON payload)",
    "~ (HOME)": "HOME is the test's own directory, holding fn/code/mymod.py",
    "TRACE.swf.gz": "a 300-job SWF trace written by the test (gzip)",
    "jobs.txt": "`sacct -a --parsable2` of the dev cluster, with the fields analyze --sacct asks for",
    "faas-admin dev-cluster env": "run with FAAS_DEV_CLUSTER_DIR=<the session's cluster> and without its variables",
    "install-node / install-head": "--root <temp dir> (docs/operations.md: `--root DIR` installs into a node image); "
                                   "install-node also --without-plugin: its plugin step ignores --root "
                                   "(the plugin is installed by the install-plugin line, into temp dirs)",
    "[--plugin-dir DIR] [--plugstack-dir DIR]": "--plugin-dir <temp dir> --plugstack-dir <temp dir> (absolute)",
    "spool=/var/spool/slurm-faas ... (spank_faas(8) synopsis)": "spool=<the dev cluster's spool> (root's, 0700)",
    "/etc/slurm-faas/coscheduler.toml (faas-admin db)": "a coscheduler.toml in the working directory naming a new "
                                                        "SQLite database (the dev cluster's is in use)",
}

# Commands found in the docs that are not run here, and why.
EXCLUDED: dict[str, str] = {
    "faas-admin dev-cluster up":
        "starts the dev cluster itself: the session's `cluster` fixture is that cluster (DevCluster.up); "
        "a second cluster does not fit this machine",
    "faas-admin dev-cluster down":
        "stops the dev cluster every other test of the session uses (the fixture's teardown runs it)",
    "sbatch|salloc|srun --faas-share[=SPEC] ...":
        "a synopsis (alternatives and `...`), not a command; README's sbatch --faas-share=... runs",
}


@dataclass
class Ctx:
    cluster: object
    work: Path
    env: dict[str, str]
    values: dict = field(default_factory=dict)


@dataclass
class Step:
    doc: str                                           # the command as the docs write it
    check: Callable[[subprocess.CompletedProcess, Ctx], None]
    shell: Callable[[str, Ctx], str] = lambda text, ctx: text   # placeholders filled
    before: Optional[Callable[[Ctx], None]] = None     # what must hold before it runs
    exit_code: int = 0
    needs_accounting: bool = False


def _inv_ids(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"invocation (\d+)\b", text)]


def _one_id(out: subprocess.CompletedProcess) -> int:
    assert re.fullmatch(r"\d+\n", out.stdout), f"expected one invocation id, got {out.stdout!r}"
    return int(out.stdout)


def cli(ctx: Ctx, *argv: str) -> subprocess.CompletedProcess:
    """A command the test runs between documented ones (as the user would, in the work dir)."""
    return subprocess.run(list(argv), capture_output=True, text=True, env=ctx.env, cwd=ctx.work, check=True,
                          timeout=300)


def _wait(ctx: Ctx, *ids: int) -> None:
    cli(ctx, "submit-function", "wait", "--timeout", "240", *map(str, ids))


def _result(ctx: Ctx, inv: int):
    return json.loads(cli(ctx, "submit-function", "result", str(inv)).stdout)


# -- checks, one per documented command ---------------------------------------------------

def check_env(out, ctx):
    got = out.stdout.split("\n")[-4:-1]
    env = ctx.cluster.env()
    assert got == [env["SLURM_CONF"], env["FAAS_COSCHEDULER"], env["FAAS_MUNGE_SOCKET"]], out.stdout


def check_sbatch(out, ctx):
    m = re.fullmatch(r"Submitted batch job (\d+)\n", out.stdout)
    assert m, out.stdout
    ctx.values["job"] = int(m.group(1))


def check_register_hello(out, ctx):
    assert re.fullmatch(r"registered hello \(id \d+\)\n", out.stdout), out.stdout


def check_invoke_wait_readme(out, ctx):
    assert json.loads(out.stdout) == {"x": 1}   # "prints the return value (JSON)"
    ids = set(_inv_ids(out.stderr))
    assert len(ids) == 1, out.stderr
    ctx.values["readme_id"] = ids.pop()


def check_status_history(out, ctx):
    lines = out.stdout.splitlines()
    assert lines[0] == "SUCCEEDED", out.stdout
    history = [ln.split()[1] for ln in lines if re.match(r"\s+\d{4}-\d\d-\d\dT", ln)]
    assert history[0] == "QUEUED" and history[-1] == "SUCCEEDED" and "RUNNING" in history, out.stdout
    assert {"DISPATCHED", "RUNNING"} <= set(history)   # "QUEUED, DISPATCHED, RUNNING, ..."


def check_slots(out, ctx):
    header, *rows = out.stdout.splitlines()
    assert header.split()[:3] == ["NODE", "JOB", "STATE"], out.stdout
    mine = [r for r in rows if r.split()[1:2] == [str(ctx.values["job"])]]
    assert mine and "ACTIVE" in mine[0] and " 4096 " in mine[0], out.stdout   # cores=4,mem=4G


def check_invoke_wait_name(out, ctx):
    assert json.loads(out.stdout) == {"x": 1}


def check_invoke_file(out, ctx):
    ctx.values["id"] = _one_id(out)
    _wait(ctx, ctx.values["id"])
    size = (ctx.work / "big.json").stat().st_size
    assert _result(ctx, ctx.values["id"]) == {"bytes": size - 1}   # the file's JSON, without its newline


def check_invoke_stdin(out, ctx):
    inv = _one_id(out)
    _wait(ctx, inv)
    assert _result(ctx, inv) == {"x": 2}


def check_status(out, ctx):
    lines = out.stdout.splitlines()
    assert lines[0] == "SUCCEEDED", out.stdout
    assert any(re.search(rf"output: \d+ bytes \(submit-function output {ctx.values['id']}\)", ln)
               for ln in lines), out.stdout


def check_output(out, ctx):
    assert "mymod.handler got" in out.stdout, out.stdout


def check_result(out, ctx):
    assert json.loads(out.stdout) == {"bytes": (ctx.values["work"] / "big.json").stat().st_size - 1}


def check_batch(out, ctx):
    doc = json.loads(out.stdout)   # "ids, states and values"
    ids = doc["invocation_ids"]
    assert len(ids) == 3 and [i["invocation_id"] for i in doc["invocations"]] == ids, doc
    assert [(i["state"], i["result"]) for i in doc["invocations"]] == [("SUCCEEDED", {"n": n}) for n in (1, 2, 3)]
    ctx.values["batch"] = ids


def check_result_many(out, ctx):
    rows = [json.loads(ln) for ln in out.stdout.splitlines()]   # one JSON line per invocation
    first, last = min(ctx.values["batch"]), max(ctx.values["batch"])
    assert [r["invocation_id"] for r in rows] == [*range(first, last + 1), ctx.values["id"]], out.stdout
    assert all(r["state"] == "SUCCEEDED" for r in rows)


def check_result_function(out, ctx):
    rows = json.loads(out.stdout)    # one list, oldest first
    ids = [r["invocation_id"] for r in rows]
    assert ids == sorted(ids) and {ctx.values["readme_id"], ctx.values["id"], *ctx.values["batch"]} <= set(ids)


def check_register_vendored(out, ctx):
    assert re.fullmatch(r"registered hello \(id \d+\)\n", out.stdout), out.stdout
    shown = json.loads(cli(ctx, "submit-function", "show", "hello", "-o", "json").stdout)
    assert shown["code_dir"] == str(ctx.work / "home/fn/code")   # ~ expanded, made absolute


def build_echo(ctx):
    """docs/functions.md's echo.c, built with the command in its first line."""
    text = (REPO / "docs/functions.md").read_text()
    src = re.search(r"```c\n(/\* echo\.c: (.*?) \*/\n.*?)```", text, re.S)
    assert src, "the echo.c example of docs/functions.md"
    (ctx.work / "fns/echo.c").write_text(src.group(1))
    cmd = src.group(2).replace("<slurm-faas>", str(REPO))
    subprocess.run(cmd, shell=True, cwd=ctx.work / "fns", check=True, capture_output=True)


def check_register_echo(out, ctx):
    assert re.fullmatch(r"registered echo \(id \d+\)\n", out.stdout), out.stdout
    got = cli(ctx, "submit-function", "invoke", "echo", "--payload", '{"n": 3}', "--wait",
              "--wait-timeout", "240")
    assert json.loads(got.stdout) == {"n": 3}


def _summary_patterns(simulate: bool) -> list[tuple[re.Pattern, bool]]:
    """The shape of `analyze`'s text summary, from the first one docs/analyze.md shows:
    each line with its numbers (and units) generalised; (pattern, optional)."""
    text = (REPO / "docs/analyze.md").read_text()
    block = re.search(r"```\n(source: .*?)```", text, re.S).group(1).splitlines()
    if not simulate:
        block = block[:next(i for i, ln in enumerate(block) if ln.startswith("simulation:"))]
    num = r"(?:n/a|x?[0-9][0-9.e+-]*(?: ?(?:s|min|h|d)\b)?)"
    pats = []
    for ln in block:
        if not ln.strip():
            continue
        if ln.startswith("source: "):
            pats.append((re.compile(r"source: \S+ \(\w+\)"), False))
            continue
        if ln.startswith("jobs missing a field"):
            pats.append((re.compile(re.escape(ln.split(":")[0]) + r": .*"), True))
            continue
        parts = re.split(r"(n/a|x?[0-9][0-9.e+-]*(?: ?(?:s|min|h|d)\b)?)", ln)
        regex = "".join(num if i % 2 else re.escape(p) for i, p in enumerate(parts))
        pats.append((re.compile(regex), ln.strip().startswith("note:")))
    return pats


def _check_summary(stdout: str, simulate: bool) -> None:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    i = 0
    for pat, optional in _summary_patterns(simulate):
        if i < len(lines) and pat.fullmatch(lines[i]):
            i += 1
        elif not optional:
            raise AssertionError(f"analyze's summary lacks a line like {pat.pattern!r} at line {i + 1}:\n{stdout}")
    assert i == len(lines), f"analyze printed lines the docs do not show:\n{stdout}"


def check_analyze_text(out, ctx):
    _check_summary(out.stdout, simulate=False)
    assert "lines read: 301, jobs: 300, malformed lines: 0" in out.stdout


def check_analyze_sacct_file(out, ctx):
    doc = json.loads((ctx.work / "report.json").read_text())
    assert doc["format"] == "sacct" and doc["parse"]["malformed"]["count"] == 0, doc["parse"]
    assert doc["parse"]["jobs"] >= 1


def check_analyze_sacct_html(out, ctx):
    assert out.stdout.startswith("source: sacct (sacct)\n"), out.stdout
    html = (ctx.work / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "<table" in html and "base64," in html


def check_analyze_simulate(out, ctx):
    _check_summary(out.stdout, simulate=True)
    assert "simulation: mix mixed, opt-in 0.50, seed 1;" in out.stdout
    row = next(ln for ln in (REPO / "docs/analyze.md").read_text().splitlines() if ln.startswith("| `--plots DIR`"))
    names = re.findall(r"`(\w+)`", row.split("|")[2])
    assert len(names) >= 5, row
    for name in names:
        assert (ctx.work / "figs" / f"{name}.png").stat().st_size > 1000, name


def _installed(role_files: list[str]):
    def check(out, ctx):
        root = ctx.values["root"]
        assert out.stdout.startswith("installed: "), out.stdout
        for rel in role_files:
            assert (root / rel).exists(), rel
        again = subprocess.run(out.args, shell=True, capture_output=True, text=True, env=ctx.env, cwd=ctx.work,
                               timeout=120)
        assert again.returncode == 0 and "installed: nothing to change" in again.stdout, again   # idempotent
    return check


def check_install_plugin(out, ctx):
    so, snippet = ctx.values["plugin_dir"] / "spank_faas.so", ctx.values["plugstack_dir"] / "faas.conf"
    assert f"{so}: installed" in out.stdout and f"{snippet}: written" in out.stdout, out.stdout
    assert snippet.read_text().splitlines()[-1] == f"optional {so} spool={ctx.cluster.spool}"


def check_uninstall_plugin(out, ctx):
    assert "removed" in out.stdout and not list(ctx.values["plugin_dir"].iterdir()), out.stdout
    assert not list(ctx.values["plugstack_dir"].iterdir())


def write_db_config(ctx):
    (ctx.work / "coscheduler.toml").write_text(f'db_url = "sqlite:///{ctx.work / "upgrade.db"}"\n')


def check_db_upgrade(out, ctx):
    assert re.fullmatch(r"sqlite:///\S+: empty -> \w+\n", out.stdout), out.stdout   # the schema made
    ctx.values["revision"] = out.stdout.split()[-1]


def check_db_current(out, ctx):
    rev = ctx.values["revision"]
    assert out.stdout.endswith(f": revision {rev}, newest {rev}\n"), out.stdout


def _sub(pattern: str, value: Callable[[Ctx], str]):
    def shell(text: str, ctx: Ctx) -> str:
        new = re.sub(pattern, lambda m: value(ctx), text)
        assert new != text, f"placeholder {pattern!r} not in {text!r}"
        return new
    return shell


def _chain(*subs):
    def shell(text, ctx):
        for s in subs:
            text = s(text, ctx)
        return text
    return shell


NAME = _sub(r"\bNAME\b", lambda ctx: "hello")
ID = _sub(r"\bID\b", lambda ctx: str(ctx.values["id"]))


def env_shell(text, ctx):
    return f"{text} && printf '%s\\n' \"$SLURM_CONF\" \"$FAAS_COSCHEDULER\" \"$FAAS_MUNGE_SOCKET\""


def make_jobs_txt(ctx):
    """jobs.txt: what `sacct --parsable2` prints for the cluster's jobs (the fields analyze --sacct asks)."""
    row = next(ln for ln in (REPO / "docs/analyze.md").read_text().splitlines() if ln.startswith("| `--sacct`"))
    fields = re.search(r"-o (\S+)", row).group(1).rstrip("`")
    job = str(ctx.values["job"])

    def dump():
        out = run(ctx.cluster, "sacct", "-a", "-P", "-S", "now-30days", "-o", fields)
        return out.stdout if any(ln.split("|")[0] == job for ln in out.stdout.splitlines()) else None

    (ctx.work / "jobs.txt").write_text(wait_until(f"job {job} in sacct", dump, timeout_s=120, interval_s=1))


STEPS: list[Step] = [
    # README: using it (the order a user follows)
    Step('eval "$(faas-admin dev-cluster env)"', check_env, shell=env_shell),
    Step("sbatch -c8 --mem=8G --faas-share=cores=4,mem=4G job.sh", check_sbatch),
    Step("submit-function register hello --entrypoint mymod:handler --code ./fns --mem 256M --timeout 30",
         check_register_hello),
    Step("submit-function invoke hello --payload '{\"x\": 1}' --wait", check_invoke_wait_readme),
    Step("submit-function status 7 --history", check_status_history,
         shell=_sub(r"\b7\b", lambda ctx: str(ctx.values["readme_id"]))),
    Step("faas-admin slots", check_slots),
    # docs/functions.md: results, failures and output
    Step("submit-function invoke NAME --payload '{\"x\": 1}' --wait", check_invoke_wait_name, shell=NAME),
    Step("submit-function invoke NAME --payload @big.json", check_invoke_file, shell=NAME),
    Step("generate | submit-function invoke NAME --payload -", check_invoke_stdin,
         shell=_chain(NAME, _sub(r"^generate\b", lambda ctx: "printf '{\"x\": 2}\\n'"))),
    Step("submit-function status ID", check_status, shell=ID),
    Step("submit-function output ID", check_output, shell=ID),
    Step("submit-function result ID", check_result, shell=ID),
    Step("submit-function invoke NAME --batch in.jsonl --wait -o json", check_batch, shell=NAME),
    Step("submit-function result 100-199 250", check_result_many,
         shell=_sub(r"100-199 250", lambda ctx: f"{min(ctx.values['batch'])}-{max(ctx.values['batch'])} "
                                                f"{ctx.values['id']}")),
    Step("submit-function result --function NAME -o json", check_result_function, shell=NAME),
    Step("submit-function register NAME --entrypoint mymod:handler --code ~/fn/code", check_register_vendored,
         shell=NAME),
    Step("submit-function register echo --entrypoint libecho.so:echo --code ./fns --mem 64M --timeout 5",
         check_register_echo, before=build_echo),
    # docs/analyze.md
    Step("faas-admin analyze TRACE.swf.gz", check_analyze_text),
    Step("faas-admin analyze jobs.txt --format sacct --capacity 4096 --json > report.json",
         check_analyze_sacct_file, before=make_jobs_txt, needs_accounting=True),
    Step("faas-admin analyze --sacct --since now-30days --capacity 4096 --html report.html",
         check_analyze_sacct_html, needs_accounting=True),
    Step("faas-admin analyze TRACE.swf.gz --simulate --mix mixed --opt-in 0.5 --seed 1 --plots figs/",
         check_analyze_simulate),
    # docs/operations.md, into a temporary root
    Step("faas-admin install-node spool=/var/spool/slurm-faas",
         _installed(["etc/systemd/system/faas-agent.service", "etc/slurm-faas/agent.toml", "var/spool/slurm-faas"]),
         shell=_sub(r"^faas-admin install-node\b",
                    lambda ctx: f"faas-admin install-node --root {ctx.values['root']} --without-plugin")),
    Step("faas-admin install-head",
         _installed(["etc/systemd/system/faas-coscheduler.service", "etc/slurm-faas/coscheduler.toml",
                     "var/lib/slurm-faas", "var/log/slurm-faas"]),
         shell=_sub(r"^faas-admin install-head\b", lambda ctx: f"faas-admin install-head --root {ctx.values['root']}")),
    # docs/admin.md: install and upgrade, the database migrations
    Step("faas-admin db upgrade --config /etc/slurm-faas/coscheduler.toml", check_db_upgrade, before=write_db_config,
         shell=_sub(r"/etc/slurm-faas/coscheduler\.toml", lambda ctx: str(ctx.work / "coscheduler.toml"))),
    Step("faas-admin db current --config /etc/slurm-faas/coscheduler.toml", check_db_current,
         shell=_sub(r"/etc/slurm-faas/coscheduler\.toml", lambda ctx: str(ctx.work / "coscheduler.toml"))),
    # docs/spank_faas.8.md synopsis, into temporary directories
    Step("faas-admin install-plugin [--plugin-dir DIR] [--plugstack-dir DIR] spool=/var/spool/slurm-faas ...",
         check_install_plugin,
         shell=_chain(_sub(r"\[--plugin-dir DIR\]", lambda ctx: f"--plugin-dir {ctx.values['plugin_dir']}"),
                      _sub(r"\[--plugstack-dir DIR\]", lambda ctx: f"--plugstack-dir {ctx.values['plugstack_dir']}"),
                      _sub(r"spool=/var/spool/slurm-faas \.\.\.", lambda ctx: f"spool={ctx.cluster.spool}"))),
    Step("faas-admin uninstall-plugin [--plugin-dir DIR] [--plugstack-dir DIR]", check_uninstall_plugin,
         shell=_chain(_sub(r"\[--plugin-dir DIR\]", lambda ctx: f"--plugin-dir {ctx.values['plugin_dir']}"),
                      _sub(r"\[--plugstack-dir DIR\]", lambda ctx: f"--plugstack-dir {ctx.values['plugstack_dir']}"))),
]


def make_workdir(work: Path) -> None:
    """The files the docs refer to."""
    handler = ('import json\n\n\ndef handler(payload):\n'
               '    text = json.dumps(payload)\n'
               '    print(f"mymod.handler got {len(text)} bytes")\n'
               '    return payload if len(text) < 1000 else {"bytes": len(text)}\n')
    for d in (work / "fns", work / "home/fn/code"):
        d.mkdir(parents=True)
        (d / "mymod.py").write_text(handler)
    (work / "job.sh").write_text("#!/bin/sh\nsleep 600\n")
    (work / "big.json").write_text(json.dumps({"blob": "y" * 200_000}) + "\n")   # above the 128 KiB of argv
    (work / "in.jsonl").write_text("".join(json.dumps({"n": n}) + "\n" for n in (1, 2, 3)))
    rnd = random.Random(1)
    rows, t = ["; MaxProcs: 256"], 0
    for j in range(1, 301):
        t += rnd.randint(0, 600)
        p, r = rnd.choice([1, 2, 4, 8, 16]), rnd.randint(60, 20000)
        rows.append(f"{j} {t} {rnd.randint(0, 300)} {r} {p} {r * rnd.uniform(0.2, 1.0):.1f} -1 {p} "
                    f"{int(r * rnd.uniform(1.0, 3.0))} -1 1 {rnd.randint(1, 5)} 1 1 1 -1 -1 -1")
    with gzip.open(work / "TRACE.swf.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")
    for d in ("root", "plugin-dir", "plugstack-dir"):
        (work / d).mkdir()


def has_accounting(cluster) -> bool:
    out = run(cluster, "scontrol", "show", "config")
    return "accounting_storage/slurmdbd" in out.stdout


# -- the tests ------------------------------------------------------------------------------

def test_every_doc_command_is_run_or_excluded():
    found = doc_commands()
    texts = {c.text for c in found}
    run_here = {s.doc for s in STEPS}
    assert not run_here & set(EXCLUDED), "a command is both run and excluded"
    unknown = [f"{c.where()}: {c.text}" for c in found if c.text not in run_here and c.text not in EXCLUDED]
    assert not unknown, ("commands in the docs that this test neither runs (STEPS) nor excludes (EXCLUDED, "
                         "with the reason):\n  " + "\n  ".join(unknown))
    stale = sorted((run_here | set(EXCLUDED)) - texts)
    assert not stale, f"commands in STEPS/EXCLUDED that no doc shows any more: {stale}"
    assert len(found) >= len(STEPS) + len(EXCLUDED)


def test_doc_commands_run_on_the_dev_cluster(cluster, tmp_path):
    found = {c.text: c for c in doc_commands()}
    work = tmp_path / "work"
    work.mkdir()
    make_workdir(work)
    env = {**cluster.client_env(), "HOME": str(work / "home")}
    ctx = Ctx(cluster, work, env, values={"work": work, "root": work / "root", "plugin_dir": work / "plugin-dir",
                                          "plugstack_dir": work / "plugstack-dir"})
    accounting = has_accounting(cluster)
    failures, not_run, ran = [], [], []
    try:
        for step in STEPS:
            where = found[step.doc].where() if step.doc in found else "(not in the docs)"
            if step.needs_accounting and not accounting:
                not_run.append(f"{where}: {step.doc}")
                continue
            try:
                if step.before:
                    step.before(ctx)
                cmd = step.shell(step.doc, ctx)
                step_env = env
                if step.check is check_env:   # the variables come from the eval, not from the test
                    step_env = {k: v for k, v in env.items() if k not in ("SLURM_CONF", "FAAS_COSCHEDULER",
                                                                          "FAAS_MUNGE_SOCKET")}
                    step_env["FAAS_DEV_CLUSTER_DIR"] = str(cluster.root)
                out = subprocess.run(cmd, shell=True, executable="/bin/bash", cwd=work, env=step_env,
                                     capture_output=True, text=True, timeout=300)
                assert out.returncode == step.exit_code, (
                    f"exit {out.returncode} (the docs: {step.exit_code})\nstdout: {out.stdout[-2000:]}\n"
                    f"stderr: {out.stderr[-2000:]}")
                step.check(out, ctx)
                ran.append(f"{where}: {cmd}")
            except Exception as exc:   # noqa: BLE001  (every command is reported, not only the first)
                msg = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
                failures.append(f"{where}: {step.doc}\n    {msg[:3000]}")
    finally:
        if "job" in ctx.values:
            subprocess.run(["scancel", str(ctx.values["job"])], env=env, capture_output=True)
    print(f"{len(ran)} documented commands ran:", *ran, sep="\n  ")
    assert not failures, f"{len(failures)} of {len(STEPS)} documented commands failed:\n" + "\n".join(failures)
    assert len(ran) + len(not_run) == len(STEPS)
    if not_run:
        missing("the dev cluster has no accounting (slurmdbd + MariaDB, make deps): not run: " + "; ".join(not_run))
