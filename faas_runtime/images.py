"""Build a small Charliecloud image directory with Python, from the host, without a registry.

    python -m faas_runtime.images build DEST            # host's /usr/bin/python3 (seconds)
    python -m faas_runtime.images build --debootstrap DEST   # debootstrap minbase (about 50 s)

The default copies the host's Debian interpreter, its standard library and every shared
library that it, ``true``, ``sh`` and the executor's compiled dependencies (pyzmq,
msgpack) load (found with ``ldd``). Either way the image gets the mount points the agent
binds into (``/faas/code``, ``/faas/run``, ``/opt/slurm-faas/lib/<package>``) and the
files ch-run binds over (``/etc/passwd`` ...), and an empty ``/dev``.

The agent binds its own runtime packages (faas_runtime, zmq, msgpack) into the image at
``/opt/slurm-faas/lib``, so any image with a CPython of the agent's minor version works;
images with another Python need those packages installed.

Owns: building and checking container images (mount points). May not touch: running them.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# Mount points the agent binds into (see faas_runtime.agent); they must exist in the image.
CODE_DIR = "/faas/code"
RUN_DIR = "/faas/run"
CTL_DIR = "/faas/ctl"  # the executor's control socket (a directory of the agent's, bound in)
LIB_DIR = "/opt/slurm-faas/lib"
# cloudpickle where the agent has it: the Python API's by-value calls (faas_runtime.pyapi).
RUNTIME_PACKAGES = ("faas_runtime", "zmq", "msgpack", "pyzmq.libs", "cloudpickle")
MOUNT_POINTS = ("dev", "proc", "sys", "tmp", "home", "mnt", "run", "var/tmp", CODE_DIR[1:], RUN_DIR[1:], CTL_DIR[1:],
                *(f"{LIB_DIR[1:]}/{p}" for p in RUNTIME_PACKAGES))
BOUND_FILES = ("etc/passwd", "etc/group", "etc/hosts", "etc/resolv.conf", "etc/nsswitch.conf")

_LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


def _shared_libs(binaries: list[str]) -> set[str]:
    libs: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            m = _LDD_LINE.search(line)
            if m and "pyzmq.libs" not in m.group(1):  # pyzmq's own libs come with the bind
                libs.add(m.group(1))
    return libs


def _copy(path: str, root: Path) -> None:
    """Copy ``path`` (following symlinks for the content, keeping the link name) into root."""
    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if os.path.islink(path):
        real = os.path.realpath(path)
        _copy(real, root)
        if not dest.exists() and not dest.is_symlink():
            os.symlink(real, dest)
    elif not dest.exists():
        shutil.copy2(path, dest)


def _finish(root: Path) -> Path:
    for sub in MOUNT_POINTS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    dev = root / "dev"
    for entry in dev.iterdir():  # never carry device files (or their contents) into an image
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for name in BOUND_FILES:
        f = root / name
        f.parent.mkdir(parents=True, exist_ok=True)
        if not f.exists():
            f.write_text("")
    (root / "tmp").chmod(0o1777)
    for d in [root, *[p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()]]:
        d.chmod(d.stat().st_mode | 0o555)  # every user may run the image
    return root


def build_from_host(dest: Path, python: str = "/usr/bin/python3") -> Path:
    """An image with the host's Debian Python; a few seconds, about 60 MB."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    real_python = os.path.realpath(python)
    version = subprocess.run([real_python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    stdlib = Path(f"/usr/lib/python{version}")
    shutil.copytree(stdlib, dest / stdlib.relative_to("/"), symlinks=True,
                    ignore=shutil.ignore_patterns("test", "tests", "idlelib", "tkinter", "ensurepip", "lib2to3",
                                                  "turtledemo"))
    # Bytecode in the image: executors run with PYTHONDONTWRITEBYTECODE on a read-only image,
    # and compiling the stdlib at every start would cost tens of ms of cold start.
    subprocess.run([real_python, "-m", "compileall", "-q", "-j0", str(dest / stdlib.relative_to("/"))],
                   capture_output=True)
    for tool in (real_python, shutil.which("true") or "/usr/bin/true", "/bin/sh", "/usr/bin/env",
                 "/usr/bin/id", "/usr/bin/cat"):
        _copy(tool, dest)
    for name in ("python3", f"python{version}"):
        link = dest / "usr/bin" / name
        if not link.exists():
            os.symlink(os.path.basename(real_python), link)
    binaries = [real_python, "/bin/sh", "/usr/bin/true"] + [str(p) for p in stdlib.glob("lib-dynload/*.so")]
    for pkg in ("zmq", "msgpack"):
        try:
            mod = __import__(pkg)
            binaries += [str(p) for p in Path(mod.__file__).parent.rglob("*.so")]
        except ImportError:
            pass
    for lib in _shared_libs(binaries):
        _copy(lib, dest)
    for loader in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"):
        if os.path.exists(loader):
            _copy(loader, dest)
    return _finish(dest)


def build_debootstrap(dest: Path, suite: str = "bookworm") -> Path:
    """A minbase Debian with python3 (needs debootstrap and a Debian mirror; about 50 s)."""
    dest = Path(dest)
    subprocess.run(["debootstrap", "--variant=minbase", "--include=python3", suite, str(dest)], check=True)
    for sub in ("usr/share/doc", "usr/share/locale", "usr/share/man", "var/cache/apt/archives"):
        shutil.rmtree(dest / sub, ignore_errors=True)
    return _finish(dest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m faas_runtime.images")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a Python image directory")
    b.add_argument("dest", type=Path)
    b.add_argument("--debootstrap", action="store_true", help="debootstrap a minbase Debian instead")
    args = ap.parse_args(argv)
    root = build_debootstrap(args.dest) if args.debootstrap else build_from_host(args.dest)
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
