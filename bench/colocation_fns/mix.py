"""The evaluation's function mix (bench/bench_colocation.py, docs/evaluation.md): small
services of the kind a centre would run beside its batch jobs. Each takes a payload
``{"size": N}`` and returns what it computed plus where and how long it ran, so the
benchmark can check the CPUs (``cpus``: must be lent ones) and count useful work
(``cpu_s``: CPU time of the call, ``wall_s``: its wall time).

``html`` and ``compress`` use the standard library only (the integration test runs them
without vendored packages); ``thumbnail``, ``graph`` and ``linalg`` import Pillow,
networkx and numpy from the code directory (``make bench-venv`` vendors them).
"""
from __future__ import annotations

import os
import time
import zlib
from string import Template


def _measured(work):
    """Run ``work()`` and wrap its answer with the CPUs, CPU time and wall time of the call."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    answer = work()
    return {"answer": answer, "cpus": sorted(os.sched_getaffinity(0)),
            "cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - wall0}


ROW = Template("<tr><td>$rank</td><td><a href=\"/u/$user\">$user</a></td><td>$score</td></tr>")
PAGE = Template("<!doctype html><html><head><title>$title</title></head><body><h1>$title</h1>"
                "<table>$rows</table><p>$count rows</p></body></html>")


def html(payload):
    """Render a leaderboard page of ``size`` rows from string templates, as a web front end does."""
    rows = int(payload.get("size", 2000))

    def work():
        body = "".join(ROW.substitute(rank=i + 1, user=f"user{i * 7919 % 100003}", score=(i * 31337) % 1000)
                       for i in range(rows))
        page = PAGE.substitute(title="Leaderboard", rows=body, count=rows)
        return {"bytes": len(page), "crc": zlib.crc32(page.encode())}
    return _measured(work)


def compress(payload):
    """zlib-compress ``size`` KiB of semi-repetitive log text at level 6, then check the round trip."""
    kib = int(payload.get("size", 512))

    def work():
        line = b"2026-12-06T23:00:00Z node%03d slurmd[%d]: job %d step %d state=%s\n"
        data = b"".join(line % (i % 97, 1000 + i % 13, 4000 + i // 50, i % 5, b"RUNNING" if i % 3 else b"DONE")
                        for i in range(kib * 1024 // 60))
        packed = zlib.compress(data, 6)
        assert zlib.decompress(packed) == data
        return {"in": len(data), "out": len(packed)}
    return _measured(work)


def thumbnail(payload):
    """Make a 128x128 JPEG thumbnail of a generated ``size`` x ``size`` photo-like image (Pillow)."""
    from io import BytesIO

    from PIL import Image, ImageFilter
    side = int(payload.get("size", 1024))

    def work():
        img = Image.effect_mandelbrot((side, side), (-2.0, -1.2, 0.8, 1.2), 64).convert("RGB")
        img = img.filter(ImageFilter.GaussianBlur(2))
        img.thumbnail((128, 128), Image.Resampling.LANCZOS)
        out = BytesIO()
        img.save(out, "JPEG", quality=85)
        return {"bytes": out.tell(), "size": list(img.size)}
    return _measured(work)


def graph(payload):
    """Shortest paths and sampled betweenness on a ``size``-node small-world graph (networkx)."""
    import networkx as nx
    nodes = int(payload.get("size", 1500))

    def work():
        g = nx.connected_watts_strogatz_graph(nodes, 6, 0.1, seed=nodes)
        lengths = nx.single_source_shortest_path_length(g, 0)
        between = nx.betweenness_centrality(g, k=16, seed=1)
        return {"eccentricity0": max(lengths.values()), "top": max(between, key=between.get)}
    return _measured(work)


def linalg(payload):
    """Solve a ``size`` x ``size`` dense linear system and a least-squares fit (numpy, one thread)."""
    import numpy as np
    n = int(payload.get("size", 300))

    def work():
        rng = np.random.default_rng(n)
        a = rng.standard_normal((n, n)) + n * np.eye(n)
        b = rng.standard_normal(n)
        x = np.linalg.solve(a, b)
        coef = np.linalg.lstsq(a[:, : n // 4], b, rcond=None)[0]
        return {"residual": float(np.linalg.norm(a @ x - b)), "coef0": float(coef[0])}
    return _measured(work)


# name -> (entrypoint, default payload): what bench_colocation.py registers and mixes.
MIX = {
    "thumbnail": ("mix:thumbnail", {"size": 1024}),
    "html": ("mix:html", {"size": 20000}),
    "graph": ("mix:graph", {"size": 1500}),
    "linalg": ("mix:linalg", {"size": 700}),
    "compress": ("mix:compress", {"size": 4096}),
}
STDLIB_ONLY = ("html", "compress")
