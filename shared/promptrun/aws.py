"""Every AWS client lives here: SQS sending, secrets, and the clients themselves.

boto3 honours AWS_ENDPOINT_URL, which is how tests and the local stack point at moto.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

from promptrun.errors import ConfigError
from promptrun.observability import logger

_client_lock = threading.Lock()
SQS_BATCH = 10
MAX_DELAY_SECONDS = 900  # SQS's DelaySeconds ceiling
SEND_THREADS = 8


@cache
def client(service: str) -> Any:
    # boto3 costs 0.1-0.2 s to import: paid on first use, not at every cold start.
    import boto3
    from botocore.config import Config

    # boto3's default session is not thread-safe to create clients from; guard it once.
    with _client_lock:
        return boto3.client(service, config=Config(retries={"mode": "standard", "max_attempts": 4}))


def get_secret_json(arn: str, max_age: int) -> dict[str, Any]:
    """A JSON secret, cached by Powertools for max_age seconds."""
    from aws_lambda_powertools.utilities import parameters

    try:
        value = parameters.get_secret(arn, transform="json", max_age=max_age)
    except parameters.exceptions.TransformParameterError:
        raise ConfigError(f"secret {arn} is not a JSON object") from None
    if not isinstance(value, dict):
        raise ConfigError(f"secret {arn} is not a JSON object")
    return value


def get_secret_string(arn: str, max_age: int) -> str:
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_secret(arn, max_age=max_age)
    if isinstance(value, bytes):
        value = value.decode()
    return str(value)


@dataclass(frozen=True)
class SendResult:
    sent: list[str]
    failed: dict[str, str]


@dataclass(frozen=True)
class JobMessageOut:
    """A message for one job: visible after `delay_seconds` (at most 900), with the job's turn
    behind a rate limit and its count of waits for a slot as hints (promptrun.waiting)."""

    job_id: str
    delay_seconds: int = 0
    turn: float | None = None
    slot_waits: int = 0

    @property
    def delay(self) -> int:
        return max(0, min(MAX_DELAY_SECONDS, int(self.delay_seconds)))

    def body(self) -> str:
        body: dict[str, object] = {"job_id": self.job_id}
        if self.turn is not None:
            body["turn"] = round(self.turn, 3)
        if self.slot_waits:
            body["slot_waits"] = self.slot_waits
        return json.dumps(body)


class JobQueue:
    """The one SQS sender: job ids in, SendMessageBatch of 10, failed entries retried."""

    def __init__(self, queue_url: str, sqs: Any | None = None, max_tries: int = 4) -> None:
        self.queue_url = queue_url
        self._sqs = sqs
        self.max_tries = max_tries

    @property
    def sqs(self) -> Any:
        """The client, made on the first send: a processor whose jobs succeed sends nothing,
        and boto3's import and a client cost tens of milliseconds."""
        if self._sqs is None:
            self._sqs = client("sqs")
        return self._sqs

    def send_jobs(self, job_ids: Iterable[str], delay_seconds: int = 0) -> SendResult:
        """One message per job id; `delay_seconds` (at most 900) before any is visible."""
        return self.send([JobMessageOut(str(job_id), delay_seconds) for job_id in job_ids])

    def send(self, messages: Sequence[JobMessageOut]) -> SendResult:
        """Each message, SendMessageBatch of 10 (a few calls at once); the job ids sent, and
        the ones SQS did not take with its reason."""
        sent: list[str] = []
        failed: dict[str, str] = {}
        chunks = [messages[at : at + SQS_BATCH] for at in range(0, len(messages), SQS_BATCH)]
        if len(chunks) <= 1:  # one call: no pool to start
            for chunk in chunks:
                chunk_sent, chunk_failed = self._send_chunk(chunk)
                sent.extend(chunk_sent)
                failed.update(chunk_failed)
            return SendResult(sent=sent, failed=failed)
        # SendMessageBatch calls are round trips: a few at once (boto3 clients are thread-safe).
        with ThreadPoolExecutor(max_workers=min(SEND_THREADS, max(1, len(chunks)))) as pool:
            for chunk_sent, chunk_failed in pool.map(self._send_chunk, chunks):
                sent.extend(chunk_sent)
                failed.update(chunk_failed)
        return SendResult(sent=sent, failed=failed)

    def _send_chunk(self, messages: Sequence[JobMessageOut]) -> tuple[list[str], dict[str, str]]:
        pending = {str(i): m for i, m in enumerate(messages)}
        sent: list[str] = []
        errors: dict[str, str] = {}
        for attempt in range(self.max_tries):
            if not pending:
                break
            if attempt:
                time.sleep(min(2.0, 0.1 * 2**attempt))
            entries = [
                {"Id": entry_id, "MessageBody": m.body()}
                | ({"DelaySeconds": m.delay} if m.delay else {})
                for entry_id, m in pending.items()
            ]
            try:
                resp = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except Exception as exc:  # the whole call failed: every entry is retried
                logger.warning("SendMessageBatch failed", extra={"error": type(exc).__name__})
                errors = {m.job_id: type(exc).__name__ for m in pending.values()}
                continue
            for ok in resp.get("Successful", []):
                sent.append(pending.pop(ok["Id"]).job_id)
            errors = {}
            for bad in resp.get("Failed", []):
                job_id = pending[bad["Id"]].job_id
                errors[job_id] = bad.get("Code", "unknown")
                if bad.get("SenderFault"):  # not worth retrying
                    pending.pop(bad["Id"])
        failed = {m.job_id: errors.get(m.job_id, "unknown") for m in pending.values()}
        failed.update({k: v for k, v in errors.items() if k not in sent})
        return sent, failed


class ContinuationQueue:
    """The fan-out's own queue: a message on it invokes the fan-out again to send what an
    invocation had no time left for (the SQS event source of FanoutFunction)."""

    def __init__(self, queue_url: str, sqs: Any | None = None) -> None:
        self.queue_url = queue_url
        self._sqs = sqs

    @property
    def sqs(self) -> Any:
        """The client, made when a fan-out first runs out of time (most never do)."""
        if self._sqs is None:
            self._sqs = client("sqs")
        return self._sqs

    def continue_sending(self) -> None:
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(CONTINUE_BODY))


CONTINUE_BODY = {"continue": "send"}


def is_continuation(event: dict[str, Any]) -> bool:
    """An SQS event from the continuation queue (and nothing else)."""
    records = event.get("Records")
    return (
        isinstance(records, list)
        and bool(records)
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)
    )
