"""The mutation score of `make mutation` (mutmut, pyproject.toml [tool.mutmut]).

Reads ``mutmut results --all true``, prints the score per file and every surviving mutant
(``mutmut show NAME`` prints its diff), and exits 1 when the score is below ``--min``.
Score: killed (a test failed, or the mutant hung and timed out) of all mutants that ran.
The survivors known to be equivalent or performance-only are explained in
docs/dev-cluster.md (Mutation testing).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {"killed", "timeout"}
NOT_RUN = {"not checked", "skipped", "no tests"}


def results(mutmut: str) -> dict[str, str]:
    out = subprocess.run([mutmut, "results", "--all", "true"], capture_output=True, text=True, check=True)
    found = {}
    for line in out.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            found[name] = status.strip()
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min", type=float, default=0.0, help="fail below this killed share (0..1)")
    ap.add_argument("--mutmut", default=str(Path(sys.executable).with_name("mutmut")))
    args = ap.parse_args()
    found = results(args.mutmut)
    if not found:
        print("mutation: no mutants found (did `mutmut run` run?)")
        return 1
    per_module: dict[str, Counter] = defaultdict(Counter)
    for name, status in found.items():
        per_module[name.split(".x")[0]][status] += 1
    ran = {n: s for n, s in found.items() if s not in NOT_RUN}
    killed = sum(1 for s in ran.values() if s in KILLED)
    for module, counts in sorted(per_module.items()):
        print(f"mutation: {module}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for name, status in sorted(ran.items()):
        if status not in KILLED:
            print(f"mutation: {status}: {name}")
    score = killed / len(ran) if ran else 0.0
    print(f"mutation: score {killed}/{len(ran)} = {score:.1%} (minimum {args.min:.0%})")
    return 0 if score >= args.min else 1


if __name__ == "__main__":
    sys.exit(main())
