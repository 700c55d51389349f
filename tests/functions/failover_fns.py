"""The failover test's no-op (tests/integration/test_failover.py, bench/bench_failover.py):
each run appends its number to a tally file, so the test counts how often each ran."""
import os


def tally(payload):
    # One write of one short line with O_APPEND: lines of concurrent runs never interleave.
    fd = os.open(payload["file"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{payload['n']}\n".encode())
    finally:
        os.close(fd)
    return payload["n"]
