"""Print where each invocation ran: the demo's table. Usage: show_invocations.py FIRST LAST"""
import json
import os
import sys

from faas_runtime.queue_client import Client


def main() -> None:
    first, last = int(sys.argv[1]), int(sys.argv[2])
    with Client(os.environ["FAAS_COSCHEDULER"], os.environ.get("FAAS_MUNGE_SOCKET")) as client:
        print(f"{'INV':<4} {'STATE':<10} {'NODE':<5} {'JOB':<4} {'LENT CORES':<13} {'RAN ON OS CPUS':<15} RESULT")
        for inv in range(first, last + 1):
            st = client.wait(inv, timeout_s=120)
            result = ""
            if st["state"] == "SUCCEEDED":
                r = json.loads(client.result_json(inv))
                result = f"chain of {r['length']} steps from {r['best']} (function saw job {r['job']})"
            print(f"{inv:<4} {st['state']:<10} {st['node'] or '-':<5} {st['job_id'] or '-':<4} "
                  f"{str(st['slurm_cpus']):<13} {str(st['ran_on_cpus']):<15} {result or st['error']}")


if __name__ == "__main__":
    main()
