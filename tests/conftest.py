"""Fixtures: a real PostgreSQL (a fresh database per test, copied from a migrated template),
moto in server mode, and a fresh SQS queue per test."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import Engine

from promptrun import aws
from promptrun.catalog import load_catalog, sync_catalog
from promptrun.db.engine import engine_for_url
from promptrun.db.pool import Pool, pool_for_url
from promptrun.settings import Settings
from tests.support import stack

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pg() -> Any:
    return stack.start_postgres()


@pytest.fixture(scope="session")
def template_db(pg: Any) -> str:
    return stack.template_database(pg)


@pytest.fixture
def database(pg: Any, template_db: str) -> Iterator[str]:
    name = stack.create_test_database(pg, template_db)
    yield name
    stack.drop_database(pg, name)


@pytest.fixture
def db_url(pg: Any, database: str) -> str:
    return stack.url_for(pg, database)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = engine_for_url(db_url, pool_size=20, max_overflow=10)
    yield eng
    eng.dispose()


@pytest.fixture
def pool(db_url: str) -> Iterator[Pool]:
    """The processor's kind of database: its own pool of pg8000 connections."""
    made = pool_for_url(db_url, size=20)
    yield made
    made.dispose()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[stack.MotoServer]:
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }
    )
    server = stack.MotoServer()
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    aws.client.cache_clear()
    yield server
    server.stop()


@pytest.fixture
def sqs(moto_server: stack.MotoServer) -> Any:
    return boto3.client("sqs", endpoint_url=moto_server.endpoint)


@pytest.fixture
def queue_url(sqs: Any) -> str:
    """A fresh JobsQueue with a dead-letter queue, as the template makes them."""
    name = f"jobs-{uuid.uuid4().hex[:10]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return sqs.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": "30",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}),
        },
    )["QueueUrl"]


@pytest.fixture
def settings(db_url: str, queue_url: str) -> Settings:
    return Settings(
        database_url=db_url,
        jobs_queue_url=queue_url,
        api_token="test-token-not-secret",
        max_attempts=3,
        lease_seconds=60,
        backoff_base_seconds=0,
        backoff_cap_seconds=1,
    )


EXAMPLE_CATALOG = REPO / "examples" / "catalog.yaml"


def sync(engine: Engine, yaml_text: str) -> None:
    sync_catalog(engine, load_catalog(yaml_text))


# Two offline models, a daily prompt on both (2 runs) and an hourly one on alpha: 5 jobs.
SMALL_CATALOG = """
models:
  - {slug: alpha, provider: offline, model: alpha-1, price_per_mtok: {input: 1.0, output: 2.0}}
  - {slug: beta, provider: offline, model: beta-1}
prompts:
  - {slug: crm, text: "What are the best CRM tools?", schedule: daily, runs: 2}
  - {slug: laptops, text: "Which laptops do developers like?", schedule: hourly, runs: 1, models: [alpha]}
"""


@pytest.fixture
def small_catalog(engine: Engine) -> str:
    text = SMALL_CATALOG
    sync(engine, text)
    return text


def with_settings(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)
