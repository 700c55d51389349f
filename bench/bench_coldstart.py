"""Cold start (executor start to first result) and warm invocations through a real
faas-agent, beside `ch-run IMAGE -- true` and `python3 -c pass`, measured in one run.

    .venv/bin/python bench/bench_coldstart.py [--n 10] [--image DIR]

Builds a Charliecloud image from the host's Python (faas_runtime.images) unless --image
is given. Cold: a RUN for a function with no warm executor -> the agent makes its cgroup,
starts the container (or the bare interpreter), the executor imports the function, runs
it, the result comes back. Warm: a RUN served by the idle executor the cold run left.
Median and min of N each. No assertions: numbers to read.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def row(label: str, ts: list[float], base: float | None = None) -> None:
    med = statistics.median(ts) * 1e3
    extra = f"   {med / base:7.2f}x ch-run true" if base else ""
    print(f"{label:<44} median {med:8.2f} ms   min {min(ts) * 1e3:8.2f} ms{extra}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--image", type=Path, default=None)
    args = ap.parse_args()
    from faas_runtime.images import build_from_host
    from _local_agent import LocalAgent

    tmp = Path(tempfile.mkdtemp(prefix="faas-coldstart-"))
    tmp.chmod(0o755)
    image = args.image or build_from_host(tmp / "python")
    env = {"PATH": "/usr/bin:/bin", "USER": os.environ.get("USER", "root"), "HOME": "/"}

    def ch(*argv):
        subprocess.run(["ch-run", "--unset-env=*", str(image), "--", *argv], env=env, check=True)

    ch_true = timed(lambda: ch("/usr/bin/true"), args.n)
    base = statistics.median(ch_true) * 1e3
    print(f"image {image}; cgroups {'on' if os.geteuid() == 0 else 'off'}; n={args.n}")
    row("ch-run true", ch_true)
    row("ch-run python3 -c pass", timed(lambda: ch("/usr/bin/python3", "-c", "pass"), args.n), base)
    row("host python3 -c pass", timed(lambda: subprocess.run(["/usr/bin/python3", "-c", "pass"], check=True), args.n), base)
    row("host python3 -c 'import zmq, msgpack'", timed(lambda: subprocess.run(
        ["/usr/bin/python3", "-c", "import zmq, msgpack"], check=True,
        env={"PYTHONPATH": str(Path(__import__("zmq").__file__).parents[1])}), args.n), base)

    la = LocalAgent(keep_warm_s=3600)
    try:
        cpu = sorted(os.sched_getaffinity(0))[-1]
        for runtime in ("none", "charliecloud"):
            kw = {"image": str(image), "runtime": "charliecloud"} if runtime == "charliecloud" else {}
            cold, warm = [], []
            for i in range(args.n):
                slot = la.lend(1000 + len(cold) + (0 if runtime == "none" else 500), [cpu])
                t0 = time.perf_counter()
                r = la.wait(la.run(slot, "runtime_probe:echo", '"hi"', **kw))
                cold.append(time.perf_counter() - t0)
                assert r.get("outcome") == "ok", r
                for _ in range(5):
                    t0 = time.perf_counter()
                    r = la.wait(la.run(slot, "runtime_probe:echo", '"hi"', **kw))
                    warm.append(time.perf_counter() - t0)
                    assert r.get("outcome") == "ok", r
                la.agent.revoke(la.agent.slots[slot], "bench")  # a fresh slot: the next run is cold again
                while any(ex.slot_id == slot for ex in la.agent.executors.values()):
                    la.step(5)
            row(f"cold start, runtime {runtime}", cold, base)
            row(f"warm invocation via the agent, runtime {runtime}", warm, base)
    finally:
        la.close()
        if args.image is None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
