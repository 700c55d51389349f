"""Attacks on the real dev cluster as real unprivileged users (docs/security.md).

Fixtures: the session's cluster (tests/conftest.py), two users (faas-alice, faas-bob),
root's client, ``attack(user, name, **params)`` which runs tests/adversarial/attacks.py
as that user with the system Python, and ``as_user`` for submit-function as a user.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import client, jobs, probe  # noqa: F401  (fixtures)
from tests.integration.helpers import FUNCTIONS
from tests.integration.runtime_fixtures import users  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]


def user_env(cluster) -> dict[str, str]:
    """What a user's shell has: the system Python with this checkout and the venv's
    packages on its path (the venv's own interpreter lives where users cannot reach it)."""
    site = next(p for p in sys.path if p.endswith("site-packages"))
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": f"{REPO}:{site}",
            "FAAS_TEST_CODE": str(FUNCTIONS), **cluster.env()}


def run_as(cluster, user: str, argv: list[str], timeout_s: float = 300) -> subprocess.CompletedProcess:
    env = user_env(cluster)
    return subprocess.run(["runuser", "-u", user, "--", "/usr/bin/env", "-i",
                           *(f"{k}={v}" for k, v in env.items()), *argv],
                          capture_output=True, text=True, timeout=timeout_s, cwd="/")


@pytest.fixture
def attack(cluster, users):
    def run(user: str, name: str, **params) -> dict:
        out = run_as(cluster, user, ["/usr/bin/python3", "-m", "tests.adversarial.attacks", name, json.dumps(params)])
        if out.returncode != 0:
            raise AssertionError(f"attack {name} as {user} crashed: {out.stderr[-2000:]}")
        return json.loads(out.stdout)

    return run


@pytest.fixture
def as_user(cluster, users):
    """submit-function as a user; returns the CompletedProcess."""
    def run(user: str, *args: str) -> subprocess.CompletedProcess:
        return run_as(cluster, user, ["/usr/bin/python3", "-c", "from coscheduler.cli.submit import main; main()",
                                      *args], timeout_s=120)

    return run


@pytest.fixture
def run_to_end(as_user):
    """Invoke a function as a user and return its final status (-o json), whatever the end."""
    def run(user: str, name: str, payload: str = "null", timeout_s: float = 90) -> dict:
        out = as_user(user, "invoke", name, "--payload", payload, "-o", "json")
        assert out.returncode == 0, out.stderr
        inv = str(json.loads(out.stdout)["invocation_id"])
        deadline = time.monotonic() + timeout_s
        while True:
            st = json.loads(as_user(user, "status", inv, "-o", "json").stdout)
            if st["state"] in ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED") or time.monotonic() > deadline:
                if st["state"] == "SUCCEEDED":
                    st["result"] = json.loads(as_user(user, "result", inv).stdout)
                return st
            time.sleep(0.5)

    return run
