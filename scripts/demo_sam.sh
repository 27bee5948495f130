#!/usr/bin/env bash
# The demo with all three functions in Lambda containers (`make demo-sam`):
#
#   PostgreSQL + moto (`make up`)  ->  catalogue sync
#   sam local start-lambda FanoutFunction ProcessorFunction   (background, warm containers)
#   sam local start-api                                       (background, warm containers)
#   FanoutFunction invoked through start-lambda's Lambda API with a scheduled event for now
#   promptrun poll --until-done ... --lambda-endpoint ...     (the local SQS -> processor mapping)
#   each batch's summary from StatusFunction through start-api (curl)
#
# Needs `make up` first (.local/env.sh) and a container engine (scripts/container_engine.sh,
# run here). The SAM processes are stopped on exit, whatever happens.
#
# Environment:
#   SAM                            SAM CLI (default .tools/sam/bin/sam)
#   PROMPTRUN_DEMO_BATCH_KEY       fan out a manual batch with this key instead of the
#                                  scheduled period (a new key always creates new jobs)
#   PROMPTRUN_CONTAINER_HOST_NAME  how containers reach this machine (default: by engine)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
LOCAL="$REPO/.local"
SAM="${SAM:-$REPO/.tools/sam/bin/sam}"
PY="$REPO/.venv/bin/python"
export PATH="$REPO/.venv/bin:$PATH" # sam build needs python3.13 on PATH
export SAM_CLI_TELEMETRY=0

say() { printf '\ndemo-sam: %s\n' "$*"; }
die() {
	printf 'demo-sam: ERROR: %s\n' "$*" >&2
	exit 1
}

[[ -x "$SAM" ]] || die "no SAM CLI at $SAM (make sam-cli, or set SAM)"
[[ -f "$LOCAL/env.sh" ]] || die "$LOCAL/env.sh is missing: run \`make up\` first"
# shellcheck source=/dev/null
source "$LOCAL/env.sh"

# ------------------------------------------------------------ the container engine
scripts/container_engine.sh >"$LOCAL/engine.env"
# shellcheck source=/dev/null
source "$LOCAL/engine.env"
engine_api() { # METHOD PATH: the engine's Docker API
	case "$DOCKER_HOST" in
	unix://*) curl -s -m 10 -X "$1" --unix-socket "${DOCKER_HOST#unix://}" "http://d$2" ;;
	tcp://*) curl -s -m 10 -X "$1" "http://${DOCKER_HOST#tcp://}$2" ;;
	*) echo '{}' ;;
	esac
}
SAM_ENGINE_ARGS=(--invoke-image "$PROMPTRUN_LAMBDA_IMAGE" --skip-pull-image)
if engine_api GET /version | grep -qi '"podman'; then
	HOST_NAME="${PROMPTRUN_CONTAINER_HOST_NAME:-host.containers.internal}"
else
	HOST_NAME="${PROMPTRUN_CONTAINER_HOST_NAME:-host.docker.internal}"
	[[ "$HOST_NAME" == host.docker.internal ]] &&
		SAM_ENGINE_ARGS+=(--add-host host.docker.internal:host-gateway)
fi
say "container engine at $DOCKER_HOST, image $PROMPTRUN_LAMBDA_IMAGE; containers reach this machine as $HOST_NAME"
# Proof that a container reaches the demo's PostgreSQL before anything is started.
PG_PORT="$("$PY" -c 'import os; from sqlalchemy.engine import make_url; print(make_url(os.environ["DATABASE_URL"]).port)')"
scripts/container_engine.sh --reach "$PG_PORT"

# ------------------------------------------------------------ build, catalogue, env
say "sam build"
"$SAM" build --cached --parallel >"$LOCAL/sam-build.log" 2>&1 ||
	{
		tail -n 30 "$LOCAL/sam-build.log" >&2
		die "sam build failed (log: $LOCAL/sam-build.log)"
	}

say "catalogue sync (examples/catalog.yaml)"
promptrun catalog sync examples/catalog.yaml

# The local services as the containers see them; SAM passes only variables the template declares.
ENV_FILE="$LOCAL/sam-env.json"
HOST_NAME="$HOST_NAME" "$PY" - "$ENV_FILE" <<'EOF'
import json, os, sys
from urllib.parse import urlsplit, urlunsplit

def for_containers(url: str) -> str:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "0.0.0.0"):
        return url
    netloc = os.environ["HOST_NAME"] + (f":{parts.port}" if parts.port else "")
    if parts.username:
        netloc = f"{parts.username}:{parts.password}@{netloc}" if parts.password else f"{parts.username}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc))

env = {
    "DATABASE_URL": for_containers(os.environ["DATABASE_URL"]),
    "DATABASE_SECRET_ARN": "",
    "JOBS_QUEUE_URL": for_containers(os.environ["JOBS_QUEUE_URL"]),
    "JOBS_DLQ_URL": for_containers(os.environ.get("JOBS_DLQ_URL", "")),
    "FANOUT_QUEUE_URL": "",
    "AWS_ENDPOINT_URL": for_containers(os.environ["AWS_ENDPOINT_URL"]),
    "API_TOKEN": os.environ["API_TOKEN"],
    "API_TOKEN_SECRET_ARN": "",
    "PROVIDER_SECRETS_ARN": "",
    "LOG_LEVEL": "WARNING",
}
with open(sys.argv[1], "w") as f:
    json.dump({"Parameters": env}, f, indent=2)
os.chmod(sys.argv[1], 0o600)
EOF

# ------------------------------------------------------------ sam local, in the background
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PIDS=()
SAM_LOGS=()
stop_sam() {
	local pid id
	for pid in "${PIDS[@]}"; do
		kill -TERM -- "-$pid" 2>/dev/null || true # its process group; SAM removes its containers
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 1 60); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.5
		done
		kill -KILL -- "-$pid" 2>/dev/null || true
	done
	PIDS=()
	rm -f "$LOCAL"/pids/sam-*.pid
	# ... except a container it was still starting when stopped: remove those by their ids.
	for id in $(grep -ho 'SAM_CONTAINER_ID: [0-9a-f]*' "${SAM_LOGS[@]}" 2>/dev/null | cut -d' ' -f2); do
		engine_api DELETE "/containers/$id?force=true" >/dev/null || true
	done
	SAM_LOGS=()
}
trap stop_sam EXIT
trap 'exit 130' INT TERM

start_sam() { # command log port [function ids]: starts in its own process group, prints the pid
	local command="$1" log="$2" port="$3"
	shift 3
	setsid "$SAM" local "$command" "$@" --template .aws-sam/build/template.yaml \
		--host 127.0.0.1 --port "$port" --env-vars "$ENV_FILE" --warm-containers EAGER \
		"${SAM_ENGINE_ARGS[@]}" >"$log" 2>&1 </dev/null &
	# Recorded so that `make down` stops this one by its pid, never every sam on the machine.
	mkdir -p "$LOCAL/pids" && echo $! >"$LOCAL/pids/sam-$command.pid"
	echo $!
}

wait_listening() { # name url log pid
	local name="$1" url="$2" log="$3" pid="$4" i
	for i in $(seq 1 600); do
		kill -0 "$pid" 2>/dev/null || {
			tail -n 30 "$log" >&2
			die "sam local $name exited (log: $log)"
		}
		if curl -s -o /dev/null -m 60 "$url"; then
			return 0
		fi
		sleep 0.5
	done
	tail -n 30 "$log" >&2
	die "sam local $name did not listen within 5 minutes (log: $log)"
}

LAMBDA_PORT="$(free_port)"
API_PORT="$(free_port)"
while [[ "$API_PORT" == "$LAMBDA_PORT" ]]; do API_PORT="$(free_port)"; done
LAMBDA_URL="http://127.0.0.1:$LAMBDA_PORT"
API_URL="http://127.0.0.1:$API_PORT"
say "starting sam local start-lambda on $LAMBDA_URL and start-api on $API_URL (warm containers;
          the Lambda image is rebuilt with the layer first: a minute or two)"
# Both at once: SAM shares an image build under way between processes.
SAM_LOGS=("$LOCAL/sam-start-lambda.log" "$LOCAL/sam-start-api.log")
LAMBDA_PID="$(start_sam start-lambda "$LOCAL/sam-start-lambda.log" "$LAMBDA_PORT" FanoutFunction ProcessorFunction)"
PIDS+=("$LAMBDA_PID")
API_PID="$(start_sam start-api "$LOCAL/sam-start-api.log" "$API_PORT")"
PIDS+=("$API_PID")
wait_listening start-lambda "$LAMBDA_URL/" "$LOCAL/sam-start-lambda.log" "$LAMBDA_PID"
wait_listening start-api "$API_URL/" "$LOCAL/sam-start-api.log" "$API_PID"
say "both up (logs: .local/sam-start-lambda.log, .local/sam-start-api.log)"

# ------------------------------------------------------------ fan-out, processing, summary
say "fan-out: FanoutFunction through the Lambda API of start-lambda"
BATCH_KEYS="$(
	"$PY" - "$LAMBDA_URL" "${PROMPTRUN_DEMO_BATCH_KEY:-}" <<'EOF'
import json, sys
from datetime import UTC, datetime

import boto3
from botocore.config import Config
from promptrun.local.events import scheduled_event

endpoint, manual_key = sys.argv[1], sys.argv[2]
event = {"batch_key": manual_key} if manual_key else scheduled_event(datetime.now(UTC))
what = f"manual batch {manual_key}" if manual_key else f"scheduled event at {event['time']}"
lam = boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1",
                   config=Config(read_timeout=900, retries={"max_attempts": 0}))
resp = lam.invoke(FunctionName="FanoutFunction", Payload=json.dumps(event).encode())
result = json.loads(resp["Payload"].read())
if resp.get("FunctionError"):
    sys.exit(f"FanoutFunction failed: {result.get('errorType')}: {result.get('errorMessage')}")
print(f"  {what}: {result['created']} jobs created, {result['existing']} already there, "
      f"{result['sent']} sent", file=sys.stderr)
for key, counts in sorted(result["batches"].items()):
    print(f"    {key}: {counts['created']} new, {counts['existing']} existing", file=sys.stderr)
if not manual_key and not result["created"]:
    print("  (this period was fanned out before: nothing new, by design. For a new batch:\n"
          "   PROMPTRUN_DEMO_BATCH_KEY=demo-1 make demo-sam)", file=sys.stderr)
print(" ".join(sorted(result["batches"])))
EOF
)"
[[ -n "$BATCH_KEYS" ]] || die "the fan-out made no batch (no due prompts in the catalogue?)"

say "processing: promptrun poll --until-done $BATCH_KEYS --lambda-endpoint $LAMBDA_URL
          (moto's JobsQueue -> ProcessorFunction containers, partial batch responses honoured)"
# shellcheck disable=SC2086 # batch keys are words
promptrun poll --until-done $BATCH_KEYS --lambda-endpoint "$LAMBDA_URL" --timeout 600

say "summary: StatusFunction through start-api"
read -r -d '' RENDER_SUMMARY <<'EOF' || true
import json, sys
from promptrun.summary_table import render
print(render(json.load(sys.stdin)))
EOF
read -r -d '' RENDER_ENTITIES <<'EOF' || true
import json, sys
report = json.load(sys.stdin)
top = [f"{e['display_name']} ({e['jobs']}/{report['answers']} answers)" for e in report["items"]]
print("most mentioned: " + (", ".join(top) or "-"))
EOF
for key in $BATCH_KEYS; do
	echo
	curl -sf -m 60 -H "Authorization: Bearer $API_TOKEN" "$API_URL/batches/$key" |
		"$PY" -c "$RENDER_SUMMARY" || die "GET /batches/$key failed (log: $LOCAL/sam-start-api.log)"
	curl -sf -m 60 -H "Authorization: Bearer $API_TOKEN" "$API_URL/entities?batch_key=$key&limit=5" |
		"$PY" -c "$RENDER_ENTITIES" || die "GET /entities failed (log: $LOCAL/sam-start-api.log)"
done
echo
say "done: fan-out, processor and status API all ran in Lambda containers; stopping sam local"
