"""A model row changed in the database behind the catalogue's back cannot send the key over
plain http: the job fails as `config` and the provider server sees no request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from promptrun.processor import Outcome
from promptrun.settings import Settings
from tests.conftest import with_settings
from tests.integration.test_provider_pipeline import (
    OPENAI_KEY,
    MeteredOpenAI,
    catalogue,
    first_message,
    one_job,
    runner,
)


@pytest.fixture
def server() -> Iterator[MeteredOpenAI]:
    with MeteredOpenAI() as oai:
        yield oai


def test_a_row_pointing_the_key_at_plain_http_fails_without_sending(
    engine: Engine, settings: Settings, sqs: Any, server: MeteredOpenAI
) -> None:
    keyed = with_settings(settings, provider_keys={"openai": OPENAI_KEY})
    model = {
        "slug": "proxied",
        "provider": "openai",
        "model": "gpt-fake",
        "base_url": server.base_url,
        "params": {"api_key_name": "openai", "api_key_host": "127.0.0.1"},
    }
    catalogue(engine, [model])
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE models SET base_url = :u, params = CAST(:p AS jsonb)"),
            {
                "u": "http://gateway.example.invalid/v1",
                "p": json.dumps(
                    {"api_key_name": "openai", "api_key_host": "gateway.example.invalid"}
                ),
            },
        )
    msg = first_message(engine, keyed, sqs)
    assert runner(engine, keyed).handle(msg["Body"], msg["ReceiptHandle"]) == Outcome.FAILED
    row = one_job(engine)
    assert (row["status"], row["error_kind"], row["attempt_count"]) == ("failed", "config", 1)
    assert "plain http" in row["error_message"] and OPENAI_KEY not in row["error_message"]
    assert server.request_count == 0
