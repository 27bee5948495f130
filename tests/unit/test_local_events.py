"""The events built in code have the shape of the committed samples in events/."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from promptrun.fanout import parse_event
from promptrun.local.events import api_gateway_event, bearer, scheduled_event

EVENTS = Path(__file__).resolve().parents[2] / "events"


def test_scheduled_event_matches_the_sample_and_sets_the_period() -> None:
    sample = json.loads((EVENTS / "scheduled_event.json").read_text())
    built = scheduled_event(datetime(2026, 11, 22, 16, 5, tzinfo=timezone(timedelta(hours=3))))
    assert built.keys() == sample.keys()
    assert built["time"] == "2026-11-22T13:05:00Z"
    assert parse_event(built).at == datetime(2026, 11, 22, 13, 5, tzinfo=UTC)


def test_api_gateway_event_matches_the_sample() -> None:
    sample = json.loads((EVENTS / "apigw_get_batch.json").read_text())
    built = api_gateway_event(
        "/batches/2026-11-22",
        resource="/batches/{batch_key}",
        path_params={"batch_key": "2026-11-22"},
        query={"a": "1"},
        headers=bearer("t"),
    )
    assert sample.keys() <= built.keys()
    assert built["headers"]["Authorization"] == "Bearer t"
    assert built["multiValueHeaders"]["Authorization"] == ["Bearer t"]
    assert built["multiValueQueryStringParameters"] == {"a": ["1"]}
    assert built["requestContext"]["resourcePath"] == sample["requestContext"]["resourcePath"]
    assert built["pathParameters"] == sample["pathParameters"]
