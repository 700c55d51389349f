"""Decoding munge credentials: libmunge through faas_runtime.munge vs forking unmunge.

    .venv/bin/python bench/bench_munge.py [--socket PATH] [--n 2000] [--forks 200]

Every figure comes from one run against one munged: a private one started here (as
tests/unit/test_munge.py does) unless --socket names a running one. Each credential
is decoded once (munged refuses replays), so all of them are encoded beforehand.
Printed: µs per credential for libmunge on 1 thread and on 4 threads in parallel
(wall time / credentials), for ``unmunge`` forked per credential (what
coscheduler/auth.py does), the ratios, a bogus credential's refusal, and the cost of a
munge_ctx per call (what caching one per thread would save).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faas_runtime import munge  # noqa: E402
from coscheduler.tools.private_munged import private_munged  # noqa: E402


def per_cred_us(fn, creds: list[str], threads: int = 1) -> float:
    start = time.perf_counter()
    if threads == 1:
        for cred in creds:
            fn(cred)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fn, creds))
    return (time.perf_counter() - start) / len(creds) * 1e6


def ctx_overhead_us(sock: str, n: int) -> float:
    """munge_ctx_create + MUNGE_OPT_SOCKET + munge_ctx_destroy, as decode() does per call."""
    start = time.perf_counter()
    for _ in range(n):
        with munge._context(sock):
            pass
    return (time.perf_counter() - start) / n * 1e6


def refused_us(sock: str, cred: str, n: int) -> tuple[float, str]:
    code = ""
    start = time.perf_counter()
    for _ in range(n):
        try:
            munge.decode(cred, socket=sock)
        except munge.MungeError as err:
            code = err.code
    return (time.perf_counter() - start) / n * 1e6, code


def run(sock: str, n: int, forks: int) -> None:
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"cpus: {os.cpu_count()}  munged socket: {sock}  credentials: {n} per libmunge row, {forks} forked")
    decode = lambda c: munge.decode(c, socket=sock)  # noqa: E731

    def unmunge(cred: str) -> None:
        subprocess.run(["unmunge", "-S", sock], input=cred, capture_output=True, text=True, check=True)

    decode(munge.encode(b"warm-up", socket=sock))
    start = time.perf_counter()
    fresh = [munge.encode(b"%064d" % i, socket=sock) for i in range(2 * n + forks)]
    encode_us = (time.perf_counter() - start) / len(fresh) * 1e6
    one = per_cred_us(decode, fresh[:n])
    four = per_cred_us(decode, fresh[n:2 * n], threads=4)
    fork = per_cred_us(unmunge, fresh[2 * n:])

    valid = munge.encode(b"x" * 64, socket=sock)
    tampered = valid[:30] + ("A" if valid[30] != "A" else "B") + valid[31:]
    bogus_us, bogus_code = refused_us(sock, tampered, n // 4)
    garbage_us, garbage_code = refused_us(sock, "MUNGE:not-a-credential:", n // 4)

    print(f"{'what':48} {'us/cred':>9} {'vs unmunge':>11}")
    for what, us in [("libmunge decode, 1 thread", one), ("libmunge decode, 4 threads (wall/cred)", four),
                     ("unmunge forked per credential", fork), ("libmunge encode, 1 thread", encode_us)]:
        print(f"{what:48} {us:9.1f} {fork / us:10.1f}x")
    print(f"{'bogus cred (tampered), refused as ' + bogus_code:48} {bogus_us:9.1f}")
    print(f"{'garbage string, refused as ' + garbage_code:48} {garbage_us:9.1f}")
    ctx_us = ctx_overhead_us(sock, n)
    print(f"{'munge_ctx create+set+destroy per call':48} {ctx_us:9.1f}   ({ctx_us / one:.1%} of a decode)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", help="a running munged's socket (default: start a private one)")
    ap.add_argument("--n", type=int, default=2000, help="credentials per libmunge row")
    ap.add_argument("--forks", type=int, default=200, help="credentials decoded by forking unmunge")
    args = ap.parse_args()
    if not munge.available():
        raise SystemExit("the libmunge binding is not built: python3 -m faas_runtime._build_munge")
    with ExitStack() as stack:
        sock = args.socket or stack.enter_context(private_munged())
        run(sock, args.n, args.forks)


if __name__ == "__main__":
    main()
