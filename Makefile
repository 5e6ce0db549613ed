# The two commands of the README: `make demo` and `make test`. Each installs what it
# needs by itself: Debian packages via scripts/install-deps.sh (when run as root) and
# Python packages into .venv.
# Debian's own python3 where there is one: built with PGO and LTO and a static libpython,
# it starts in ~10 ms where a --enable-shared build (pyenv's default) took ~35 ms here.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WHEELHOUSE := $(VENV)/wheelhouse

.PHONY: demo test lint rootless-test vm-test bench deps clean

demo: $(STAMP)
	$(PY) scripts/demo.py

# The host's suite as root; the integration and security suites again as an ordinary
# user with a delegated cgroup subtree (and test_rootless.py without one); then the limit
# tests in a VM whose kernel has only cgroup v2 (this host's memory, pids and cpu
# controllers are on v1), as root and as an ordinary user: every code path, for real.
test: $(STAMP) lint $(WHEELHOUSE)/.fetched
	NSBOX_TEST_STRICT=1 $(PY) -m pytest -q tests
	$(MAKE) rootless-test
	$(MAKE) vm-test

# As a user with a subordinate id range (the whole integration and security suites, but
# test_ray_nodes.py: Ray's node loss, joins and shutdown, whose code does not depend on who
# the sandboxes run as; test_ray.py shows rootless nodes work; and test_display_data.py:
# the kernel's figures and tables, test_display.py shows its items rootless), then as one
# without ("own" mode: the suites where the difference shows).
rootless-test: $(STAMP)
	NSBOX_TEST_STRICT=1 scripts/rootless-test.sh -- -q tests/integration tests/security \
		--ignore=tests/integration/test_ray_nodes.py --ignore=tests/integration/test_display_data.py
	NSBOX_TEST_STRICT=1 NSBOX_ROOTLESS_IDS=own scripts/rootless-test.sh -- -q tests/security \
		tests/integration/test_isolation.py tests/integration/test_workloads.py tests/integration/test_rootless.py \
		tests/integration/test_run_code.py

# The root pass in the VM: the limits of runs and of run_code's programs (v2's counters).
VM_TESTS := tests/integration/test_limits.py \
	tests/security/test_run_code_isolation.py::test_a_program_at_a_limit_gets_its_verdict_and_the_next_runs \
	tests/integration/test_run_code.py::test_a_programs_own_memory_limit_ends_it_and_is_lifted_after
# The rootless pass in the VM: its limits (v2, a delegated subtree) and test_rootless.py.
VM_ROOTLESS_TESTS := tests/integration/test_rootless.py tests/integration/test_limits.py \
	-k 'test_rootless or memory_limit or process_limit or swap or accounting or cli_is_sigkilled'

# In the VM (software emulation: a sandbox's life takes ~1 s there) the leak test makes 100
# sandboxes in a row, not the host's 500 (NSBOX_TEST_REPEAT): a cgroup left behind shows at once.
vm-test: $(STAMP)
	NSBOX_TEST_STRICT=1 NSBOX_TEST_REPEAT=$${NSBOX_TEST_REPEAT:-100} VM_TIMEOUT=$${VM_TIMEOUT:-1200} scripts/vm-test.sh -- \
		.venv/bin/python -m pytest -q -p no:cacheprovider $(VM_TESTS)
	NSBOX_TEST_STRICT=1 VM_TIMEOUT=$${VM_TIMEOUT:-1200} scripts/vm-test.sh -- \
		scripts/rootless-test.sh -- -q $(VM_ROOTLESS_TESTS)

# The data stack of the display tests (tests/integration/test_display_data.py): wheels of
# matplotlib and pandas for the sandbox's python3 (the host's), fetched from the index once.
$(WHEELHOUSE)/.fetched: $(STAMP)
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --only-binary=:all: --dest $(WHEELHOUSE) matplotlib pandas
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check nsbox tests scripts
	$(VENV)/bin/ruff format --check nsbox tests scripts
	$(VENV)/bin/mypy nsbox
	$(VENV)/bin/bandit -q -r nsbox

bench: $(STAMP)
	scripts/install-deps.sh bench
	$(PY) -m pip install --quiet --config-settings editable_mode=compat -e '.[dev,serve,mcp,ray,bench]'
	$(PY) -m compileall -q nsbox  # what an installed package has (and PYTHONDONTWRITEBYTECODE would never write)
	$(PY) scripts/bench.py --json bench-results.json
	$(PY) scripts/bench_judge.py --json bench-judge.json
	$(PY) scripts/bench_serve.py --json bench-serve.json
	$(PY) scripts/bench_mcp.py --json bench-mcp.json
	$(PY) scripts/bench_ray.py --json bench-ray.json
	$(PY) scripts/bench_network.py --json bench-network.json

deps:
	scripts/install-deps.sh

$(STAMP): pyproject.toml scripts/install-deps.sh
	scripts/install-deps.sh
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --config-settings editable_mode=compat -e '.[dev,serve,mcp,ray]'
	$(PY) -m compileall -q nsbox  # bytecode, as an installed package has: nsbox exec should not compile its modules
	touch $(STAMP)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
