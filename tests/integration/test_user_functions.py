"""A user's function on the real dev cluster, through submit-function as typed: its
traceback and output, values that are not JSON, dependencies (the agent's environment
does not leak; vendored packages work), and a re-register that retires warm executors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.helpers import FUNCTIONS, run


def _register(cluster, name, entrypoint, code):
    run(cluster, "submit-function", "register", name, "--entrypoint", entrypoint, "--code", str(code),
        "--mem", "128M", "--timeout", "60")


def test_a_failure_keeps_its_traceback_and_output(cluster, lending_job):
    _register(cluster, "uf-boom", "user_fns:boom", FUNCTIONS)
    out = run(cluster, "submit-function", "invoke", "uf-boom", "--payload", "{}", "--wait", check=False)
    assert out.returncode == 1 and "ended FAILED: KeyError: 'missing_key'" in out.stderr
    assert 'return payload["missing_key"]' in out.stderr and "user_fns.py" in out.stderr
    inv = run(cluster, "submit-function", "list", "--function", "uf-boom", "-o", "json").stdout
    inv_id = str(json.loads(inv)[0]["invocation_id"])
    doc = json.loads(run(cluster, "submit-function", "status", inv_id, "-o", "json").stdout)
    assert doc["traceback"].startswith("Traceback (most recent call last)") and "KeyError" in doc["traceback"]
    output = run(cluster, "submit-function", "output", inv_id).stdout
    assert output == "about to look up the key\na warning on stderr\n"


@pytest.mark.parametrize("entrypoint,why", [("user_fns:nan", "Out of range float values are not JSON compliant"),
                                            ("user_fns:a_set", "Object of type set is not JSON serializable")])
def test_a_value_that_is_not_json_says_so(cluster, lending_job, entrypoint, why):
    name = "uf-" + entrypoint.split(":")[1].replace("_", "-")
    _register(cluster, name, entrypoint, FUNCTIONS)
    out = run(cluster, "submit-function", "invoke", name, "--wait", "-o", "json", check=False)
    assert out.returncode == 1
    doc = json.loads(out.stdout)  # valid JSON (no NaN), an error document
    assert doc["state"] == "FAILED" and doc["error"]["message"].startswith("the return value is not JSON")
    assert why in doc["error"]["message"]


def test_the_agents_environment_does_not_leak_and_vendored_packages_work(cluster, lending_job, tmp_path):
    _register(cluster, "uf-leak", "user_fns:leak", FUNCTIONS)
    out = run(cluster, "submit-function", "invoke", "uf-leak", "--wait")
    assert json.loads(out.stdout) == "isolated"
    # Vendoring as docs/functions.md shows it: pip install --target into the code directory.
    pkg, code = tmp_path / "pkg", tmp_path / "code"
    (pkg / "src" / "tinyvendored").mkdir(parents=True)
    (pkg / "src" / "tinyvendored" / "__init__.py").write_text('def hello():\n    return "vendored ok"\n')
    (pkg / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\nbuild-backend = '
                                        '"setuptools.build_meta"\n[project]\nname = "tinyvendored"\nversion = "1.0"\n'
                                        '[tool.setuptools.packages.find]\nwhere = ["src"]\n')
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(code), "--no-index",
                    "--no-build-isolation", "--no-deps", str(pkg)], check=True, capture_output=True)
    (code / "uses_vendored.py").write_text("import tinyvendored\n\n\ndef main(payload):\n"
                                           "    return tinyvendored.hello()\n")
    _register(cluster, "uf-vendored", "uses_vendored:main", code)
    assert json.loads(run(cluster, "submit-function", "invoke", "uf-vendored", "--wait").stdout) == "vendored ok"


def test_re_register_retires_warm_executors(cluster, lending_job, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "versioned.py").write_text("def main(payload):\n    return 1\n")
    _register(cluster, "uf-versioned", "versioned:main", code)
    assert run(cluster, "submit-function", "invoke", "uf-versioned", "--wait").stdout.strip() == "1"
    (code / "versioned.py").write_text("def main(payload):\n    return 2\n")
    _register(cluster, "uf-versioned", "versioned:main", code)  # the warm executor imported version 1
    assert run(cluster, "submit-function", "invoke", "uf-versioned", "--wait").stdout.strip() == "2"
