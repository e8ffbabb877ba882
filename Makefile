# mystocks-gpu task runner. `make demo` and `make test` work on a fresh Debian/Ubuntu machine (root,
# or a user with sudo): they apt-install what is missing (python3-venv, python3-dev + gcc for the C extension, redis-server, kcat, a Java 17+
# runtime, Maven, PostgreSQL, Prometheus, docker-compose, Go; `make doctor` says what and why), create .venv and install the package.
# `make demo` starts the local Kafka + Redis stack (.stack, ports 19092/19093/16379) and leaves it
# running; `make test` starts a private stack on free ports for its own run and stops only that one.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/mystocks-gpu
EXTRAS ?= dev,bench,ml
PYTEST_ARGS ?=
# `make test` runs the suite in this many pytest-xdist workers, each with a private Kafka + Redis
TEST_WORKERS ?= 2
# uid that runs apt-get: 0 runs it directly, any other through sudo (override to simulate)
AS_UID ?= $(shell id -u)
# a CUDA device is present when this exists or `nvidia-smi -L` lists one
NVIDIA_DEV ?= /dev/nvidia0
SYSDEPS = AS_UID=$(AS_UID) $(SHELL) scripts/system_deps.sh

.PHONY: help doctor install system-deps stack-up stack-down demo test test-unit test-install-path \
	test-gpu test-gpu-run bench lint clean lock audit fuzz soak

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-17s %s\n", $$1, $$2}'

doctor: ## report what a fresh machine lacks (tool -> apt package, Java version, venv, disk) and the apt command install would run
	@$(SYSDEPS) doctor

system-deps: ## apt-get update + install what is missing (python3-venv, python3-dev, gcc, redis-server, kcat, Java 17+, Maven, postgresql, prometheus, docker-compose, golang-go)
	@$(SYSDEPS) install

# pinned versions of every dependency of the dev,bench,ml extras (`make lock` regenerates it with uv);
# installs take them as constraints, so extras outside the lock (gpu, dl) still install
LOCK := requirements.lock

$(VENV)/.installed: pyproject.toml $(LOCK) $(wildcard mystocks_gpu/streams/_rd*.[ch])
	@command -v python3 >/dev/null || { echo "error: python3 is required (apt-get install python3 python3-venv)" >&2; exit 1; }
	@# a venv made before python3-venv was installed has no pip: make it again
	@$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && python3 -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]" -c $(LOCK)
	@touch $@

install: system-deps $(VENV)/.installed ## system packages + .venv with the package and dev/bench extras; Kafka jars + Connect plugins (the converter built by Maven)
	@# Maven's repository is ~/.cache/mystocks-gpu/m2 (stack.cache_dir), never ~/.m2; cached: a SHA-1 check
	$(CLI) stack fetch --with connect

stack-up: install ## start the local Kafka (KRaft) + Redis on loopback (.stack); WITH=postgres,connect,prometheus adds those servers
	$(CLI) stack up $(if $(WITH),--with $(WITH))

stack-down: ## stop what stack-up started
	@if [ -x $(CLI) ]; then $(CLI) stack down; fi

demo: install ## stack up, topics, run the main pipeline end to end, print what it did (the stack keeps running)
	$(CLI) stack up
	$(PY) scripts/demo.py

test: install ## whole suite (unit + integration) in $(TEST_WORKERS) workers, each against a private Kafka + Redis on free ports started and stopped by the run
	$(PY) -m pytest -p no:cacheprovider -ra --durations=30 -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-unit: install ## unit tests only (no broker)
	$(PY) -m pytest -p no:cacheprovider -ra tests/unit $(PYTEST_ARGS)

test-install-path: install ## the install logic run with the system packages hidden (fake PATH, fake apt-get/sudo)
	$(PY) -m pytest -p no:cacheprovider -ra tests/unit/test_system_deps.py $(PYTEST_ARGS)

$(VENV)/.installed-gpu: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[$(EXTRAS),gpu]" -c $(LOCK)
	@touch $@

test-gpu: install $(VENV)/.installed-gpu ## install .[gpu] and run the GPU tests (-m gpu) against the CPU backend; needs a CUDA device
	@$(MAKE) --no-print-directory test-gpu-run

test-gpu-run: ## the GPU tests with $(PY), no install (scripts/gpu_check.sh): fails when a device exists but CuPy cannot use it
	@if [ -e $(NVIDIA_DEV) ] || nvidia-smi -L >/dev/null 2>&1; then \
	  $(PY) -c 'import cupy; n = cupy.cuda.runtime.getDeviceCount(); print(f"CuPy {cupy.__version__}: {n} CUDA device(s)")' \
	  || { echo "error: a CUDA device is present but CuPy does not import or see it: pip install -e '.[gpu]' (CUDA 12 driver needed)" >&2; exit 1; }; \
	else \
	  echo "error: no CUDA device ($(NVIDIA_DEV) absent, nvidia-smi lists none): the GPU tests need one; \`make test\` runs the CPU suite" >&2; exit 1; \
	fi
	$(PY) -m pytest -p no:cacheprovider -ra -m gpu $(PYTEST_ARGS)

bench: install ## benchmarks (ours vs baselines, printed ratios); writes bench/out/*.json
	$(CLI) stack up
	@mkdir -p bench/out
	for b in codec gpu_ops backtest backtest_e2e runtime features_e2e training execution factors portfolio gateway; do \
	  [ -f bench/$$b.py ] && $(PY) bench/$$b.py --json bench/out/$$b.json || exit 1; done

lock: ## regenerate requirements.lock (uv pip compile: every platform, Python >= 3.11) from pyproject.toml
	$(PY) -m pip install -q uv
	$(PY) -m uv pip compile pyproject.toml --extra dev --extra bench --extra ml --universal --python-version 3.11 \
	  --no-header --quiet -o $(LOCK)

audit: install ## known vulnerabilities in requirements.lock (pip-audit, PyPI's service; offline: security/pypa-advisories.json.gz); fails unless allowed in security/audit-allowlist.toml
	$(PY) scripts/audit.py

fuzz: install ## long property-based fuzzing (codec with numba bounds checks, job specs, API bodies)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-3000} FUZZ_OOB_EXAMPLES=$${FUZZ_OOB_EXAMPLES:-1500} $(PY) -m pytest -p no:cacheprovider -ra \
	  tests/unit/test_fuzz_codec.py tests/unit/test_fuzz_jobs.py tests/unit/test_api_security.py $(PYTEST_ARGS)

soak: install ## soak: features pipeline + jobs for 10 min with faults (SOAK_ARGS="--duration 120 --secure ..."); bench/out/soak.json
	@mkdir -p bench/out
	$(PY) bench/soak.py --json bench/out/soak.json $(SOAK_ARGS)

lint: install ## ruff + mypy; deploy/ checks: k8s manifests (kustomize + kubeconform -strict), hadolint, promtool rules
	$(VENV)/bin/ruff check mystocks_gpu tests bench scripts
	$(VENV)/bin/mypy mystocks_gpu bench $(MYPY_ARGS)
	$(PY) -m pytest -p no:cacheprovider -q tests/unit/test_k8s_manifests.py tests/unit/test_prometheus_rules.py

clean: stack-down ## remove the venv and stack data
	rm -rf $(VENV) .stack
