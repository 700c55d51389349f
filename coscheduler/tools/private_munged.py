"""A throwaway munged: its own key, socket, pid, log and seed files in a temporary directory.
The munge tests and the benchmarks (bench_munge, simulate_cluster) start theirs here, so there
is one recipe to keep right (as private_postgres is for PostgreSQL)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _cli_works(sock: Path) -> bool:
    enc = subprocess.run(["munge", "-n", "-S", str(sock)], capture_output=True)
    return enc.returncode == 0 and subprocess.run(["unmunge", "-S", str(sock)], input=enc.stdout,
                                                  capture_output=True).returncode == 0


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    os.kill(pid, 15)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, 9)


@contextmanager
def private_munged() -> Iterator[str]:
    """Start a munged of its own in a temporary directory; yield its socket path; stop it.
    RuntimeError if it does not start."""
    # Not under pytest's tmp dir: munged checks the owners and modes of every parent.
    root = Path(tempfile.mkdtemp(prefix="faas-munge-"))
    root.chmod(0o755)
    key_dir = root / "key"
    key_dir.mkdir(mode=0o700)
    key = key_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock, pid_file, log = root / "munge.socket", root / "munged.pid", root / "munged.log"
    argv = ["munged", "--socket", str(sock), "--key-file", str(key), "--pid-file", str(pid_file),
            "--log-file", str(log), "--seed-file", str(key_dir / "munged.seed")]
    if os.geteuid() == 0:
        argv.append("--force")  # munged as root (the key dir is root's, as munged wants)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"munged did not start: {out.stderr.strip() or out.stdout.strip()}")
        deadline = time.monotonic() + 10
        while not _cli_works(sock):
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged does not answer on {sock}: {log.read_text() if log.exists() else ''}")
            time.sleep(0.1)
        yield str(sock)
    finally:
        _stop(pid_file)
        shutil.rmtree(root, ignore_errors=True)
