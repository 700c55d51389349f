"""Building spank_faas.so: exported symbols, hardening, error messages."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from spank_plugin import plugin_build
from spank_plugin._csrc import CORE_SOURCES, PLUGIN_SOURCES, sources
from spank_plugin.plugin_build import PluginBuildError, build_plugin, find_csrc, plugstack_line

ALLOWED = re.compile(r"^(slurm_spank_\w+|plugin_name|plugin_type|plugin_version)$")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    return build_plugin(tmp_path_factory.mktemp("plugin"))


def _tool(name):
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is missing: apt-get install binutils")
    return path


def test_builds(plugin):
    assert plugin.name == "spank_faas.so" and plugin.is_file()
    assert [p.name for p in plugin.parent.iterdir()] == ["spank_faas.so"]  # no temp files left


def test_exports_only_spank_symbols(plugin):
    out = subprocess.run([_tool("nm"), "-D", "--defined-only", str(plugin)], capture_output=True,
                         text=True, check=True).stdout
    names = {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}
    assert {n for n in names if not ALLOWED.match(n)} == set()
    assert {"plugin_name", "plugin_type", "plugin_version", "slurm_spank_init",
            "slurm_spank_init_post_opt", "slurm_spank_exit", "slurm_spank_job_epilog"} <= names
    assert not any(n.startswith("faas_") for n in names)  # the core stays internal


def test_hardened(plugin):
    dyn = subprocess.run([_tool("readelf"), "-d", str(plugin)], capture_output=True, text=True,
                         check=True).stdout
    assert "BIND_NOW" in dyn or re.search(r"FLAGS_1.*\bNOW\b", dyn)
    seg = subprocess.run([_tool("readelf"), "-lW", str(plugin)], capture_output=True, text=True,
                         check=True).stdout
    assert "GNU_RELRO" in seg
    syms = subprocess.run([_tool("nm"), "-D", str(plugin)], capture_output=True, text=True,
                          check=True).stdout
    assert "__stack_chk_fail" in syms


def test_plugin_name_is_faas(plugin):
    data = plugin.read_bytes()
    assert b"faas\0" in data and b"spank\0" in data


def test_rebuild_replaces(plugin):
    before = plugin.stat().st_ino
    again = build_plugin(plugin.parent)
    assert again == plugin and plugin.stat().st_ino != before  # renamed into place


def _core_sources() -> list[Path]:
    """The Slurm-free core: faas_core.c and its core_*.c files (what spank_plugin/_csrc.py builds)."""
    found = sources(CORE_SOURCES, find_csrc())
    assert {p.name for p in found} >= {"faas_core.c", "core_files.c"}
    return found


def test_core_is_strict_c99():
    cc = plugin_build.find_compiler()
    subprocess.run([cc, "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-O2", "-fsyntax-only",
                    *map(str, _core_sources())], check=True)


def test_no_system_calls():
    files = sources(PLUGIN_SOURCES, find_csrc())  # the core and every spank_*.c of the plugin
    assert {p.name for p in files} >= {"faas_core.c", "spank_faas.c", "spank_stepd.c"}
    assert [p.name for p in files if "system(" in p.read_text()] == []


def test_only_dispatch_file_has_spank_hooks():
    for path in _core_sources():
        core = path.read_text()
        assert "slurm_spank_" not in core and "#include <slurm/" not in core, path.name


def test_find_csrc_in_checkout():
    assert find_csrc() == Path(plugin_build.__file__).resolve().parent.parent / "csrc"


def test_missing_compiler():
    with pytest.raises(PluginBuildError, match="gcc"):
        plugin_build.find_compiler("no-such-cc-anywhere")


def test_missing_slurm_headers(tmp_path):
    # A "compiler" whose preprocessor cannot find <slurm/spank.h>.
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\necho 'fatal error: slurm/spank.h: No such file or directory' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(PluginBuildError, match=r"apt-get install libslurm-dev"):
        build_plugin(tmp_path / "out", cc=str(fake))


def test_compile_error_is_reported(tmp_path):
    src = tmp_path / "csrc"
    shutil.copytree(find_csrc(), src)
    (src / "spank_faas.c").write_text((src / "spank_faas.c").read_text() + "\nint oops(void) { }\n")
    with pytest.raises(PluginBuildError, match="compiling spank_faas.so failed"):
        build_plugin(tmp_path / "out", csrc=src)
    assert not list((tmp_path / "out").glob("*"))


def test_slurm_header_version():
    assert re.fullmatch(r"\d+\.\d\d\.\d+", plugin_build.slurm_header_version())


def test_plugstack_line():
    assert plugstack_line("/usr/lib/slurm/spank_faas.so", ["spool=/var/spool/slurm-faas", "cpu_map=block"]) \
        == "optional /usr/lib/slurm/spank_faas.so spool=/var/spool/slurm-faas cpu_map=block"
    assert plugstack_line(Path("/p/spank_faas.so")) == "optional /p/spank_faas.so"
    with pytest.raises(ValueError):
        plugstack_line("/p/spank_faas.so", ["default=cores=2, mem=1G"])
    with pytest.raises(ValueError):
        plugstack_line("relative.so")
