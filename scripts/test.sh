#!/usr/bin/env bash
# `make test`: lint, sam validate/build, the container engine and its network, the tests'
# PostgreSQL (proven reachable from a Lambda container before any test runs), the unit and
# integration tests, the dashboard in headless Chromium, then the SAM container tests.
#
# It stops what it started and reuses what was already running: a PostgreSQL that this
# checkout's `make up`/`make demo` had started stays up; one started here is stopped, and so
# is this checkout's network anchor container. The Podman service (machine-wide) stays up
# for the next run.
#
# Needs: the venv ($VENV) and the SAM CLI ($SAM), both made by the Makefile first.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
SAM="${SAM:-.tools/sam/bin/sam}"
LOCAL=".local"
PY="$VENV/bin/python"
mkdir -p "$LOCAL"

log() { printf 'make test: %s\n' "$*" >&2; }

pg_running() {
	# The tests' server lives in .local/pg (tests/support/stack.py): running if its pid is alive.
	local pid_file="$LOCAL/pg/data/postmaster.pid"
	[[ -f "$pid_file" ]] && kill -0 "$(head -n 1 "$pid_file")" 2>/dev/null
}

PG_WAS_RUNNING=0
pg_running && PG_WAS_RUNNING=1
ENGINE_READY=0

cleanup() {
	local rc=$?
	if ((ENGINE_READY)); then
		scripts/container_engine.sh --stop-anchor || true
	fi
	if ((PG_WAS_RUNNING == 0)) && pg_running; then
		log "stopping the PostgreSQL server this run started"
		"$PY" -c 'from pathlib import Path; from promptrun.local import postgres; postgres.stop(Path(".local/pg"))' ||
			true
	fi
	exit "$rc"
}
trap cleanup EXIT

"$VENV/bin/ruff" check .
"$SAM" validate --lint
"$SAM" build --cached --parallel

# The container engine, the Lambda image and the engine's bridge network, up before
# PostgreSQL starts so that the server can listen on the bridge address too.
scripts/container_engine.sh >"$LOCAL/engine.env"
ENGINE_READY=1
# shellcheck disable=SC1091
source "$LOCAL/engine.env"
# The local services listen on loopback and, for the containers, on the bridge's address.
export PROMPTRUN_LISTEN_EXTRA="$PROMPTRUN_CONTAINER_BRIDGE_ADDR"

# The tests' PostgreSQL, listening on loopback and the bridge.
PG_PORT="$("$PY" -c 'from tests.support import stack; print(stack.start_postgres().port)')"

"$VENV/bin/pytest" -q -n 2 -m 'not sam' tests/unit tests/integration
# The dashboard in headless Chromium (Debian's package, installed when missing).
scripts/chromium.sh >"$LOCAL/chromium.env"
# shellcheck disable=SC1091
source "$LOCAL/chromium.env"
"$VENV/bin/pytest" -q -m browser tests/browser

# Proof, right before the container tests, that a Lambda container reaches the tests'
# PostgreSQL: a machine whose container network is not ready fails here, with the reason.
scripts/container_engine.sh --reach "$PG_PORT"
SAM="$(cd "$(dirname "$SAM")" && pwd)/$(basename "$SAM")" "$VENV/bin/pytest" -q -m sam tests/sam
