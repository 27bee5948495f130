"""The local stand-in for Lambda's SQS event source mapping.

It long-polls JobsQueue, hands SQS-shaped batches to the processor, deletes the records
the processor acknowledged and leaves the failed ones (batchItemFailures) to come back
after their visibility timeout, exactly as the AWS mapping does.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Invoke = Callable[[dict[str, Any]], dict[str, Any]]


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """Messages from ReceiveMessage in the shape Lambda receives them."""
    records = []
    for m in messages:
        body = m["Body"]
        records.append(
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": body,
                "attributes": m.get("Attributes", {}),
                "messageAttributes": m.get("MessageAttributes", {}),
                "md5OfBody": m.get("MD5OfBody") or hashlib.md5(body.encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
        )
    return {"Records": records}


@dataclass
class PollStats:
    batches: int = 0
    received: int = 0
    acknowledged: int = 0
    failed: int = 0
    invoke_errors: int = 0


class LocalPoller:
    def __init__(
        self, sqs: Any, queue_url: str, invoke: Invoke, batch_size: int = 10, wait_seconds: int = 1
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.invoke = invoke
        self.batch_size = batch_size
        self.wait_seconds = wait_seconds
        attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]
        self.queue_arn = attrs["QueueArn"]
        self.region = self.queue_arn.split(":")[3]
        self.stats = PollStats()

    def poll_once(self) -> int:
        """One ReceiveMessage and one invocation; returns how many messages were received."""
        resp = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=self.wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = resp.get("Messages", [])
        if not messages:
            return 0
        self.stats.batches += 1
        self.stats.received += len(messages)
        try:
            result = self.invoke(sqs_event(messages, self.queue_arn, self.region))
        except Exception:
            # A failed invocation: the whole batch comes back after its visibility timeout.
            self.stats.invoke_errors += 1
            self.stats.failed += len(messages)
            return len(messages)
        failures = {f["itemIdentifier"] for f in (result or {}).get("batchItemFailures", [])}
        done = [m for m in messages if m["MessageId"] not in failures]
        self.stats.failed += len(messages) - len(done)
        for start in range(0, len(done), 10):
            chunk = done[start : start + 10]
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)
                ],
            )
        self.stats.acknowledged += len(done)
        return len(messages)

    def run_until(
        self,
        finished: Callable[[], bool],
        timeout: float = 300.0,
        on_progress: Callable[[PollStats], None] | None = None,
    ) -> PollStats:
        deadline = time.monotonic() + timeout
        while not finished():
            if time.monotonic() > deadline:
                raise TimeoutError(f"poller: not finished after {timeout:.0f}s ({self.stats})")
            self.poll_once()
            if on_progress:
                on_progress(self.stats)
        return self.stats


def lambda_invoker(lambda_client: Any, function_name: str) -> Invoke:
    """Invoke a function through the Lambda API (e.g. `sam local start-lambda`)."""

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        resp = lambda_client.invoke(FunctionName=function_name, Payload=json.dumps(event).encode())
        payload = resp["Payload"].read()
        if resp.get("FunctionError"):
            raise RuntimeError(f"{function_name} failed: {payload[:500]!r}")
        return json.loads(payload or b"{}")

    return invoke
