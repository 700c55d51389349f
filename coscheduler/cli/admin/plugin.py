"""faas-admin install-plugin / uninstall-plugin: put the SPANK plugin where Slurm loads it.

install-plugin builds spank_faas.so against this machine's Slurm headers, refuses when
those headers are of another Slurm version than the one running (Slurm refuses such a
plugin at load time, and a half-loaded plugstack is worse than none), checks the
plugstack arguments with the plugin's own C parser, and installs the .so into PluginDir
and a one-line snippet into plugstack.conf.d. Both steps replace files atomically and
change nothing when the result would be identical, so it is safe to run again.
"""
from __future__ import annotations

import filecmp
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import click

DEBIAN_PLUGIN_DIR = Path("/usr/lib/x86_64-linux-gnu/slurm-wlm")
DEFAULT_PLUGSTACK_DIR = Path("/etc/slurm/plugstack.conf.d")
SNIPPET_NAME = "faas.conf"


def _run(argv: list[str]) -> Optional[str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def running_slurm_version() -> Optional[str]:
    """The version the Slurm commands report ("22.05.8"), or None without Slurm commands."""
    for tool in ("sinfo", "scontrol"):
        text = _run([tool, "-V"])
        if text:
            m = re.search(r"(\d+\.\d+\.\d+)", text)
            if m:
                return m.group(1)
    return None


def find_plugin_dir() -> tuple[Path, str]:
    """PluginDir from `scontrol show config` (first entry), else Debian's default."""
    text = _run(["scontrol", "show", "config"])
    if text:
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "PluginDir" and value.strip():
                return Path(value.strip().split(":")[0]), "scontrol show config"
    return DEBIAN_PLUGIN_DIR, "the Debian default (scontrol show config did not answer)"


def packaged_by(path: Path) -> Optional[str]:
    """The Debian package that owns ``path`` (slurm-faas-spank ships the plugin), or None:
    install-plugin must not overwrite, nor uninstall-plugin remove, what dpkg manages."""
    out = _run(["dpkg-query", "-S", str(path)])
    return out.split(":")[0].strip() if out else None


def _refuse_packaged(path: Path, doing: str) -> None:
    owner = packaged_by(path)
    if owner is not None:
        raise click.ClickException(f"{path} belongs to the Debian package {owner}: {doing} it with apt/dpkg "
                                   "(docs/admin.md, \"The Debian packages\"); nothing was changed")


def _install_file(src: Path, dst: Path, mode: int) -> bool:
    """Copy src over dst atomically unless identical; True when dst changed."""
    if dst.exists() and filecmp.cmp(src, dst, shallow=False) and (dst.stat().st_mode & 0o777) == mode:
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, dst)  # a running slurmstepd keeps the old inode mapped
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def _write_text(dst: Path, text: str) -> bool:
    with tempfile.TemporaryDirectory() as tmpdir:
        src = Path(tmpdir) / dst.name
        src.write_text(text)
        return _install_file(src, dst, 0o644)


def spool_problem(spool: str) -> Optional[str]:
    """Why the plugin could not write lend records into ``spool`` on this node (it lends
    nothing then, job after job), or None."""
    try:
        st = os.lstat(spool)
    except OSError as exc:
        return (f"spool={spool}: {exc.strerror}; create it (mkdir -m 0700 {spool}, owned by root) on every node, "
                "or pass --no-spool-check when installing into a node image")
    if not stat.S_ISDIR(st.st_mode):
        return f"spool={spool} is not a directory (a link is not accepted either)"
    if st.st_uid != 0 or st.st_mode & 0o077:
        return (f"spool={spool} must be root's and 0700 (lend records are for root alone); "
                f"it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}")
    return None


@click.command("install-plugin")
@click.option("--plugin-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where Slurm loads plugins from [default: PluginDir of `scontrol show config`, "
                   "else /usr/lib/x86_64-linux-gnu/slurm-wlm]")
@click.option("--plugstack-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_PLUGSTACK_DIR,
              show_default=True, help="the directory plugstack.conf includes")
@click.option("--ignore-version-mismatch", is_flag=True,
              help="install even when the headers' Slurm version differs from the running one (not advised)")
@click.option("--no-spool-check", is_flag=True,
              help="do not check that the spool directory exists here, root's and 0700 (a node image)")
@click.argument("args", nargs=-1)
def install_plugin_command(plugin_dir: Optional[Path], plugstack_dir: Path, ignore_version_mismatch: bool,
                           no_spool_check: bool, args: tuple[str, ...]) -> None:
    """Build and install the SPANK plugin. ARGS are its plugstack.conf arguments, e.g.
    spool=/var/spool/slurm-faas reserve_cores=1 (see `man`-style docs/spank_faas.8.md)."""
    from spank_plugin.core import ConfigError, parse_config

    # plugstack.conf names the plugin by an absolute path: resolve before anything is written.
    plugin_dir = plugin_dir.resolve() if plugin_dir is not None else None
    plugstack_dir = plugstack_dir.resolve()
    from spank_plugin.plugin_build import PluginBuildError, build_plugin, plugstack_line, slurm_header_version

    try:
        config = parse_config(args)
    except ConfigError as exc:
        raise click.ClickException(f"bad plugin argument {exc}") from None
    try:
        headers = slurm_header_version()
    except PluginBuildError as exc:
        raise click.ClickException(str(exc)) from None
    running = running_slurm_version()
    if running is None:
        click.echo(f"warning: no sinfo/scontrol answered -V; cannot compare with the headers' Slurm {headers}",
                   err=True)
    elif running != headers and not ignore_version_mismatch:
        raise click.ClickException(
            f"the Slurm headers are version {headers} but the running Slurm is {running}: Slurm would refuse "
            f"the plugin. Install the libslurm-dev of {running} (or run this on a machine with matching "
            "headers); nothing was installed")
    problem = None if no_spool_check else spool_problem(config.spool_dir)
    if problem is not None:
        raise click.ClickException(f"{problem}; nothing was installed")
    if plugin_dir is None:
        plugin_dir, source = find_plugin_dir()
        click.echo(f"PluginDir {plugin_dir} (from {source})")
    with tempfile.TemporaryDirectory(prefix="faas-plugin-") as tmpdir:
        try:
            built = build_plugin(Path(tmpdir))
        except PluginBuildError as exc:
            raise click.ClickException(str(exc)) from None
        target = Path(plugin_dir) / built.name
        _refuse_packaged(target, "upgrade")
        so_changed = _install_file(built, target, 0o755)
    snippet = Path(plugstack_dir) / SNIPPET_NAME
    text = ("# slurm-faas SPANK plugin, written by `faas-admin install-plugin`; see spank_faas(8).\n"
            + plugstack_line(target, args) + "\n")
    snippet_changed = _write_text(snippet, text)
    click.echo(f"{target}: {'installed' if so_changed else 'unchanged'}")
    click.echo(f"{snippet}: {'written' if snippet_changed else 'unchanged'}")
    plugstack = Path(plugstack_dir).parent / "plugstack.conf"
    include = f"include {Path(plugstack_dir)}/*.conf"
    if not plugstack.exists() or include not in plugstack.read_text(errors="replace"):
        click.echo(f"note: {plugstack} must contain the line `{include}`", err=True)
    if so_changed or snippet_changed:
        click.echo("restart slurmd on the node (a bad argument is reported in its log at start); "
                   "sbatch/srun/salloc pick the plugin up at once")


@click.command("uninstall-plugin")
@click.option("--plugin-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="[default: as install-plugin finds it]")
@click.option("--plugstack-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_PLUGSTACK_DIR,
              show_default=True)
def uninstall_plugin_command(plugin_dir: Optional[Path], plugstack_dir: Path) -> None:
    """Remove the plugstack snippet first (so nothing loads the plugin), then the .so."""
    from spank_plugin.plugin_build import PLUGIN_NAME

    if plugin_dir is None:
        plugin_dir, _ = find_plugin_dir()
    _refuse_packaged(Path(plugin_dir) / PLUGIN_NAME, "remove")
    for path in (Path(plugstack_dir) / SNIPPET_NAME, Path(plugin_dir) / PLUGIN_NAME):
        if path.exists():
            path.unlink()
            click.echo(f"{path}: removed")
        else:
            click.echo(f"{path}: not there")
