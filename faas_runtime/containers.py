"""One neutral run spec, turned into an argv by one small function per container runtime.

The agent describes what an executor needs (image, argv, binds, environment, working
directory, CPUs, memory) once, as a ``RunSpec``; ``build_argv`` picks the template of the
runtime. Templates are pure: they never touch the filesystem or run anything, so the
exact argv of every runtime is unit-tested, including the ones (Apptainer, Sarus) that
cannot be installed on the test machines. ``check`` is the one place that looks at the
host: is the runtime's program installed, does the image exist.

Every template passes a clean environment (only ``spec.env``) and expects the spec's
argv to start with an absolute interpreter path (``/usr/bin/python3``), so no host PATH
or host interpreter leaks into the container.

Confinement (cgroup, uid) is not the runtime's job here: the agent starts the runtime
inside the executor's cgroup as the function owner (``faas_runtime.confinement``), and
every runtime listed runs unprivileged.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

# What each runtime's program is called on the host.
PROGRAMS = {"charliecloud": "ch-run", "apptainer": "apptainer", "singularity": "singularity",
            "sarus": "sarus", "bubblewrap": "bwrap", "bwrap": "bwrap"}


class ContainerError(Exception):
    """The executor cannot be started: unknown or missing runtime, missing image."""


@dataclass(frozen=True)
class Bind:
    source: str  # host path
    target: str  # path inside the container
    read_only: bool = True


@dataclass(frozen=True)
class RunSpec:
    image: Optional[str]  # a directory, a SquashFS file or a SIF file; None without container
    argv: tuple[str, ...]  # argv[0] is an absolute path inside the image
    binds: tuple[Bind, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    cpus: tuple[int, ...] = ()  # informational: the cgroup enforces them
    mem_mb: int = 0  # informational: the cgroup enforces it

    def __post_init__(self) -> None:
        if not self.argv or not self.argv[0].startswith("/"):
            raise ContainerError(f"the executor's argv must start with an absolute path, got {self.argv[:1]}")


def image_kind(image: str) -> str:
    """'dir', 'squashfs' or 'sif', from the path (and the magic bytes of a file)."""
    if image.endswith("/") or os.path.isdir(image):
        return "dir"
    if image.endswith(".sif"):
        return "sif"
    if image.endswith((".sqfs", ".squashfs", ".sqsh")):
        return "squashfs"
    try:  # O_NONBLOCK: a FIFO in the image's place must not hang the check
        fd = os.open(image, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            magic = os.read(fd, 4)
        finally:
            os.close(fd)
    except OSError:
        return "dir"
    return "squashfs" if magic == b"hsqs" else "sif"


def _env_pairs(env: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(env.items())]


def argv_none(spec: RunSpec, program: str = "") -> list[str]:
    """No container: the argv itself (the caller passes ``spec.env`` as the whole environment)."""
    return list(spec.argv)


def argv_charliecloud(spec: RunSpec, program: str = "ch-run") -> list[str]:
    """``ch-run``: directory images as they are, SquashFS images through its own mount."""
    argv = [program, "--unset-env=*", f"--cd={spec.workdir}"]  # no $HOME bind: the default
    for key, value in sorted(spec.env.items()):
        argv.append(f"--set-env={key}={value}")
    for b in spec.binds:
        argv.append(f"--bind={b.source}:{b.target}")  # ch-run binds are read-only unless -w
    argv += [spec.image or "", "--", *spec.argv]
    return argv


def argv_apptainer(spec: RunSpec, program: str = "apptainer") -> list[str]:
    """``apptainer exec`` (and ``singularity exec``): SIF, SquashFS or sandbox directory."""
    argv = [program, "exec", "--cleanenv", "--containall", "--no-home", "--pwd", spec.workdir]
    for key, value in sorted(spec.env.items()):
        argv += ["--env", f"{key}={value}"]
    for b in spec.binds:
        argv += ["--bind", f"{b.source}:{b.target}:{'ro' if b.read_only else 'rw'}"]
    return argv + [spec.image or "", *spec.argv]


def argv_apptainer_instance(spec: RunSpec, name: str, program: str = "apptainer") -> list[str]:
    """``apptainer instance start``: a named, long-lived container for a warm executor.

    The executor is then started in it with ``apptainer exec instance://NAME ...``
    (``argv_apptainer`` with ``image=f"instance://{name}"``).
    """
    argv = [program, "instance", "start", "--cleanenv", "--containall", "--no-home"]
    for key, value in sorted(spec.env.items()):
        argv += ["--env", f"{key}={value}"]
    for b in spec.binds:
        argv += ["--bind", f"{b.source}:{b.target}:{'ro' if b.read_only else 'rw'}"]
    return argv + [spec.image or "", name]


def argv_sarus(spec: RunSpec, program: str = "sarus") -> list[str]:
    """``sarus run``: images come from Sarus' own repository (pulled or loaded by the site)."""
    argv = [program, "run", f"--workdir={spec.workdir}"]
    for key, value in sorted(spec.env.items()):
        argv += ["-e", f"{key}={value}"]
    for b in spec.binds:
        opts = ",readonly" if b.read_only else ""
        argv.append(f"--mount=type=bind,source={b.source},destination={b.target}{opts}")
    return argv + [spec.image or "", *spec.argv]


def argv_bubblewrap(spec: RunSpec, program: str = "bwrap") -> list[str]:
    """``bwrap``: the image directory as the root, a private /proc, /dev and /tmp."""
    argv = [program, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--clearenv",
            "--ro-bind", spec.image or "/", "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for key, value in sorted(spec.env.items()):
        argv += ["--setenv", key, value]
    for b in spec.binds:
        argv += ["--ro-bind" if b.read_only else "--bind", b.source, b.target]
    return argv + ["--chdir", spec.workdir, "--", *spec.argv]


TEMPLATES: dict[str, Callable[..., list[str]]] = {
    "none": argv_none,
    "charliecloud": argv_charliecloud,
    "apptainer": argv_apptainer,
    "singularity": argv_apptainer,
    "sarus": argv_sarus,
    "bubblewrap": argv_bubblewrap,
    "bwrap": argv_bubblewrap,
}

# The runtimes a user, a function or an agent may name: "none" (no container) and one
# name per template ("bwrap" is bubblewrap under its program's name). Command lines and
# request validation take their choices from here.
RUNTIME_NAMES: tuple[str, ...] = tuple(TEMPLATES)

# Which image kinds each runtime takes (a wrong one is refused before anything starts).
IMAGE_KINDS = {
    "charliecloud": {"dir", "squashfs"},
    "apptainer": {"dir", "squashfs", "sif"},
    "singularity": {"dir", "squashfs", "sif"},
    "bubblewrap": {"dir"},
    "bwrap": {"dir"},
}


def build_argv(runtime: str, spec: RunSpec, program: Optional[str] = None) -> list[str]:
    """The argv that runs ``spec`` under ``runtime`` (a pure function of its inputs)."""
    try:
        template = TEMPLATES[runtime]
    except KeyError:
        raise ContainerError(f"unknown container runtime {runtime!r}; known: {', '.join(RUNTIME_NAMES)}") from None
    if runtime != "none" and not spec.image:
        raise ContainerError(f"runtime {runtime} needs an image")
    if program is None:
        program = PROGRAMS.get(runtime, "")
    return template(spec, program=program)


def check(runtime: str, image: Optional[str]) -> str:
    """Resolve the runtime's program on this host and check the image; return the program path.

    Raises ContainerError with the reason the invocation fails (never a hang later). The
    image is the user's path: a root process checks it with ``check_image`` as the user.
    """
    found = program(runtime)
    check_image(runtime, image)
    return found


def program(runtime: str) -> str:
    """The runtime's program on this host ("" for none)."""
    if runtime not in TEMPLATES:
        raise ContainerError(f"unknown container runtime {runtime!r}; known: {', '.join(RUNTIME_NAMES)}")
    if runtime == "none":
        return ""
    found = shutil.which(PROGRAMS[runtime])
    if found is None:
        raise ContainerError(f"container runtime {runtime} is not installed on this node "
                             f"({PROGRAMS[runtime]} not found)")
    return found


def check_image(runtime: str, image: Optional[str]) -> None:
    """That ``image`` exists and is of a kind ``runtime`` runs (reads the image's path: call
    it as the image's user, faas_runtime.as_user)."""
    if runtime == "none":
        return
    if not image:
        raise ContainerError(f"runtime {runtime} needs an image")
    if runtime == "sarus":
        return  # Sarus images live in its own repository, named not by path
    try:
        exists = Path(image).exists()
    except PermissionError:  # looked at as the function's owner: a directory on the way is not theirs
        exists = False
    if not exists:
        raise ContainerError(f"container image {image} does not exist on this node, or its owner cannot reach it")
    kind = image_kind(image)
    if kind not in IMAGE_KINDS[runtime]:
        raise ContainerError(f"runtime {runtime} cannot run a {kind} image ({image})")
