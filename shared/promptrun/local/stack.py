"""`promptrun local up|down`: PostgreSQL and moto for the demo, with an env file to source."""

from __future__ import annotations

import json
import os
import secrets
import shlex
from pathlib import Path

import boto3

from promptrun.local import moto_server, postgres

# The demo's ports; PROMPTRUN_PG_PORT / PROMPTRUN_MOTO_PORT move them.
MOTO_PORT = int(os.environ.get("PROMPTRUN_MOTO_PORT", "5010"))
PG_PORT = int(os.environ.get("PROMPTRUN_PG_PORT", "54329"))
REGION = "us-east-1"


def create_queues(endpoint: str, name: str = "promptrun-jobs") -> str:
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
    pg = postgres.ensure_running(root / "pg", PG_PORT)
    endpoint = moto_server.ensure_running(root, MOTO_PORT)
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


def down(root: Path) -> None:
    moto_server.stop(root)
    postgres.stop(root / "pg")
