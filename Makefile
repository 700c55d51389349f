# slurm-faas: the two commands of the README, and their parts.
#   make demo   set up everything on a fresh Debian 12 machine and run the main job
#   make test   set up everything and run the whole test suite against real services
# Both are safe to re-run. Run them as root (they install Debian packages and start Slurm).

VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages everything here needs: Slurm + munge (the cluster and the plugin's
# headers), a compiler, Python's venv/headers (cffi), Charliecloud (containers),
# PostgreSQL (the production database, tested for real), libfabric (the RMA data path),
# slurmdbd + MariaDB (the dev cluster's real accounting: sacct), HPC Challenge + Open MPI
# (the batch job of the evaluation, bench/bench_colocation.py and its integration test),
# debhelper + lintian (`make deb`, the Debian packages, and their check).
DEB_PACKAGES := slurm-wlm slurm-client munge libmunge-dev libslurm-dev gcc make \
	python3 python3-venv python3-dev charliecloud-runtime postgresql \
	libfabric1 libfabric-dev libfabric-bin slurmdbd mariadb-server mariadb-client systemd \
	hpcc openmpi-bin debhelper lintian iproute2
APT := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300

# Mutation testing of the policy code (pyproject.toml [tool.mutmut]), fast unit tests only.
MUTMUT_VERSION := 3.8.1
# Killed share (killed + timed out, of all mutants) below which `make mutation` fails.
MUTATION_MIN_SCORE ?= 0.88

.PHONY: deps venv demo test unit mutation clean bench-venv parsl-tests-venv deb

# Benchmarks' own environment: the product plus the peers it is compared with (Parsl, Dask)
# and what the evaluation's functions and plots use. Never a dependency of the product.
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_PACKAGES := 'parsl>=2024.1' 'dask[distributed]>=2024.1' 'matplotlib>=3.6' 'Pillow>=10' \
	'networkx>=3' 'numpy>=1.24' 'cloudpickle>=2.2'
# What the evaluation's functions import (bench/colocation_fns), vendored as docs/functions.md
# says: functions see their code directory only, and bench_colocation.py links these into it.
BENCH_FUNCTION_PACKAGES := $(BENCH_VENV)/function-packages
FUNCTION_PACKAGES := 'Pillow>=10' 'networkx>=3' 'numpy>=1.24'

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -qx installed || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(APT) update -qq && $(APT) install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: setup.py pyproject.toml $(wildcard csrc/*.c csrc/*.h) spank_plugin/_csrc.py \
		spank_plugin/_build_core.py faas_runtime/_build_fabric.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test,postgres,analyze,python,parsl]'
	touch $@

venv: deps $(VENV)/.installed

$(BENCH_VENV)/.installed: $(VENV)/.installed
	test -x $(BENCH_PY) || python3 -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip setuptools wheel
	$(BENCH_PY) -m pip install -q -e '.[postgres,python]' $(BENCH_PACKAGES)
	$(BENCH_PY) -m pip install -q --upgrade --only-binary=:all: --target $(BENCH_FUNCTION_PACKAGES) $(FUNCTION_PACKAGES)
	touch $@

bench-venv: venv $(BENCH_VENV)/.installed

# Parsl's own test suite against our Parsl executor (tests/integration/test_parsl.py) runs
# from this environment: Parsl's conftest has a pytest_ignore_collect(path) hook that the
# pytest 8+ of our suite refuses, so it gets the pytest Parsl's tests support.
PARSL_TESTS_VENV ?= .venv-parsl-tests

$(PARSL_TESTS_VENV)/.installed: $(VENV)/.installed
	test -x $(PARSL_TESTS_VENV)/bin/python || python3 -m venv $(PARSL_TESTS_VENV)
	$(PARSL_TESTS_VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(PARSL_TESTS_VENV)/bin/python -m pip install -q -e '.[python,parsl]' 'pytest>=7.4,<8'
	touch $@

parsl-tests-venv: venv $(PARSL_TESTS_VENV)/.installed

# The Debian packages (debian/: slurm-faas-spank, slurm-faas) into build/deb, built from a
# copy of the tree so that the build never writes into the checkout. Building slurm-faas
# downloads its Python dependencies from PyPI; tests/e2e/test_debian_package.py installs them.
DEB_OUT := build/deb
DEB_SOURCES := $(shell find debian coscheduler faas_runtime spank_plugin slurm_faas csrc slurm.conf.d docs \
	-type f -not -path '*/__pycache__/*' -not -name '*.so' 2>/dev/null) setup.py pyproject.toml README.md

$(DEB_OUT)/.built: $(DEB_SOURCES)
	rm -rf $(DEB_OUT) && mkdir -p $(DEB_OUT)/src
	tar -c --exclude-vcs --exclude='./.venv*' --exclude=./build --exclude=./mutants --exclude='*.egg-info' \
		--exclude=__pycache__ --exclude='*.so' --exclude=./.dev-cluster --exclude=./.pytest_cache \
		--exclude=./.hypothesis . | tar -x -C $(DEB_OUT)/src
	cd $(DEB_OUT)/src && dpkg-checkbuilddeps && debian/rules clean && \
		FAAS_DEB_DESTDIR=$(CURDIR)/$(DEB_OUT) debian/rules binary > ../build.log 2>&1 || { tail -n 40 ../build.log; exit 1; }
	rm -rf $(DEB_OUT)/src
	touch $@

deb: deps $(DEB_OUT)/.built

demo: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash docs/examples/demo.sh

test: venv parsl-tests-venv deb
	FAAS_TEST_REQUIRE_ALL=1 $(PY) -m pytest -v tests
	$(MAKE) mutation

unit: venv
	$(PY) -m pytest -q -rs tests/unit

$(VENV)/.mutmut: $(VENV)/.installed
	$(PY) -m pip install -q 'mutmut==$(MUTMUT_VERSION)'
	touch $@

mutation: venv $(VENV)/.mutmut
	rm -rf mutants
	timeout 900 $(VENV)/bin/mutmut run --max-children 2 > mutants.log 2>&1 || { tail -c 3000 mutants.log; exit 1; }
	$(PY) -m tests.mutation_score --min $(MUTATION_MIN_SCORE)

clean:
	rm -rf build *.egg-info spank_plugin/_faas_core*.so spank_plugin/_faas_core.c \
		faas_runtime/_fabric*.so faas_runtime/_fabric.c $(VENV) $(BENCH_VENV) $(PARSL_TESTS_VENV) mutants mutants.log
