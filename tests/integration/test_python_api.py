"""The Python API (slurm_faas) on the real dev cluster, as the real unprivileged user
faas-alice with the system Python: calls by reference and by value run as her, map in
chunks, bytes both ways, a function's exception with its traceback, results collected
by id from a new connection, and a hot lease of a Python function."""
from __future__ import annotations

import json
import pwd

from tests.adversarial.conftest import run_as
from tests.integration.helpers import FUNCTIONS
from tests.integration.runtime_fixtures import users  # noqa: F401  (fixture)


def test_a_users_python_calls_run_as_her_with_values_errors_and_bytes(cluster, lending_job, users):
    out = run_as(cluster, "faas-alice", ["/usr/bin/python3", str(FUNCTIONS / "pyapi_user.py")], timeout_s=600)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    alice = pwd.getpwnam("faas-alice")
    assert doc["uid_gid"] == [alice.pw_uid, alice.pw_gid]
    assert doc["map"] == [i * i for i in range(40)]
    assert doc["by_value"] == 3
    assert doc["bytes_ok"] is True
    assert doc["error"] == ["KeyError", "'nope'", True]
    assert doc["attached"] == [81]
    assert doc["hot"] == [0, 1, 4]
