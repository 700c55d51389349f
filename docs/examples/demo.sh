#!/usr/bin/env bash
# The slurm-faas demo (the README's main job): a local Slurm cluster, a batch job that
# lends 4 of its 8 cores and 4 GiB, and a few dozen function invocations backfilled onto
# those spare cores. Needs root (it starts Slurm) and `make venv` done; `make demo` does both.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export FAAS_DEV_CLUSTER_DIR="${FAAS_DEV_CLUSTER_DIR:-/var/tmp/slurm-faas-demo}"
N="${DEMO_INVOCATIONS:-36}"

step() { printf '\n== %s\n' "$*"; }

step "starting the dev cluster in $FAAS_DEV_CLUSTER_DIR"
faas-admin dev-cluster up
trap 'step "tearing down"; faas-admin dev-cluster down' EXIT
eval "$(faas-admin dev-cluster env)"
faas-admin dev-cluster status

step "submitting the batch job: sbatch --faas-share=cores=4,mem=4G"
job=$(sbatch --parsable --output="$FAAS_DEV_CLUSTER_DIR/jobs/demo-job-%j.out" "$here/batch_job.sh")
echo "job $job"
for _ in $(seq 100); do
  faas-admin slots | grep -qE "^\S+ +$job +ACTIVE" && break
  sleep 0.1
done
faas-admin slots

step "registering the function and invoking it $N times"
submit-function register collatz --entrypoint demo_functions:collatz --code "$here/functions" \
  --cores 1 --mem 256M --timeout 60
ids=()
for i in $(seq 1 "$N"); do
  ids+=("$(submit-function invoke collatz --payload "{\"i\": $i, \"limit\": $((20000 + 500 * i))}")")
done
echo "invocations ${ids[0]}..${ids[-1]} queued"

step "where each invocation ran"
python3 "$here/show_invocations.py" "${ids[0]}" "${ids[-1]}"

step "the batch job finishes normally"
while squeue -h -j "$job" 2>/dev/null | grep -q .; do sleep 1; done
grep -h "JobId=$job " "$FAAS_DEV_CLUSTER_DIR/log/jobcomp.txt" | tr ' ' '\n' | grep -E '^(JobId|JobState|ExitCode|NodeList)='
cat "$FAAS_DEV_CLUSTER_DIR/jobs/demo-job-$job.out"
faas-admin slots
