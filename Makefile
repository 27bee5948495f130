# promptrun: everything a person runs. `make demo` and `make test` first.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON313 ?= $(shell scripts/find_python313.sh)
VENV := .venv
PY := $(VENV)/bin/python
SAM_VENV := .tools/sam
SAM := $(SAM_VENV)/bin/sam
SAM_CLI_VERSION := 1.170.0
LOCAL := .local
# sam build needs python3.13 on PATH: the project's venv provides it.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export SAM_CLI_TELEMETRY := 0

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# One lock for everything: the venv installs exactly requirements.lock (with hashes), then the
# project itself without resolving anything; the layer's shared/requirements.txt is its subset.
$(VENV)/.installed: pyproject.toml requirements.lock
	@test -n "$(PYTHON313)" || { echo "Python 3.13 not found: install it (pyenv install 3.13) or set PYTHON313"; exit 1; }
	test -x $(PY) || $(PYTHON313) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

LOCK_TARGET := --generate-hashes --python-version 3.13 --python-platform x86_64-manylinux_2_28
# The Lambda runtime's own (boto3 and what only it needs): never shadowed by the layer.
LAYER_EXCLUDES := boto3 botocore s3transfer jmespath urllib3

.PHONY: lock
lock: venv ## re-pin requirements.lock and the layer's subset (UPGRADE=--upgrade to move versions)
	$(VENV)/bin/uv pip compile -q $(LOCK_TARGET) $(UPGRADE) pyproject.toml --extra providers --extra cli \
		requirements-dev.txt -o requirements.lock
	$(VENV)/bin/uv pip compile -q $(LOCK_TARGET) shared/requirements.in -c requirements.lock \
		$(addprefix --no-emit-package ,$(LAYER_EXCLUDES)) -o shared/requirements.txt

$(SAM_VENV)/.installed:
	@test -n "$(PYTHON313)" || { echo "Python 3.13 not found"; exit 1; }
	test -x $(SAM_VENV)/bin/python || $(PYTHON313) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install -q --upgrade pip
	$(SAM_VENV)/bin/pip install -q 'aws-sam-cli==$(SAM_CLI_VERSION)'
	touch $@

.PHONY: venv sam-cli
venv: $(VENV)/.installed ## the project's virtual environment (Python 3.13)
sam-cli: $(SAM_VENV)/.installed ## the SAM CLI, in a virtual environment of its own

.PHONY: up down
up: venv ## start PostgreSQL and moto (server mode) for local runs
	$(VENV)/bin/promptrun local up
	source $(LOCAL)/env.sh && $(VENV)/bin/promptrun db upgrade

down: ## stop what this checkout started (by PID): moto, PostgreSQL, sam local
	@if [ -x $(VENV)/bin/promptrun ]; then $(VENV)/bin/promptrun local down; fi
	@if command -v podman >/dev/null 2>&1; then scripts/container_engine.sh --stop-anchor; fi

.PHONY: demo
demo: up ## the whole pipeline locally: fan-out, poller + processor, status summary
	source $(LOCAL)/env.sh && $(VENV)/bin/promptrun catalog sync examples/catalog.yaml
	source $(LOCAL)/env.sh && $(VENV)/bin/promptrun demo

.PHONY: api
api: up ## serve the status API and the dashboard on 127.0.0.1 (port kept in .local/ports.json; token: .local/api-token)
	source $(LOCAL)/env.sh && $(VENV)/bin/promptrun api

.PHONY: demo-sam
demo-sam: up sam-cli ## the demo with all three functions in Lambda containers (sam local)
	SAM=$(abspath $(SAM)) scripts/demo_sam.sh

.PHONY: engine
engine: ## a container engine (Docker, else Podman), the Lambda image and its network for sam local
	@mkdir -p $(LOCAL)
	scripts/container_engine.sh > $(LOCAL)/engine.env

.PHONY: validate build
validate: sam-cli ## sam validate --lint
	$(SAM) validate --lint

build: sam-cli venv ## sam build
	$(SAM) build --cached --parallel

.PHONY: lint
lint: venv ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

.PHONY: test test-unit
test-unit: venv ## unit and integration tests only (no containers): the inner loop
	$(VENV)/bin/pytest -q -n 2 -m 'not sam' tests/unit tests/integration

test: venv sam-cli ## everything: lint, sam validate/build, engine + network check, unit, integration, the dashboard in Chromium, SAM container tests
	VENV=$(VENV) SAM=$(abspath $(SAM)) scripts/test.sh

BENCH_VENV := .venv-bench

# The baseline's own environment (Procrastinate + psycopg): never the layer's nor the project's.
$(BENCH_VENV)/.installed: tests/bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON313) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q -r tests/bench/requirements.txt
	touch $@

.PHONY: bench
bench: venv $(BENCH_VENV)/.installed ## every scale figure beside its goal (1M-row data set cached after the first run)
	$(VENV)/bin/python -m tests.bench.run
	$(VENV)/bin/python -m tests.bench.flow
	$(VENV)/bin/python -m tests.bench.visibility

.PHONY: clean
clean: down ## remove build output and local state
	rm -rf .aws-sam $(LOCAL)
