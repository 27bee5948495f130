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

$(VENV)/.installed: pyproject.toml requirements-dev.txt
	@test -n "$(PYTHON313)" || { echo "Python 3.13 not found: install it (pyenv install 3.13) or set PYTHON313"; exit 1; }
	test -x $(PY) || $(PYTHON313) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[providers]' -r requirements-dev.txt
	touch $@

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

down: ## stop what `make up` started
	@if [ -x $(VENV)/bin/promptrun ]; then $(VENV)/bin/promptrun local down; fi
	-@pkill -f '[s]am local start-' 2>/dev/null || true

.PHONY: demo
demo: up ## the whole pipeline locally: fan-out, poller + processor, status summary
	source $(LOCAL)/env.sh && $(VENV)/bin/promptrun catalog sync examples/catalog.yaml
	source $(LOCAL)/env.sh && $(VENV)/bin/promptrun demo

.PHONY: demo-sam
demo-sam: up sam-cli ## the demo with all three functions in Lambda containers (sam local)
	SAM=$(abspath $(SAM)) scripts/demo_sam.sh

.PHONY: engine
engine: ## a container engine (Docker, else Podman) and the Lambda image for sam local
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

test: venv sam-cli ## everything: lint, sam validate/build, unit, integration and SAM container tests
	@mkdir -p $(LOCAL)
	$(VENV)/bin/ruff check .
	$(SAM) validate --lint
	$(SAM) build --cached --parallel
	$(VENV)/bin/pytest -q -n 2 -m 'not sam' tests/unit tests/integration
	scripts/container_engine.sh > $(LOCAL)/engine.env
	source $(LOCAL)/engine.env && SAM=$(abspath $(SAM)) $(VENV)/bin/pytest -q -m sam tests/sam

BENCH_VENV := .venv-bench

# The baseline's own environment (Procrastinate + psycopg): never the layer's nor the project's.
$(BENCH_VENV)/.installed: tests/bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON313) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q -r tests/bench/requirements.txt
	touch $@

.PHONY: bench
bench: venv $(BENCH_VENV)/.installed ## every scale figure beside its goal (1M-row data set cached after the first run)
	$(VENV)/bin/python -m tests.bench.run

.PHONY: clean
clean: down ## remove build output and local state
	rm -rf .aws-sam $(LOCAL)
