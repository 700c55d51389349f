"""slurm-faas: lend the idle cores and memory of Slurm batch jobs to serverless functions.

The cffi extension (the Slurm-free C core of the SPANK plugin) is declared here, once,
with ``cffi_modules``; the SPANK plugin itself is built by ``faas-admin`` against the
running Slurm's headers (see spank_plugin/plugin_build.py).
"""
import glob
import os
import shutil
import sysconfig

from setuptools import find_packages, setup


def _check_build_tools() -> None:
    """Fail early, naming the Debian package, instead of deep inside the compiler."""
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        raise SystemExit("slurm-faas: Python.h is missing: install the Debian package python3-dev "
                         "(apt-get install python3-dev)")
    if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
        raise SystemExit("slurm-faas: no C compiler: install the Debian package gcc (apt-get install gcc)")


_check_build_tools()


def _cffi_modules() -> list:
    """The SPANK core always; the libfabric RMA binding only where libfabric-dev is
    installed. Without it the runtime runs on ZeroMQ alone (faas_runtime.fabric says
    so once at run time); ``python3 -m faas_runtime._build_fabric`` builds it later."""
    modules = ["spank_plugin/_build_core.py:ffibuilder"]
    modules.append("faas_runtime/_build_munge.py:ffibuilder")  # libmunge-dev (Makefile DEB_PACKAGES)
    fabric_h = [os.path.join(d, "rdma", "fabric.h") for d in
                ("/usr/include", "/usr/local/include", os.environ.get("FAAS_LIBFABRIC_INCLUDE", ""))]
    if any(os.path.exists(p) for p in fabric_h):
        modules.append("faas_runtime/_build_fabric.py:ffibuilder")
    else:
        print("slurm-faas: libfabric-dev not installed: building without the RMA data path "
              "(apt-get install --no-install-recommends libfabric-dev to enable it)")
    return modules

setup(
    name="slurm-faas",
    version="0.1.0",
    description="Backfill the spare cores and memory of Slurm jobs with serverless functions",
    license="BSD-3-Clause",
    python_requires=">=3.9",
    packages=find_packages(include=["spank_plugin*", "coscheduler*", "faas_runtime*", "slurm_faas*"]),
    # The C sources travel with the package so that faas-admin can build the
    # SPANK plugin from an installed (non-editable) copy as well.
    data_files=[("share/slurm-faas/csrc", sorted(glob.glob("csrc/*.[ch]") + glob.glob("csrc/*.lds")))],
    package_data={"coscheduler.migrations": ["script.py.mako"]},
    setup_requires=["cffi>=1.15"],
    cffi_modules=_cffi_modules(),
    install_requires=[
        "cffi>=1.15",
        "pyzmq>=25",
        "msgpack>=1.0",
        "sqlalchemy>=2.0",
        "click>=8.1",
        "alembic>=1.12",  # the co-scheduler's schema migrations (coscheduler/migrations)
        "prometheus-client>=0.17",  # the co-scheduler's /metrics (coscheduler/prometheus.py)
        "tomli>=1.1; python_version < '3.11'",  # the co-scheduler's TOML configuration
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6"],
        "postgres": ["psycopg[binary]>=3.1"],
        "analyze": ["matplotlib>=3.6"],
        # The Python API (slurm_faas): functions sent by value (defined in __main__ or a notebook).
        "python": ["cloudpickle>=2.2"],
        # Parsl on lent cores (slurm_faas.parsl), and its tests.
        "parsl": ["parsl>=2024.1"],
    },
    entry_points={
        "console_scripts": [
            "submit-function=coscheduler.cli.submit:main",
            "faas-admin=coscheduler.cli.admin:main",
            "faas-coscheduler=coscheduler.daemon:main",
            "faas-agent=faas_runtime.agent:main",
        ]
    },
)
