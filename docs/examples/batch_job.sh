#!/bin/bash
# The demo's batch job: computes for a while on its own cores and lends the rest.
#SBATCH --job-name=faas-demo
#SBATCH --nodes=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=8G
#SBATCH --faas-share=cores=4,mem=4G
echo "batch job $SLURM_JOB_ID on $SLURMD_NODENAME: computing"
# The job keeps its cores 0-3. On the dev cluster those are OS CPU 0 (8 declared cores on
# 2 real CPUs, docs/dev-cluster.md), while the lent cores 4-7 are OS CPU 1: pin to ours.
taskset -c 0 python3 - <<'PY'
import hashlib, time
t0, h, rounds = time.time(), b"slurm-faas", 0
while time.time() - t0 < 20:
    for _ in range(20000):
        h = hashlib.sha256(h).digest()
    rounds += 1
print(f"batch job done: {rounds * 20000} hashes, digest {h.hex()[:16]}")
PY
