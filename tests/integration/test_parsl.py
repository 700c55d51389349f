"""Parsl's own test suite on lent cores: Parsl's tests (shipped in its wheel, parsl/tests)
run with ``--config tests/parsl/config.py``, whose only executor is ours
(slurm_faas.parsl.SlurmFaasExecutor), against the dev cluster. They run from their own
environment (``make parsl-tests-venv``: Parsl's conftest needs pytest < 8).

Everything Parsl runs against an explicit config is run, except what ``EXCLUDED`` names,
each with its reason (docs/python.md lists them too). The test asserts that nothing failed
and that at least ``MIN_PASSED`` tests ran and passed, ``MIN_PYTHON_APPS`` of them Parsl's
python_app tests (parsl/tests/test_python_apps), so a run that silently collects
nothing, or skips its way through, fails."""
from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from tests.conftest import missing

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("PARSL_TESTS_VENV", REPO / ".venv-parsl-tests"))

# Parsl's markers (its conftest documents them) deselected with -k, and why.
EXCLUDED_MARKERS = {
    "cleannet": "needs the internet (FTP and HTTPS staging from public servers); this machine reaches "
                "only Debian's and PyPI's registries",
    "staging_required": "needs a staging provider: the task's relative paths resolve in the client's "
                        "directory; our tasks run in their executor's directory on the node (Parsl's own CI "
                        "deselects these for its remote executors too)",
    "issue3328": "Parsl's marker for tests broken by its issue 3328: they expect a bad stdout path to fail, "
                 "which root (who runs this suite) can create",
    "issue_3620": "asserts that only HighThroughput/WorkQueue/ThreadPool executors raise "
                  "InvalidResourceSpecification; ours raises it for keys it does not know (Parsl marks it "
                  "as not working on GlobusComputeExecutor, the other remote one)",
}
# Parsl's test files left out, and why.
EXCLUDED_FILES = {
    "test_regression/test_226.py": "imports pandas, which is not one of Parsl's dependencies (nor ours)",
}
MIN_PASSED = 110
MIN_PYTHON_APPS = 75


def test_parsls_own_tests_pass_on_lent_cores(cluster, lending_job, tmp_path):
    python = VENV / "bin" / "python"
    if not python.exists():
        missing(f"Parsl's test environment {VENV} (make parsl-tests-venv)")
    tests = Path(subprocess.run([str(python), "-c", "import parsl.tests, os; print(os.path.dirname(parsl.tests.__file__))"],
                                capture_output=True, text=True, check=True).stdout.strip())
    report = tmp_path / "parsl-junit.xml"
    argv = [str(python), "-m", "pytest", *map(str, _paths(tests)), "-c", str(REPO / "tests/parsl/pytest.ini"),
            "--rootdir", str(tests), "--config", str(REPO / "tests/parsl/config.py"), "-p", "no:cacheprovider",
            "-q", "-rfE", "--junitxml", str(report),
            "-k", " and ".join(f"not {marker}" for marker in EXCLUDED_MARKERS)]
    out = subprocess.run(argv, cwd=tmp_path, env=cluster.client_env(), capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    outcomes = _outcomes(report)
    passed = [name for name, outcome in outcomes.items() if outcome == "passed"]
    python_apps = [name for name in passed if name.startswith("test_python_apps.")]
    assert not [name for name, outcome in outcomes.items() if outcome in ("failed", "error")]
    assert len(passed) >= MIN_PASSED, (len(passed), out.stdout[-3000:])
    assert len(python_apps) >= MIN_PYTHON_APPS, (len(python_apps), out.stdout[-3000:])


def _paths(tests: Path) -> list[Path]:
    """Parsl's test tree without ``EXCLUDED_FILES``: a directory holding one is given file by
    file (pytest's --ignore does not work there: Parsl's conftest answers every
    pytest_ignore_collect itself)."""
    excluded = {tests / path for path in EXCLUDED_FILES}
    holding = {parent for path in excluded for parent in path.parents}
    paths, todo = [], [tests]
    while todo:
        for entry in sorted(todo.pop().iterdir()):
            if entry in holding:
                todo.append(entry)
            elif entry not in excluded and entry.name != "__pycache__":
                paths.append(entry)
    return paths


def _outcomes(report: Path) -> dict[str, str]:
    """{classname::name: passed|failed|error|skipped} from pytest's JUnit XML."""
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = Counter(child.tag for child in case)
        outcome = ("failed" if kinds["failure"] else "error" if kinds["error"]
                   else "skipped" if kinds["skipped"] else "passed")
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return outcomes
