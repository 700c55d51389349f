"""The Debian packages (debian/, `make deb`) as a site gets them: their contents and modes,
lintian's verdict, and a real `dpkg -i` on this machine followed by `dpkg -r` and
`dpkg -P`, which must leave nothing behind. Installed, the console scripts run on the
package's own virtual environment, systemd accepts the units, and Slurm (the dev cluster's
sbatch) loads the packaged plugin through the packaged plugstack line.

The packages are built by `make deb` (a prerequisite of `make test`; it downloads the
Python dependencies from PyPI, which a test may not): a missing or stale build is reported
with missing(). The install needs root and a machine where none of the packages' paths
exist yet (CI's throwaway machine); anything else is reported, never overwritten.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import missing

REPO = Path(__file__).resolve().parents[2]
DEB_OUT = REPO / "build" / "deb"
PACKAGES = ("slurm-faas-spank", "slurm-faas")
PLUGIN = Path("/usr/lib/x86_64-linux-gnu/slurm-wlm/spank_faas.so")
SNIPPET = Path("/usr/share/slurm-faas/plugstack.conf.d/faas.conf")
VENV = Path("/usr/lib/slurm-faas")
COMMANDS = ("faas-admin", "faas-agent", "faas-coscheduler", "submit-function")
UNITS = ("faas-agent.service", "faas-coscheduler.service")
# What installing would take over: none of it may exist before the test installs.
OWNED = (PLUGIN, SNIPPET.parent.parent, VENV, Path("/etc/slurm-faas"), Path("/var/spool/slurm-faas"),
         Path("/var/lib/slurm-faas"), Path("/var/log/slurm-faas"),
         *(Path("/usr/bin") / c for c in COMMANDS), *(Path("/lib/systemd/system") / u for u in UNITS))


def _debs() -> dict[str, Path]:
    if shutil.which("dpkg-deb") is None:
        missing("dpkg-deb is not installed (Debian package dpkg; make deps)")
    stale = subprocess.run(["make", "-q", "build/deb/.built"], cwd=REPO, capture_output=True)
    found = {p: sorted(DEB_OUT.glob(f"{p}_*.deb")) for p in PACKAGES}
    if stale.returncode != 0 or not all(found.values()):
        missing("the Debian packages are not built, or older than the sources: run `make deb` "
                "(make test does, before the tests)")
    return {p: found[p][-1] for p in PACKAGES}


@pytest.fixture(scope="module")
def debs() -> dict[str, Path]:
    return _debs()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _dpkg(*argv: str) -> subprocess.CompletedProcess:
    """dpkg, waiting for the lock another apt/dpkg client on this machine may hold."""
    deadline = time.monotonic() + 300
    while True:
        out = subprocess.run(["dpkg", *argv], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if out.returncode == 0 or "lock" not in out.stderr or time.monotonic() > deadline:
            return out
        time.sleep(2)


def test_package_contents_and_modes(debs, tmp_path):
    """dpkg -x of both packages: the files a site gets, with the modes the services need."""
    root = tmp_path / "root"
    for deb in debs.values():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    rel = lambda p: root / str(p).lstrip("/")  # noqa: E731
    # slurm-faas-spank: the plugin in Slurm's plugin directory, enabled by nobody but the site.
    assert rel(PLUGIN).is_file() and (rel(PLUGIN).read_bytes()[:4] == b"\x7fELF")
    line = rel(SNIPPET).read_text().splitlines()[-1]
    assert line == f"optional {PLUGIN} spool=/var/spool/slurm-faas", line
    assert not (root / "etc/slurm").exists(), "installing the plugin package must not enable it"
    assert _mode(rel("/var/spool/slurm-faas")) == 0o700
    # slurm-faas: the environment, its commands on PATH, the units naming them, the configuration.
    for cmd in COMMANDS:
        link = rel(Path("/usr/bin") / cmd)
        assert os.readlink(link) == f"../lib/slurm-faas/bin/{cmd}"
        assert rel(VENV / "bin" / cmd).read_text().startswith(f"#!{VENV}/bin/python\n")
    for unit in UNITS:
        text = rel(Path("/lib/systemd/system") / unit).read_text()
        assert f"ExecStart={VENV}/bin/{unit.removesuffix('.service')} " in text and "@BIN@" not in text
    assert _mode(rel("/etc/slurm-faas/agent.toml")) == 0o600 and _mode(rel("/etc/slurm-faas/coscheduler.toml")) == 0o600
    assert _mode(rel("/var/log/slurm-faas")) == 0o700 and _mode(rel("/var/lib/slurm-faas/agent")) == 0o711
    # Nothing names the directory it was built in, and no bytecode is shipped (postinst makes it).
    built_in = subprocess.run(["grep", "-rlF", "/build/deb/src", str(rel(VENV / "bin")), str(rel(VENV / "pyvenv.cfg"))],
                              capture_output=True, text=True)
    assert built_in.stdout == "", built_in.stdout
    assert not list(rel(VENV).rglob("*.pyc"))
    # The environment runs on one Python: the package depends on exactly that interpreter.
    py_deps = subprocess.run(["dpkg-deb", "-f", str(debs["slurm-faas"]), "Depends"], capture_output=True,
                             text=True, check=True).stdout
    assert re.search(r"\bpython3\.\d+\b", py_deps), py_deps
    spank_deps = subprocess.run(["dpkg-deb", "-f", str(debs["slurm-faas-spank"]), "Depends"], capture_output=True,
                                text=True, check=True).stdout
    slurm = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libslurm-dev"], capture_output=True,
                           text=True).stdout.split("-")[0]
    assert f"slurm-wlm-basic-plugins (>= {slurm})" in spank_deps, spank_deps   # the Slurm it was built for


def test_lintian_accepts_the_packages(debs):
    if shutil.which("lintian") is None:
        missing("lintian is not installed (Debian package lintian; make deps)")
    out = subprocess.run(["lintian", "--fail-on", "error,warning", *map(str, debs.values())],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr


def _check_free_for_install() -> None:
    if os.geteuid() != 0:
        missing("installing the Debian packages needs root")
    for pkg in PACKAGES:
        state = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", pkg], capture_output=True, text=True)
        if state.stdout not in ("", "not-installed"):
            missing(f"{pkg} is already installed on this machine ({state.stdout}): the test installs and purges it")
    taken = [str(p) for p in OWNED if p.exists() or p.is_symlink()]
    if taken:
        missing("installing would take over files this machine already has (a throwaway machine, like CI's, "
                "has none): " + ", ".join(taken))


def _sbatch_with_plugin(cluster, tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """sbatch of the dev cluster, with a plugstack that holds only the packaged snippet."""
    conf = tmp_path / "etc"
    conf.mkdir(exist_ok=True)
    lines = [ln for ln in Path(cluster.slurm_conf).read_text().splitlines() if not ln.startswith("PlugStackConfig=")]
    (conf / "slurm.conf").write_text("\n".join([*lines, f"PlugStackConfig={conf / 'plugstack.conf'}", ""]))
    (conf / "plugstack.conf").write_text(f"include {SNIPPET}\n")
    env = {**cluster.client_env(), "SLURM_CONF": str(conf / "slurm.conf")}
    return subprocess.run(["sbatch", *argv], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)


def test_install_run_remove_purge(debs, cluster, tmp_path):
    _check_free_for_install()
    try:
        out = _dpkg("-i", *map(str, debs.values()))
        assert out.returncode == 0, out.stdout + out.stderr
        for pkg in PACKAGES:
            state = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", pkg], capture_output=True, text=True)
            assert state.stdout == "installed", (pkg, state.stdout)
        # The commands run on the package's environment, its compiled parts included.
        help_out = subprocess.run(["/usr/bin/faas-admin", "--help"], capture_output=True, text=True, timeout=60)
        assert help_out.returncode == 0 and "install-node" in help_out.stdout, help_out.stderr
        imports = subprocess.run([str(VENV / "bin/python"), "-c",
                                  "import zmq, psycopg, sqlalchemy, prometheus_client, coscheduler.daemon, "
                                  "faas_runtime.agent, faas_runtime._munge, spank_plugin._faas_core; "
                                  "print(sqlalchemy.__version__)"], capture_output=True, text=True, timeout=60)
        assert imports.returncode == 0 and imports.stdout.startswith("2."), imports.stderr
        assert subprocess.run(["/usr/bin/faas-coscheduler", "--help"], capture_output=True, timeout=60).returncode == 0
        assert subprocess.run(["/usr/bin/faas-agent", "--help"], capture_output=True, timeout=60).returncode == 0
        # systemd accepts the installed units (their ExecStart exists now).
        if shutil.which("systemd-analyze") is None:
            missing("systemd-analyze is not installed (Debian package systemd; make deps)")
        verify = subprocess.run(["systemd-analyze", "verify", *(f"/lib/systemd/system/{u}" for u in UNITS)],
                                capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stderr
        # Slurm loads the packaged plugin: sbatch offers --faas-share and checks its value.
        shown = _sbatch_with_plugin(cluster, tmp_path, "--help")
        assert "--faas-share" in shown.stdout, shown.stdout + shown.stderr
        refused = _sbatch_with_plugin(cluster, tmp_path, "--faas-share=cores=lots", "--wrap", "true")
        assert refused.returncode != 0 and "Invalid --faas-share argument" in refused.stderr, refused.stderr
        # faas-admin's own plugin install leaves dpkg's file alone.
        refused = subprocess.run(["/usr/bin/faas-admin", "uninstall-plugin", "--plugin-dir", str(PLUGIN.parent),
                                  "--plugstack-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "belongs to the Debian package slurm-faas-spank" in refused.stderr, \
            refused.stdout + refused.stderr
        assert PLUGIN.exists()
        verified = _dpkg("--verify", *PACKAGES)
        assert verified.returncode == 0 and verified.stdout == "", verified.stdout + verified.stderr
        # Remove: the code goes (bytecode postinst compiled too), configuration stays.
        out = _dpkg("-r", *PACKAGES)
        assert out.returncode == 0, out.stdout + out.stderr
        assert not VENV.exists() and not PLUGIN.exists() and not (Path("/usr/bin") / "faas-admin").exists()
        assert Path("/etc/slurm-faas/coscheduler.toml").exists()
    finally:
        purged = _dpkg("-P", *PACKAGES)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    left = [str(p) for p in OWNED if p.exists() or p.is_symlink()]
    assert not left, f"dpkg -P left {left}"
