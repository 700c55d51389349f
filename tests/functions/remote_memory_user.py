"""A user's program for tests/integration/test_remote_memory_lease.py, run as that user
with the system Python: lease remote memory on slot ``argv[2]`` through slurm_faas, write
and read it, then obey one command a line on stdin, answering one JSON line each:

  read            read the pattern back
  until-revoked   read in a loop until the lend goes: which error, its reason, and
                  whether any read returned other bytes than were written
  release         give the memory back
"""
import json
import sys
import time

from slurm_faas import LeaseUnavailable, RemoteMemoryRevoked, remote_memory

PATTERN = bytes(range(256)) * 4096  # 1 MiB


def say(doc: dict) -> None:
    print(json.dumps(doc), flush=True)


def lease_on(slot_id: str, size: int):
    """Other tests' jobs may lend too: ask until the lease is on this test's slot."""
    deadline = time.monotonic() + 60
    while True:
        try:
            mem = remote_memory(size, duration_s=300, timeout_s=30)
            if mem.slot_id == slot_id:
                return mem
            mem.release()
        except LeaseUnavailable:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def main() -> None:
    size, slot_id = int(sys.argv[1]), sys.argv[2]
    mem = lease_on(slot_id, size)
    mem.write(0, PATTERN)
    mem.write(size - len(PATTERN), PATTERN)
    ok = mem.read(0, len(PATTERN)) == PATTERN and mem.read(size - len(PATTERN), len(PATTERN)) == PATTERN
    say({"slot_id": mem.slot_id, "control": mem.control_endpoint, "size": mem.size, "ok": ok})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "read":
            say({"ok": mem.read(0, len(PATTERN)) == PATTERN})
        elif cmd == "until-revoked":
            reads = stale = 0
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    data = mem.read(0, len(PATTERN))
                except RemoteMemoryRevoked as exc:
                    say({"error": type(exc).__name__, "reason": getattr(exc, "reason", str(exc)), "reads": reads,
                         "stale": stale})
                    break
                reads += 1
                stale += data != PATTERN
                time.sleep(0.01)
            else:
                say({"error": None, "reads": reads, "stale": stale})
        elif cmd == "release":
            mem.release()
            say({"released": True})


if __name__ == "__main__":
    main()
