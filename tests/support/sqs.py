"""Reading a test queue to its end."""

from __future__ import annotations

from typing import Any


def receive_all(sqs: Any, queue_url: str | None, delete: bool = False) -> list[dict[str, Any]]:
    """Every message now visible. Received messages stay in flight (their visibility timeout)
    unless `delete`: then they are gone, as a consumer that acknowledged them leaves them."""
    out: list[dict[str, Any]] = []
    while True:
        msgs = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, AttributeNames=["All"]
        ).get("Messages", [])
        if not msgs:
            return out
        out.extend(msgs)
        if delete:
            sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)
                ],
            )
