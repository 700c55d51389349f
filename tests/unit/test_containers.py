"""The argv each container runtime gets for one neutral run spec, exactly."""
import pytest

from faas_runtime import containers as C

SPEC = C.RunSpec(
    image="/images/py.sqfs",
    argv=("/usr/bin/python3", "-m", "faas_runtime.executor", "--run-dir", "/faas/run"),
    binds=(C.Bind("/home/u/fns", "/faas/code"), C.Bind("/var/lib/a/e1", "/faas/run", read_only=False)),
    env={"PYTHONPATH": "/opt/slurm-faas/lib", "USER": "u"},
    workdir="/faas/run", cpus=(2, 3), mem_mb=512,
)


def test_charliecloud():
    assert C.build_argv("charliecloud", SPEC) == [
        "ch-run", "--unset-env=*", "--cd=/faas/run",
        "--set-env=PYTHONPATH=/opt/slurm-faas/lib", "--set-env=USER=u",
        "--bind=/home/u/fns:/faas/code", "--bind=/var/lib/a/e1:/faas/run",
        "/images/py.sqfs", "--", "/usr/bin/python3", "-m", "faas_runtime.executor", "--run-dir", "/faas/run",
    ]


@pytest.mark.parametrize("runtime,program", [("apptainer", "apptainer"), ("singularity", "singularity")])
def test_apptainer_exec(runtime, program):
    assert C.build_argv(runtime, SPEC) == [
        program, "exec", "--cleanenv", "--containall", "--no-home", "--pwd", "/faas/run",
        "--env", "PYTHONPATH=/opt/slurm-faas/lib", "--env", "USER=u",
        "--bind", "/home/u/fns:/faas/code:ro", "--bind", "/var/lib/a/e1:/faas/run:rw",
        "/images/py.sqfs", "/usr/bin/python3", "-m", "faas_runtime.executor", "--run-dir", "/faas/run",
    ]


def test_apptainer_instance_start_for_warm_executors():
    assert C.argv_apptainer_instance(SPEC, "faas-e1") == [
        "apptainer", "instance", "start", "--cleanenv", "--containall", "--no-home",
        "--env", "PYTHONPATH=/opt/slurm-faas/lib", "--env", "USER=u",
        "--bind", "/home/u/fns:/faas/code:ro", "--bind", "/var/lib/a/e1:/faas/run:rw",
        "/images/py.sqfs", "faas-e1",
    ]
    # and the executor then runs in the instance
    inst = C.RunSpec(image="instance://faas-e1", argv=("/usr/bin/python3", "-V"))
    assert C.build_argv("apptainer", inst) == [
        "apptainer", "exec", "--cleanenv", "--containall", "--no-home", "--pwd", "/",
        "instance://faas-e1", "/usr/bin/python3", "-V"]


def test_sarus():
    spec = C.RunSpec(**{**SPEC.__dict__, "image": "load/library/py:3.11"})
    assert C.build_argv("sarus", spec) == [
        "sarus", "run", "--workdir=/faas/run",
        "-e", "PYTHONPATH=/opt/slurm-faas/lib", "-e", "USER=u",
        "--mount=type=bind,source=/home/u/fns,destination=/faas/code,readonly",
        "--mount=type=bind,source=/var/lib/a/e1,destination=/faas/run",
        "load/library/py:3.11", "/usr/bin/python3", "-m", "faas_runtime.executor", "--run-dir", "/faas/run",
    ]


def test_bubblewrap():
    spec = C.RunSpec(**{**SPEC.__dict__, "image": "/images/py"})
    assert C.build_argv("bubblewrap", spec) == [
        "bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--clearenv",
        "--ro-bind", "/images/py", "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
        "--setenv", "PYTHONPATH", "/opt/slurm-faas/lib", "--setenv", "USER", "u",
        "--ro-bind", "/home/u/fns", "/faas/code", "--bind", "/var/lib/a/e1", "/faas/run",
        "--chdir", "/faas/run", "--", "/usr/bin/python3", "-m", "faas_runtime.executor", "--run-dir", "/faas/run",
    ]


def test_none_is_the_argv_itself():
    spec = C.RunSpec(image=None, argv=("/usr/bin/python3", "-c", "pass"))
    assert C.build_argv("none", spec) == ["/usr/bin/python3", "-c", "pass"]


def test_program_path_override():
    assert C.build_argv("charliecloud", SPEC, program="/opt/ch/bin/ch-run")[0] == "/opt/ch/bin/ch-run"


def test_relative_interpreter_is_refused():
    with pytest.raises(C.ContainerError, match="absolute path"):
        C.RunSpec(image="/i", argv=("python3", "-V"))


def test_unknown_runtime_and_missing_image():
    with pytest.raises(C.ContainerError, match="unknown container runtime 'docker'"):
        C.build_argv("docker", SPEC)
    with pytest.raises(C.ContainerError, match="needs an image"):
        C.build_argv("charliecloud", C.RunSpec(image=None, argv=("/bin/true",)))


def test_check_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(C.shutil, "which", lambda prog: None if prog == "sarus" else f"/usr/bin/{prog}")
    with pytest.raises(C.ContainerError, match="sarus is not installed"):
        C.check("sarus", "img")
    with pytest.raises(C.ContainerError, match=f"image {tmp_path}/nope does not exist"):
        C.check("charliecloud", str(tmp_path / "nope"))
    sif = tmp_path / "py.sif"
    sif.write_bytes(b"SIF_MAGIC")
    with pytest.raises(C.ContainerError, match="cannot run a sif image"):
        C.check("charliecloud", str(sif))
    assert C.check("apptainer", str(sif)) == "/usr/bin/apptainer"
    assert C.check("charliecloud", str(tmp_path)) == "/usr/bin/ch-run"
    assert C.check("none", None) == ""


def test_image_kinds(tmp_path):
    sq = tmp_path / "a.img"
    sq.write_bytes(b"hsqs....")
    assert C.image_kind(str(tmp_path)) == "dir"
    assert C.image_kind(str(sq)) == "squashfs"
    assert C.image_kind("/x/y.sif") == "sif"
    assert C.image_kind("/x/y.sqfs") == "squashfs"
