# mystocks-gpu task runner. `make demo` and `make test` work on a fresh Debian/Ubuntu machine:
# they install system packages (redis-server, kcat, Java 17, Maven) when missing, create .venv,
# install the package, and start the local Kafka + Redis stack.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/mystocks-gpu
EXTRAS ?= dev,bench
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || { command -v sudo >/dev/null && echo sudo; })

.PHONY: help install system-deps stack-up stack-down demo test test-unit bench lint clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

system-deps: ## apt-install redis-server, kcat, Java 17, Maven, docker-compose (config check) when missing
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v kcat >/dev/null || missing="$$missing kcat"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 is required"; exit 1; }
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

install: system-deps $(VENV)/.installed ## system packages + .venv with the package and dev/bench extras

stack-up: install ## start Kafka (KRaft) + Redis on loopback
	$(CLI) stack up

stack-down: ## stop what stack-up started
	@if [ -x $(CLI) ]; then $(CLI) stack down; fi

demo: install ## stack up, topics, run the main pipeline end to end, print what it did
	$(CLI) stack up
	$(PY) scripts/demo.py

test: install ## stack up, whole test suite (unit + integration against the real broker and Redis), stack down
	$(CLI) stack up
	@set -o pipefail; rc=0; $(PY) -m pytest -p no:cacheprovider -ra $(PYTEST_ARGS) || rc=$$?; \
	  $(CLI) stack down; exit $$rc

test-unit: install ## unit tests only (no broker)
	$(PY) -m pytest -p no:cacheprovider -ra tests/unit $(PYTEST_ARGS)

bench: install ## benchmarks (ours vs baselines, printed ratios); writes bench/out/*.json
	$(CLI) stack up
	@mkdir -p bench/out
	for b in codec gpu_ops backtest runtime features_e2e; do \
	  [ -f bench/$$b.py ] && $(PY) bench/$$b.py --json bench/out/$$b.json || exit 1; done

lint: install ## ruff + mypy
	$(VENV)/bin/ruff check mystocks_gpu tests bench scripts
	$(VENV)/bin/mypy mystocks_gpu

clean: stack-down ## remove the venv and stack data
	rm -rf $(VENV) .stack
