"""Build tests/functions/native_fns.c (the native test functions) into a directory, which
then serves as the functions' code dir: entrypoints ``libnative_fns.so:<symbol>``.
Never committed as a binary; the tests and benchmarks build it with the C compiler."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "native_fns.c"
LIBRARY = "libnative_fns.so"


def fnv1a(data: bytes) -> str:
    """The checksum the ``digest`` test function computes (64-bit FNV-1a, hex)."""
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def build(dest: Path) -> Path:
    """Compile into ``dest`` and return ``dest`` (the code dir); RuntimeError without cc."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc): apt-get install gcc")
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-I", str(HERE.parents[1] / "csrc"),
                    "-o", str(dest / LIBRARY), str(SOURCE)], check=True, capture_output=True, text=True)
    return dest
