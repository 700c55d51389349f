"""faas-admin install-node / install-head / uninstall-*: units systemd accepts, private
directories, a site's configuration never replaced, idempotent runs (into a --root)."""
from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

from click.testing import CliRunner

from coscheduler.cli.admin import main
from tests.conftest import missing


def _admin(*args: str):
    out = CliRunner().invoke(main, list(args))
    assert out.exit_code == 0, out.output
    return out.output


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_install_head_and_node_put_units_config_and_private_dirs(tmp_path):
    root = tmp_path / "root"
    assert "faas-coscheduler.service" in _admin("install-head", "--root", str(root))
    assert "nothing to change" in _admin("install-head", "--root", str(root))
    assert "faas-agent.service" in _admin("install-node", "--root", str(root), "--without-plugin")
    assert "nothing to change" in _admin("install-node", "--root", str(root), "--without-plugin")
    units = root / "etc/systemd/system"
    for name, program in (("faas-coscheduler.service", "faas-coscheduler"), ("faas-agent.service", "faas-agent")):
        text = (units / name).read_text()
        exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        binary = Path(exec_start.split("=", 1)[1].split()[0])
        assert binary.name == program and binary.exists()  # by absolute path, where this package is
    assert "--foreground" in (units / "faas-coscheduler.service").read_text()  # systemd supervises it
    assert "Delegate=yes" in (units / "faas-agent.service").read_text()  # the agent's cgroups
    etc = root / "etc/slurm-faas"
    assert _mode(etc / "coscheduler.toml") == 0o600 and _mode(etc / "agent.toml") == 0o600
    assert _mode(root / "var/lib/slurm-faas") == 0o711 and _mode(root / "var/spool/slurm-faas") == 0o700
    # Head and node on one host: every directory above the agent's run directories is searchable by
    # the function owners, none of them listable (the co-scheduler's unit sets the same mode).
    for d in (root / "var/lib/slurm-faas/agent").relative_to(root).parents:
        if d != Path("."):
            assert _mode(root / d) & 0o001, d
    assert not _mode(root / "var/lib/slurm-faas") & 0o004
    assert "StateDirectoryMode=0711" in (units / "faas-coscheduler.service").read_text()
    assert _mode(root / "var/log/slurm-faas") == 0o700 and _mode(root / "var/lib/slurm-faas/agent") == 0o711
    # A site's configuration is its own: a re-run keeps it.
    (etc / "agent.toml").write_text('coscheduler = "tcp://head:7800"\n')
    _admin("install-node", "--root", str(root), "--without-plugin")
    assert (etc / "agent.toml").read_text() == 'coscheduler = "tcp://head:7800"\n'
    refused = CliRunner().invoke(main, ["install-node", "--root", str(root)])  # the plugin needs a booted node
    assert refused.exit_code == 2 and "--without-plugin" in refused.output
    _admin("uninstall-node", "--root", str(root), "--without-plugin")
    _admin("uninstall-head", "--root", str(root))
    assert not list(units.iterdir()) and (etc / "agent.toml").exists()


def test_systemd_accepts_the_units(tmp_path):
    if shutil.which("systemd-analyze") is None:
        missing("systemd-analyze is not installed (Debian package systemd; make deps)")
    root = tmp_path / "root"
    _admin("install-head", "--root", str(root))
    _admin("install-node", "--root", str(root), "--without-plugin")
    units = sorted((root / "etc/systemd/system").glob("*.service"))
    assert len(units) == 2
    out = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_agent_takes_its_options_from_its_toml_file(tmp_path):
    from faas_runtime.agent import main as agent_main

    cfg = tmp_path / "agent.toml"
    cfg.write_text('node = "x"\ncoscheduler = "tcp://127.0.0.1:1"\nbogus = 1\n')
    out = CliRunner().invoke(agent_main, ["--config", str(cfg)])
    assert out.exit_code == 2 and "unknown key 'bogus'" in out.output
