"""faas-admin status and the Prometheus endpoint against the real co-scheduler loop (in
process, SQLite and PostgreSQL), with agents played by sockets: what they show matches what
was lent, queued and run."""
from __future__ import annotations

import json
import re
import socket
import urllib.request

from pathlib import Path

from click.testing import CliRunner

from coscheduler.cli.admin import main as admin_main
from faas_runtime import queue_client as client_mod

from .daemon_harness import UID, harness_factory, wait_for  # noqa: F401  (fixture)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_status_and_metrics_show_what_was_lent_queued_and_run(harness_factory, monkeypatch):
    port = _port()
    h = harness_factory(metrics_bind=f"127.0.0.1:{port}")
    h.agent("n1", 1, cores=4)
    h.agent("n2", 2, cores=2, answer=False)  # holds what it gets: its cores stay used
    with client_mod.Client(h.endpoint, timeout_s=20) as c:
        c.register(name="echo", entrypoint="m:f", code_dir="/tmp", cores=1, mem_mb=100, timeout_s=10)
        c.register(name="huge", entrypoint="m:f", code_dir="/tmp", cores=64, mem_mb=100, timeout_s=10)
        done = c.invoke_batch("echo", ["1"] * 20)
        c.invoke_batch("huge", ["1"] * 5)  # fits no lend: stays queued
        wait_for(lambda: sum(r["state"] == "SUCCEEDED" for r in c.list(ids=done, limit=50)) >= 18)
        monkeypatch.setattr(client_mod, "make_credential", lambda digest, socket=None: "0")  # root
        ov = c.overview()
    assert set(ov["agents"]) == {"n1", "n2"} and all(a["connected"] for a in ov["agents"].values())
    assert (ov["agents"]["n1"]["cores_lent"], ov["agents"]["n2"]["cores_lent"]) == (4, 2)
    assert ov["agents"]["n2"]["cores_used"] == 2  # the agent that never answers holds both
    assert ov["queue"]["by_user"][str(UID)]["QUEUED"] == 5
    assert ov["queue"]["by_state"]["SUCCEEDED"] >= 18
    assert ov["capacity"]["cores_lent_now"] == 6 and ov["capacity"]["lent_core_seconds"] > 0
    # the command line, as a sysadmin types it (root's credential, as above)
    out = CliRunner().invoke(admin_main, ["--coscheduler", h.endpoint, "status", "-o", "json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["queue"]["by_user"][str(UID)]["QUEUED"] == 5
    text = CliRunner().invoke(admin_main, ["--coscheduler", h.endpoint, "status"]).output
    assert "n1" in text and "uid 4242: " in text and "core-seconds lent" in text
    # the real HTTP endpoint, refreshed by the loop every few seconds
    wait_for(lambda: _scrape(port).get('slurm_faas_invocations{state="QUEUED"}') == 5, timeout_s=30)
    m = _scrape(port)
    assert m["slurm_faas_lent_cores"] == 6 and m['slurm_faas_agent_up{node="n2"}'] == 1
    assert m['slurm_faas_queue_depth{uid="4242"}'] == 5
    assert m['slurm_faas_results_total{outcome="ok"}'] >= 18
    assert m["slurm_faas_dispatched_total"] >= 20
    assert m["slurm_faas_queue_wait_seconds_count"] >= 20  # a histogram: submit to dispatch
    # every series the shipped Grafana dashboard plots is one the endpoint serves
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    served = {name.split("{")[0] for name in m}
    wanted = {n for p in dashboard["panels"] for t in p["targets"] for n in re.findall(r"slurm_faas_\w+", t["expr"])}
    assert wanted - served == set(), wanted - served
    # and so is every series the recommended alert rules use (docs/admin.md, "What to monitor")
    rules = (Path(__file__).resolve().parents[2] / "docs" / "prometheus-alerts.yml").read_text()
    alerted = set(re.findall(r"slurm_faas_\w+", rules))
    assert len(alerted) >= 6 and alerted - served == set(), alerted - served


def test_status_is_root_s(harness_factory):
    h = harness_factory()
    with client_mod.Client(h.endpoint, timeout_s=20) as c:
        try:
            c.overview()
        except client_mod.RequestError as exc:
            assert exc.code == "auth"
        else:
            raise AssertionError("a user read the co-scheduler's overview")
