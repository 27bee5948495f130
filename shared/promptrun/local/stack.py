"""`promptrun local up|down`: this checkout's PostgreSQL and moto, with an env file to source.

Ports are chosen once and saved in `.local/ports.json` (see ports.py); `down` stops only what
this checkout started, by PID: moto, PostgreSQL (pg_ctl on its own data folder) and any
`sam local` that scripts/demo_sam.sh recorded in `.local/pids/`."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import sys
from pathlib import Path

import boto3

from promptrun.local import moto_server, ports, postgres

# The preferred ports, used when free the first time; PROMPTRUN_PG_PORT / PROMPTRUN_MOTO_PORT
# choose them explicitly.
MOTO_PORT = 5010
PG_PORT = 54329
REGION = "us-east-1"


def create_queues(endpoint: str, name: str = "promptrun-jobs") -> str:
    """JobsQueue (redriving to its dead-letter queue, `<name>-dlq`); returns its URL."""
    sqs = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return str(
        sqs.create_queue(
            QueueName=name,
            Attributes={
                # Shorter than the template's 900 s so that local retries come back soon;
                # 5 receives, then the dead-letter queue, as in the template.
                "VisibilityTimeout": "60",
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}
                ),
            },
        )["QueueUrl"]
    )


def up(root: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    pg = postgres.ensure_running(root / "pg")
    moto_port = ports.choose(
        root,
        "moto",
        default=MOTO_PORT,
        env_var="PROMPTRUN_MOTO_PORT",
        ours=lambda port: moto_server.owns(root, port),
    )
    endpoint = moto_server.ensure_running(root, moto_port)
    token_file = root / "api-token"
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(24) + "\n")
        token_file.chmod(0o600)
    env = {
        "DATABASE_URL": pg.app_url(),
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "JOBS_QUEUE_URL": create_queues(endpoint),
        "JOBS_DLQ_URL": _queue_url(endpoint, "promptrun-jobs-dlq"),
        "API_TOKEN": token_file.read_text().strip(),
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "Promptrun",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }
    env_file = root / "env.sh"
    env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    env_file.chmod(0o600)
    return env


def _queue_url(endpoint: str, name: str) -> str:
    sqs = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return str(sqs.get_queue_url(QueueName=name)["QueueUrl"])


def stop_recorded(root: Path) -> list[int]:
    """Stop the process groups recorded in `.local/pids/*.pid` (sam local, by demo_sam.sh)
    whose process is still the one recorded; returns the pids stopped."""
    stopped = []
    for pid_file in sorted((root / "pids").glob("*.pid")):
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid_file.unlink(missing_ok=True)
            continue
        # A recycled pid belongs to someone else: only a process still running sam is ours.
        if ports.pid_alive(pid) and "sam" in ports.cmdline(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            else:
                stopped.append(pid)
                print(f"stopped {pid_file.stem} (pid {pid})", file=sys.stderr)
        pid_file.unlink(missing_ok=True)
    return stopped


def down(root: Path) -> None:
    stop_recorded(root)
    moto_server.stop(root)
    postgres.stop(root / "pg")
