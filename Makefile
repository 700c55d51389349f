# slurm-faas: the two commands of the README, and their parts.
#   make demo   set up everything on a fresh Debian 12 machine and run the main job
#   make test   set up everything and run the whole test suite against real services
# Both are safe to re-run. Run them as root (they install Debian packages and start Slurm).

VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages everything here needs: Slurm + munge (the cluster and the plugin's
# headers), a compiler, Python's venv/headers (cffi), Charliecloud (containers),
# PostgreSQL (the production database, tested for real), libfabric (the RMA data path),
# slurmdbd + MariaDB (the dev cluster's real accounting: sacct).
DEB_PACKAGES := slurm-wlm slurm-client munge libmunge-dev libslurm-dev gcc make \
	python3 python3-venv python3-dev charliecloud-runtime postgresql \
	libfabric1 libfabric-dev libfabric-bin slurmdbd mariadb-server mariadb-client systemd
APT := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300

# Mutation testing of the policy code (pyproject.toml [tool.mutmut]), fast unit tests only.
MUTMUT_VERSION := 3.8.1
# Killed share (killed + timed out, of all mutants) below which `make mutation` fails.
MUTATION_MIN_SCORE ?= 0.88

.PHONY: deps venv demo test unit mutation clean

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

demo: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash docs/examples/demo.sh

test: venv
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
		faas_runtime/_fabric*.so faas_runtime/_fabric.c $(VENV) mutants mutants.log
