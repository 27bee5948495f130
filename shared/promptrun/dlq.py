"""The dead-letter queue checked against the database: re-send the messages whose job can still
run, drop those whose job is finished or gone, keep only what needs a person.

A message lands in JobsDeadLetterQueue after five receives without an acknowledgement. The job
row says what it deserves now:

    queued, or running with an expired lease   runnable: sent to JobsQueue again (redrive)
    succeeded, failed, cancelled, skipped      finished: dropped
    running with a live lease                  a worker holds it: dropped (an expired lease is
                                               rescued by the fan-out)
    no such job                                dropped (pruned, or never created)
    a body without a job id                    kept: it needs a person
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, bindparam, text

from promptrun.aws import JobQueue
from promptrun.observability import logger

# How long the scanned messages stay invisible while one check runs.
SCAN_VISIBILITY_SECONDS = 120
MAX_MESSAGES = 10_000
# Long polling (>= 1 s) asks every SQS server; a short poll samples some and can answer empty
# while messages wait, which would end the scan early and leave them unchecked.
RECEIVE_WAIT_SECONDS = 1


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    receipt_handle: str
    job_id: str | None
    verdict: str  # runnable | finished | running | unknown_job | malformed
    detail: str


@dataclass
class DlqReport:
    redrive: bool
    letters: list[DeadLetter] = field(default_factory=list)
    resent: int = 0
    dropped: int = 0
    kept: int = 0

    def counts(self) -> dict[str, int]:
        return dict(Counter(letter.verdict for letter in self.letters))

    def lines(self) -> list[str]:
        out = [
            f"{d.message_id}  job {d.job_id or '-'}  {d.verdict}: {d.detail}" for d in self.letters
        ]
        counts = ", ".join(f"{n} {v}" for v, n in sorted(self.counts().items())) or "empty"
        if self.redrive:
            out.append(
                f"dead-letter queue: {counts}; {self.resent} re-sent, {self.dropped} dropped, {self.kept} kept"
            )
        else:
            out.append(f"dead-letter queue: {counts} (nothing changed; `dlq redrive` acts on them)")
        return out


def _job_id(body: str) -> str | None:
    try:
        data = json.loads(body)
        return str(uuid.UUID(str(data["job_id"])))
    except (ValueError, TypeError, KeyError):
        return None


def _receive_all(
    sqs: Any, dlq_url: str, limit: int, on_progress: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    while len(seen) < limit:
        msgs = sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=RECEIVE_WAIT_SECONDS,
            VisibilityTimeout=SCAN_VISIBILITY_SECONDS,
        ).get("Messages", [])
        if not msgs:
            break
        for m in msgs:
            seen.setdefault(m["MessageId"], m)
        if on_progress is not None:
            on_progress(len(seen))
    return list(seen.values())


_STATES = text(
    "SELECT id, status, (lease_expires_at IS NOT NULL AND lease_expires_at < now()) AS expired "
    "FROM prompt_jobs WHERE id IN :ids"
).bindparams(bindparam("ids", expanding=True))


def _verdict(state: Any) -> tuple[str, str]:
    if state is None:
        return "unknown_job", "no such job (pruned, or never created)"
    if state.status == "queued":
        return "runnable", "queued"
    if state.status == "processing":
        if state.expired:
            return "runnable", "processing, its worker's lease expired"
        return "running", "a worker holds it"
    return "finished", state.status


def check_dead_letters(
    engine: Engine,
    sqs: Any,
    dlq_url: str,
    queue: JobQueue | None,
    *,
    redrive: bool,
    limit: int = MAX_MESSAGES,
    on_progress: Callable[[int], None] | None = None,
) -> DlqReport:
    """Read every message of the dead-letter queue and judge it by its job row; with
    `redrive`, re-send the runnable ones to `queue` and delete the dropped ones.
    `on_progress` hears how many messages have been read so far."""
    messages = _receive_all(sqs, dlq_url, limit, on_progress)
    ids = {m["MessageId"]: _job_id(m.get("Body", "")) for m in messages}
    wanted = sorted({uuid.UUID(i) for i in ids.values() if i})
    states: dict[str, Any] = {}
    if wanted:
        with engine.connect() as conn:
            states = {str(r.id): r for r in conn.execute(_STATES, {"ids": wanted})}
    report = DlqReport(redrive=redrive)
    for m in messages:
        job_id = ids[m["MessageId"]]
        if job_id is None:
            verdict, detail = "malformed", 'body is not {"job_id": "<uuid>"}: needs a person'
        else:
            verdict, detail = _verdict(states.get(job_id))
        report.letters.append(
            DeadLetter(m["MessageId"], m["ReceiptHandle"], job_id, verdict, detail)
        )
    if not redrive:
        _release(sqs, dlq_url, report.letters)
        return report

    runnable = [d for d in report.letters if d.verdict == "runnable"]
    sent: set[str] = set()
    if runnable and queue is not None:
        sent = set(queue.send_jobs([d.job_id for d in runnable if d.job_id]).sent)
    done = [
        d
        for d in report.letters
        if (d.verdict == "runnable" and d.job_id in sent)
        or d.verdict in ("finished", "running", "unknown_job")
    ]
    _delete(sqs, dlq_url, done)
    report.resent = sum(1 for d in done if d.verdict == "runnable")
    report.dropped = len(done) - report.resent
    keep = [d for d in report.letters if d not in done]
    report.kept = len(keep)
    _release(sqs, dlq_url, keep)
    logger.info(
        "dead-letter queue checked",
        extra={
            "counts": report.counts(),
            "resent": report.resent,
            "dropped": report.dropped,
            "kept": report.kept,
        },
    )
    return report


def _chunks(letters: list[DeadLetter]) -> list[list[DeadLetter]]:
    return [letters[i : i + 10] for i in range(0, len(letters), 10)]


def _delete(sqs: Any, dlq_url: str, letters: list[DeadLetter]) -> None:
    for chunk in _chunks(letters):
        sqs.delete_message_batch(
            QueueUrl=dlq_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": d.receipt_handle} for i, d in enumerate(chunk)
            ],
        )


def _release(sqs: Any, dlq_url: str, letters: list[DeadLetter]) -> None:
    """Make the scanned messages visible again at once, as they were."""
    for chunk in _chunks(letters):
        sqs.change_message_visibility_batch(
            QueueUrl=dlq_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": d.receipt_handle, "VisibilityTimeout": 0}
                for i, d in enumerate(chunk)
            ],
        )
