"""faas-admin install-node / install-head, and their uninstall: what a site's configuration
management runs on each host. Idempotent: a second run changes nothing and says so.

install-node  the agent's systemd unit, /etc/slurm-faas/agent.toml (kept if present), the
              spool (root's, 0700) and the agent's work directory; then, unless
              --without-plugin, the SPANK plugin (as `faas-admin install-plugin` does)
install-head  the co-scheduler's unit, /etc/slurm-faas/coscheduler.toml (kept if present),
              /var/lib/slurm-faas (0711) and /var/log/slurm-faas (0700)
uninstall-*   remove the units (and, for a node, the plugin); configuration, the queue and
              the spool stay (remove them by hand, as `apt purge` would)

``--root DIR`` installs under DIR (a node image, or a test). systemd is told to reload
only when it runs (PID 1) and the root is /.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from .plugin import _install_file as install_file

UNITS = Path(__file__).resolve().parents[3] / "slurm.conf.d" / "systemd"
ROLES = {
    "node": {"unit": "faas-agent.service", "config": "agent.toml",
             "dirs": {"var/spool/slurm-faas": 0o700, "var/lib/slurm-faas/agent": 0o711}},
    "head": {"unit": "faas-coscheduler.service", "config": "coscheduler.toml",
             # 0711: searchable for the run directories of an agent on the same host, never listable
             # (the unit's StateDirectoryMode says the same; the queue inside is 0600)
             "dirs": {"var/lib/slurm-faas": 0o711, "var/log/slurm-faas": 0o700}},
}


def _bin_dir() -> str:
    """Where this installation's console scripts are (the unit runs them by absolute path)."""
    return str(Path(sys.argv[0]).resolve().parent if Path(sys.argv[0]).name == "faas-admin"
               else Path(sys.executable).parent)


def _put(dst: Path, text: str, mode: int) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / dst.name
        src.write_text(text)
        return install_file(src, dst, mode)


def _reload(root: Path) -> None:
    if root == Path("/") and Path("/proc/1/comm").read_text().strip() == "systemd":
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    else:
        click.echo("systemd is not running here: run `systemctl daemon-reload` where the units are used")


def install(role: str, root: Path) -> list[str]:
    """Put ``role``'s unit, configuration and directories under ``root``; what changed."""
    spec, changed = ROLES[role], []
    unit = (UNITS / f"{spec['unit']}.in").read_text().replace("@BIN@", _bin_dir())
    if _put(root / "etc/systemd/system" / spec["unit"], unit, 0o644):
        changed.append(f"/etc/systemd/system/{spec['unit']}")
    config = root / "etc/slurm-faas" / spec["config"]
    if not config.exists():  # a site's own configuration is never replaced
        _put(config, (UNITS / spec["config"]).read_text(), 0o600)
        changed.append(f"/etc/slurm-faas/{spec['config']}")
    for rel, mode in spec["dirs"].items():
        d = root / rel
        if not d.is_dir() or (d.stat().st_mode & 0o777) != mode:
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, mode)
            changed.append(f"/{rel}")
    return changed


def uninstall(role: str, root: Path) -> list[str]:
    unit = root / "etc/systemd/system" / ROLES[role]["unit"]
    if unit.exists():
        unit.unlink()
        return [f"/etc/systemd/system/{unit.name}"]
    return []


def _report(what: str, changed: list[str]) -> None:
    click.echo(f"{what}: " + (", ".join(changed) if changed else "nothing to change"))


root_option = click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"),
                           show_default=True, help="install under this directory (a node image, a test)")


@click.command("install-node")
@root_option
@click.option("--with-plugin/--without-plugin", default=True, show_default=True,
              help="also build and install the SPANK plugin (as install-plugin does)")
@click.argument("plugin_args", nargs=-1)
@click.pass_context
def install_node_command(ctx, root: Path, with_plugin: bool, plugin_args: tuple[str, ...]) -> None:
    """Install a compute node: the agent's unit and configuration, the spool, the plugin
    (PLUGIN_ARGS as for install-plugin, e.g. spool=/var/spool/slurm-faas)."""
    if with_plugin and root != Path("/"):
        # The plugstack line names the plugin by the path it has on the node, and the plugin is
        # built against the node's Slurm: that is install-plugin's work on a booted node.
        raise click.UsageError("the SPANK plugin is installed on a running node (faas-admin install-plugin); "
                               "with --root, use --without-plugin")
    _report("installed", install("node", root))
    if with_plugin:
        from .plugin import install_plugin_command

        ctx.invoke(install_plugin_command, args=plugin_args)
    _reload(root)


@click.command("install-head")
@root_option
def install_head_command(root: Path) -> None:
    """Install the co-scheduler's host: its unit, configuration, state and log directories."""
    _report("installed", install("head", root))
    _reload(root)


@click.command("uninstall-node")
@root_option
@click.option("--with-plugin/--without-plugin", default=True, show_default=True)
@click.pass_context
def uninstall_node_command(ctx, root: Path, with_plugin: bool) -> None:
    """Remove the agent's unit (and the plugin); configuration and the spool stay."""
    if with_plugin and root != Path("/"):
        raise click.UsageError("with --root, use --without-plugin (uninstall-plugin works on a running node)")
    _report("removed", uninstall("node", root))
    if with_plugin:
        from .plugin import uninstall_plugin_command

        ctx.invoke(uninstall_plugin_command)
    _reload(root)


@click.command("uninstall-head")
@root_option
def uninstall_head_command(root: Path) -> None:
    """Remove the co-scheduler's unit; its configuration and queue stay."""
    _report("removed", uninstall("head", root))
    _reload(root)
