"""Prometheus metrics over HTTP (config ``metrics_bind``, e.g. ``127.0.0.1:9810``).

Names follow Prometheus' conventions: ``slurm_faas_`` first, units in the name, counters end
in ``_total``, latencies are histograms. The HTTP server runs in prometheus_client's
thread and never touches the database: it renders the overview the loop refreshes every
``REFRESH_S`` (observe.py) and the loop's metrics, read under their lock. A dashboard for
Grafana is docs/grafana-dashboard.json.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .hub import Hub
from .metrics import Histogram
from .observe import overview

log = logging.getLogger("faas.coscheduler")

REFRESH_S = 5.0


class Exporter:
    """Refreshes the overview in the loop (``step_observe``) and renders it on a scrape."""

    def __init__(self, hub: Hub, bind: str):
        self.hub = hub
        self.latest: Optional[dict] = None
        self._next = 0.0
        host, _, port = bind.rpartition(":")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        self.server, self.thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
        log.info("Prometheus metrics on http://%s/metrics", bind)

    def step_observe(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + REFRESH_S
        with self.hub.database.session() as s:
            self.latest = overview(self.hub, s)

    def close(self) -> None:
        self.server.shutdown()

    def collect(self):
        ov = self.latest  # one reference, replaced whole by the loop
        if ov is None:
            return
        cap, m = ov["capacity"], ov["metrics"]

        def gauge(name: str, doc: str, value: float):
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("slurm_faas_lent_cores", "Cores batch jobs lend now", cap["cores_lent_now"])
        yield gauge("slurm_faas_used_cores", "Lent cores functions hold now", cap["cores_used_now"])
        yield gauge("slurm_faas_lent_memory_bytes", "Memory batch jobs lend now", cap["mem_lent_mb_now"] * 2**20)
        yield CounterMetricFamily("slurm_faas_lent_core_seconds", "Core-seconds lent by batch jobs (all time)",
                                  value=cap["lent_core_seconds"])
        yield CounterMetricFamily("slurm_faas_used_core_seconds",
                                  "Core-seconds functions ran on lent cores (since the co-scheduler started)",
                                  value=cap["used_core_seconds_since_start"])
        states = GaugeMetricFamily("slurm_faas_invocations", "Invocations by state", labels=["state"])
        for state, n in ov["queue"]["by_state"].items():
            states.add_metric([state], n)
        yield states
        depth = GaugeMetricFamily("slurm_faas_queue_depth", "Queued invocations per user", labels=["uid"])
        for uid, counts in ov["queue"]["by_user"].items():
            depth.add_metric([uid], counts.get("QUEUED", 0))
        yield depth
        results = CounterMetricFamily("slurm_faas_results", "Invocations ended, by outcome", labels=["outcome"])
        for key, n in m["counters"].items():
            if key.startswith("results_"):
                results.add_metric([key.removeprefix("results_")], n)
        yield results
        for key, doc in (("dispatched", "Invocations dispatched to agents"),
                         ("evictions", "Invocations evicted (their lend was revoked or their agent lost)"),
                         ("heartbeats", "Agent heartbeats handled")):
            yield CounterMetricFamily(f"slurm_faas_{key}", doc, value=m["counters"].get(key, 0))
        for key, doc in (("queue_wait_seconds", "Time from submission to dispatch"),
                         ("run_seconds", "Run time of invocations, as agents report it")):
            h = m["histograms"].get(key) or Histogram().snapshot()  # served from the start, empty
            cumulative, buckets = 0, []
            for bound, n in zip([*map(str, h["buckets"]), "+Inf"], h["counts"]):
                cumulative += n
                buckets.append((bound, cumulative))
            yield HistogramMetricFamily(f"slurm_faas_{key}", doc, buckets=buckets, sum_value=h["sum"])
        up = GaugeMetricFamily("slurm_faas_agent_up", "Whether a node's agent holds a session", labels=["node"])
        age = GaugeMetricFamily("slurm_faas_agent_heartbeat_age_seconds", "Seconds since a node's agent was heard",
                                labels=["node"])
        for node, a in ov["agents"].items():
            up.add_metric([node], 1 if a["connected"] else 0)
            if a["last_heartbeat_s"] is not None:
                age.add_metric([node], a["last_heartbeat_s"])
        yield up
        yield age
        steps = GaugeMetricFamily("slurm_faas_loop_step_p99_seconds", "p99 duration of the loop's steps",
                                  labels=["step"])
        for step, ms in ov["health"]["steps_p99_ms"].items():
            steps.add_metric([step], ms / 1e3)
        yield steps
