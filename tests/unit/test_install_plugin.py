"""faas-admin install-plugin / uninstall-plugin into temporary directories."""
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from coscheduler.cli.admin import main
from tests.conftest import missing

if shutil.which("cc") is None or not Path("/usr/include/slurm/spank.h").exists():
    missing("cc and <slurm/spank.h> are needed (Debian packages gcc, libslurm-dev; make deps)")


def fake_slurm(tmp_path: Path, version: str) -> dict:
    """sinfo/scontrol on PATH that report version and no running controller."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for tool in ("sinfo", "scontrol"):
        script = bindir / tool
        script.write_text(f'#!/bin/sh\n[ "$1" = -V ] && {{ echo "slurm {version}"; exit 0; }}\nexit 1\n')
        script.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def header_version() -> str:
    from spank_plugin.plugin_build import slurm_header_version
    return slurm_header_version()


def invoke(args, env):
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def test_install_is_idempotent_and_uninstall_removes(tmp_path):
    env = fake_slurm(tmp_path, header_version())
    plugdir, stackdir, spool = tmp_path / "lib", tmp_path / "etc" / "plugstack.conf.d", tmp_path / "spool"
    spool.mkdir(mode=0o700)
    args = ["install-plugin", "--plugin-dir", str(plugdir), "--plugstack-dir", str(stackdir),
            f"spool={spool}", "reserve_cores=1"]
    first = invoke(args, env)
    assert first.exit_code == 0, first.output + first.stderr
    so, snippet = plugdir / "spank_faas.so", stackdir / "faas.conf"
    assert "installed" in first.output and so.stat().st_mode & 0o777 == 0o755
    assert snippet.read_text().splitlines()[-1] == f"optional {so} spool={spool} reserve_cores=1"
    assert "must contain the line" in first.stderr  # no plugstack.conf include yet
    inode = so.stat().st_ino
    again = invoke(args, env)
    assert again.exit_code == 0
    assert f"{so}: unchanged" in again.output and f"{snippet}: unchanged" in again.output
    assert so.stat().st_ino == inode
    changed = invoke(args[:-1] + ["reserve_cores=2"], env)
    assert f"{snippet}: written" in changed.output and "reserve_cores=2" in snippet.read_text()
    gone = invoke(["uninstall-plugin", "--plugin-dir", str(plugdir), "--plugstack-dir", str(stackdir)], env)
    assert gone.exit_code == 0 and not so.exists() and not snippet.exists()
    assert "not there" in invoke(["uninstall-plugin", "--plugin-dir", str(plugdir), "--plugstack-dir",
                                  str(stackdir)], env).output


def test_refuses_a_version_mismatch(tmp_path):
    env = fake_slurm(tmp_path, "23.02.7")
    out = invoke(["install-plugin", "--plugin-dir", str(tmp_path / "lib"), "--plugstack-dir",
                  str(tmp_path / "d")], env)
    assert out.exit_code != 0
    assert f"headers are version {header_version()} but the running Slurm is 23.02.7" in out.stderr
    assert not (tmp_path / "lib").exists() and not (tmp_path / "d").exists()


def test_refuses_a_spool_that_is_not_there(tmp_path):
    env = fake_slurm(tmp_path, header_version())
    args = ["install-plugin", "--plugin-dir", str(tmp_path / "lib"), "--plugstack-dir", str(tmp_path / "d")]
    out = invoke([*args, "spool=/nonexistent"], env)
    assert out.exit_code != 0 and "spool=/nonexistent: No such file or directory" in out.stderr
    assert "nothing was installed" in out.stderr and not (tmp_path / "lib").exists()
    (tmp_path / "open").mkdir(mode=0o777)
    (tmp_path / "open").chmod(0o777)
    out = invoke([*args, f"spool={tmp_path / 'open'}"], env)
    assert out.exit_code != 0 and "must be root's and 0700" in out.stderr
    out = invoke([*args, "--no-spool-check", "spool=/nonexistent"], env)
    assert out.exit_code == 0, out.stderr


def test_refuses_a_bad_argument(tmp_path):
    env = fake_slurm(tmp_path, header_version())
    out = invoke(["install-plugin", "--plugin-dir", str(tmp_path / "lib"), "--plugstack-dir", str(tmp_path / "d"),
                  "reserve_cores=lots"], env)
    assert out.exit_code != 0 and "reserve_cores" in out.stderr
    assert not (tmp_path / "lib").exists()


def test_plugin_dir_from_scontrol_show_config(tmp_path, monkeypatch):
    from coscheduler.cli.admin import plugin

    monkeypatch.setattr(plugin, "_run", lambda argv: "Foo = 1\nPluginDir               = /opt/slurm/lib:/x\n")
    assert plugin.find_plugin_dir()[0] == Path("/opt/slurm/lib")
    monkeypatch.setattr(plugin, "_run", lambda argv: None)
    assert plugin.find_plugin_dir()[0] == plugin.DEBIAN_PLUGIN_DIR
