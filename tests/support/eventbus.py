"""What reaches EventBridge: a rule on the default bus (moto server) forwarding promptrun's
events to a queue of the test's own."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3

from tests.support.sqs import receive_all


class EventCapture:
    def __init__(self, sqs: Any, queue_url: str) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.seen: list[dict[str, Any]] = []

    def events(self, detail_type: str | None = None) -> list[dict[str, Any]]:
        """Every event so far (read from the queue and kept)."""
        for msg in receive_all(self.sqs, self.queue_url, delete=True):
            self.seen.append(json.loads(msg["Body"]))
        return [e for e in self.seen if detail_type is None or e["detail-type"] == detail_type]


@contextmanager
def capture_events(endpoint: str) -> Iterator[EventCapture]:
    sqs = boto3.client("sqs", endpoint_url=endpoint)
    bus = boto3.client("events", endpoint_url=endpoint)
    name = f"ev-{uuid.uuid4().hex[:10]}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    bus.put_rule(Name=name, EventPattern=json.dumps({"source": ["promptrun"]}))
    bus.put_targets(Rule=name, Targets=[{"Id": "q", "Arn": arn}])
    try:
        yield EventCapture(sqs, url)
    finally:
        bus.remove_targets(Rule=name, Ids=["q"])
        bus.delete_rule(Name=name)
        sqs.delete_queue(QueueUrl=url)
