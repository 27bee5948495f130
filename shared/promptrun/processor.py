"""The processor's work for one SQS record: claim the job, pass flow control, run the attempt,
record its outcome.

The database row is the guard; the SQS body is trusted for nothing but `job_id`. The model
calls and the stored result are model_call.py's; waiting is waiting.py's; limits.py decides.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promptrun import jobs, limits
from promptrun.aws import JobMessageOut, JobQueue
from promptrun.db.enums import JobStatus
from promptrun.db.sql import Conn, Database
from promptrun.errors import InputError
from promptrun.jobs import ClaimedJob
from promptrun.model_call import ModelCaller, ProviderFactory, StaleAttempt, call_cost
from promptrun.observability import logger, metrics
from promptrun.providers import ErrorKind, ProviderError, get_provider
from promptrun.providers.errors import redact
from promptrun.settings import Settings
from promptrun.waiting import (
    NO_HINT,
    REFRESH_RECEIVE_COUNT,
    Hint,
    RetryLater,
    demand_for,
    held,
    message_delay,
    wait_inline,
)

__all__ = ["JobMessage", "JobRunner", "Outcome", "RetryLater", "call_cost", "parse_message"]


class JobMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    job_id: uuid.UUID
    # A hint, not trusted for correctness: the job's turn behind a rate (limits.admit).
    turn: float | None = None
    # How often the job was refused a concurrency slot so far (waiting.slot_delay backs off).
    slot_waits: int = Field(default=0, ge=0, strict=True)

    @property
    def hint(self) -> Hint:
        return Hint(self.turn, self.slot_waits)


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # duplicate, finished, cancelled, or held by a live worker
    STALE = "stale"  # a newer attempt owns the row; this one's result was discarded
    WAITING = "waiting"  # not started (limits, pause, budget, not due): a new message sent
    RETRYING = "retrying"  # an attempt failed and the job is due again later: a new message sent


def parse_message(body: str) -> JobMessage:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, TypeError):
        raise InputError('SQS body is not JSON; expected {"job_id": "<uuid>"}') from None
    if not isinstance(data, dict):
        raise InputError("SQS body must be a JSON object with job_id")
    try:
        return JobMessage.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field_name = ".".join(str(x) for x in err["loc"]) or "body"
        raise InputError(f"SQS body: {field_name}: {err['msg']}") from None


class JobRow(Protocol):
    """What deciding about an unclaimable job reads (jobs.JobState, batch_jobs.Locked)."""

    @property
    def status(self) -> str: ...
    @property
    def seconds_until_due(self) -> float: ...
    @property
    def seconds_until_lease_ends(self) -> float: ...


def unclaimable(conn: Conn, job_id: uuid.UUID, row: JobRow) -> tuple[Outcome, RetryLater | None]:
    """A job that could not be claimed: acknowledged with an outcome, or to come back (the
    RetryLater says when). The same decision on the per-job and the batch path."""
    if row.status == "queued" and row.seconds_until_due > 0:
        # An early copy of a retried or waiting job: kept until the job is due.
        return Outcome.WAITING, RetryLater(row.seconds_until_due, "not due yet")
    if row.status == "processing" and row.seconds_until_lease_ends > 0:
        # A live worker holds it: come back when its lease ends, in case it died.
        return Outcome.SKIPPED, RetryLater(
            row.seconds_until_lease_ends + 1, "held by a live worker", optional=True
        )
    if row.status == "processing" and jobs.fail_exhausted(conn, job_id):
        logger.warning("last attempt's worker died", extra={"job_id": str(job_id)})
        return Outcome.FAILED, None
    logger.info(
        "job not claimable; acknowledged", extra={"job_id": str(job_id), "status": row.status}
    )
    return Outcome.SKIPPED, None


def send_back(
    queue: JobQueue | None, job_id: uuid.UUID, later: RetryLater, resend: bool
) -> Outcome | None:
    """A job that must come back: a fresh, delayed message, and the outcome of the record
    (acknowledged). None: the record itself must fail and come back (no queue or receipt
    handle to send with, or SQS refused), unless coming back was optional."""
    return send_back_all(queue, [(job_id, later, resend)])[0]


def send_back_all(
    queue: JobQueue | None, jobs_back: Sequence[tuple[uuid.UUID, RetryLater, bool]]
) -> list[Outcome | None]:
    """send_back for each (job, when, resend) in turn, the messages sent ten to a
    SendMessageBatch call (a batch of 100 jobs beyond their limits: 10 calls, not 100)."""
    for _, later, _ in jobs_back:
        metrics.add_metric(
            name="JobsRetried" if later.retry else "JobsWaited", unit=MetricUnit.Count, value=1
        )
    refused: set[str] = set()  # their records come back after their visibility timeout
    if queue is not None:
        messages = [
            JobMessageOut(str(job_id), message_delay(later.delay), later.turn, later.slot_waits)
            for job_id, later, resend in jobs_back
            if resend
        ]
        refused = _send(queue, messages, "messages bringing jobs back")
    outcomes: list[Outcome | None] = []
    for job_id, later, resend in jobs_back:
        if not resend or queue is None:
            outcomes.append(Outcome.SKIPPED if later.optional else None)
        elif str(job_id) in refused:
            outcomes.append(None)
        else:
            outcomes.append(Outcome.RETRYING if later.retry else Outcome.WAITING)
    return outcomes


def refresh(queue: JobQueue, stale: Sequence[tuple[uuid.UUID, Hint]], lease_seconds: int) -> None:
    """Records received this often outlived processors that died holding them: a fresh copy
    each, with the record's hints, delayed past the lease this attempt may take, keeps the
    job's way back short of the DLQ (ten to a SendMessageBatch call). No worse than before
    when it fails: the records still count."""
    delay = message_delay(lease_seconds + 1)
    copies = [JobMessageOut(str(j), delay, h.turn, h.slot_waits) for j, h in stale]
    _send(queue, copies, "refreshed messages")


def _send(queue: JobQueue, messages: list[JobMessageOut], what: str) -> set[str]:
    """`messages` sent, counted and any refusal logged (`what` they are); the job ids SQS did
    not take (all of them when the send failed)."""
    if not messages:
        return set()
    try:
        refused = set(queue.send(messages).failed)
    except Exception as exc:
        logger.warning(f"could not send {what}", extra={"error": type(exc).__name__})
        return {m.job_id for m in messages}
    if refused:
        logger.warning(f"SQS did not take {what}", extra={"jobs": len(refused)})
    if len(messages) > len(refused):
        metrics.add_metric(
            name="JobMessagesSent", unit=MetricUnit.Count, value=len(messages) - len(refused)
        )
    return refused


@dataclass
class JobRunner:
    engine: Database
    settings: Settings
    queue: JobQueue | None = None
    providers: ProviderFactory = get_provider
    caller: ModelCaller = field(init=False)

    def __post_init__(self) -> None:
        self.caller = ModelCaller(self.engine, self.settings, self.providers)

    def handle(
        self,
        body: str,
        receipt_handle: str | None,
        remaining_ms: Callable[[], int] | None = None,
        receive_count: int = 1,
    ) -> Outcome:
        """Process one record. Raises InputError (bad body), or RetryLater when the job must
        come back and this record is its only way back (no queue or no receipt handle): both
        make the record a batch item failure. Otherwise a job that must come back gets a new,
        delayed message and the record is acknowledged (no receive counted)."""
        message = parse_message(body)
        resend = self.queue is not None and receipt_handle is not None
        if resend and receive_count >= REFRESH_RECEIVE_COUNT:
            assert self.queue is not None
            refresh(self.queue, [(message.job_id, message.hint)], self.settings.lease_seconds)
        hint = message.hint
        try:
            while True:
                try:
                    outcome = self._run(message.job_id, remaining_ms, hint)
                    break
                except RetryLater as later:
                    if not wait_inline(later, remaining_ms):
                        raise
                    hint = later.hint
                    time.sleep(later.delay)
        except RetryLater as later:
            came_back = send_back(self.queue, message.job_id, later, resend)
            if came_back is None:
                raise later from None
            outcome = came_back
        except Exception:  # the record fails and comes back: say why
            logger.exception("record failed", extra={"job_id": str(message.job_id)})
            raise
        metrics.add_metric(name=f"Jobs{outcome.value.title()}", unit=MetricUnit.Count, value=1)
        return outcome

    def _claim(
        self, job_id: uuid.UUID, hint: Hint = NO_HINT
    ) -> tuple[ClaimedJob | None, limits.Lease | None, Outcome]:
        """Claim and admit in one transaction: a job its limits hold back is left as it was
        (no attempt used), with the reason written on it; RetryLater says when to come back."""
        wait: RetryLater | None = None
        lease: limits.Lease | None = None
        unclaimed = Outcome.SKIPPED
        with self.engine.begin() as conn:
            attempt = conn.begin_nested()
            job = jobs.claim_job(conn, job_id, self.settings.lease_seconds)
            if job is None:
                state = jobs.job_state(conn, job_id)
                if state is None:
                    logger.warning("no such job; message dropped", extra={"job_id": str(job_id)})
                else:
                    unclaimed, wait = unclaimable(conn, job_id, state)
            elif job.model_enabled:
                demand = demand_for(job)
                admission = limits.admit(
                    conn, job.model_slug, job.batch_key, 1, demand, claimed=True, turn=hint.turn
                )
                if admission.granted:
                    lease = limits.Lease.of(admission, demand)
                else:
                    attempt.rollback()
                    job, wait = None, held(admission, hint)
                    limits.note_wait(conn, [job_id], wait.reason)
        if wait is not None:
            raise wait
        return job, lease, unclaimed

    def _run(
        self,
        job_id: uuid.UUID,
        remaining_ms: Callable[[], int] | None,
        hint: Hint = NO_HINT,
    ) -> Outcome:
        job, lease, unclaimed = self._claim(job_id, hint)
        if job is None:
            return unclaimed
        log = job.log_fields
        if not job.model_enabled:
            # Disabled in the catalogue after the fan-out: not run, and said so.
            return self.end_unrun(
                job,
                ErrorKind.CONFIG,
                f"model {job.model_slug} is disabled in the catalogue",
                JobStatus.SKIPPED,
            )
        spent = jobs.Usage()
        try:
            entities, latency_ms = self.caller.call_and_store(job, remaining_ms, spent, lease)
        except StaleAttempt:
            logger.warning("a newer attempt owns the job; result discarded", extra=log)
            return Outcome.STALE
        except ProviderError as err:
            return self.on_error(job, err, log, spent, lease)
        except Exception as exc:  # a bug or an unexpected library error: retried, then failed
            logger.exception("unexpected error", extra=log)
            return self.on_unexpected(job, exc, log, spent, lease)
        logger.info("job succeeded", extra={**log, "entities": entities, "latency_ms": latency_ms})
        return Outcome.SUCCEEDED

    def end_unrun(
        self, job: ClaimedJob, kind: ErrorKind, message: str, status: JobStatus
    ) -> Outcome:
        """Finish a claimed job without calling the model."""
        with self.engine.begin() as conn:
            jobs.fail_job(conn, job, error_kind=kind, error_message=message, status=status)
        return Outcome.SKIPPED if status == JobStatus.SKIPPED else Outcome.FAILED

    def on_unexpected(
        self,
        job: ClaimedJob,
        exc: Exception,
        log: dict[str, Any],
        spent: jobs.Usage,
        lease: limits.Lease | None,
    ) -> Outcome:
        """A bug or an unexpected library error (already logged): retried, then failed."""
        err = ProviderError(ErrorKind.INTERNAL, redact(f"{type(exc).__name__}: {exc}"))
        return self.on_error(job, err, log, spent, lease, retryable=True)

    def on_error(
        self,
        job: ClaimedJob,
        err: ProviderError,
        log: dict[str, Any],
        spent: jobs.Usage,
        lease: limits.Lease | None,
        retryable: bool | None = None,
    ) -> Outcome:
        can_retry = err.retryable if retryable is None else retryable
        extra = {**log, "error_kind": str(err.kind), "error": err.message}
        throttled = (
            (err.retry_after or 0.0)
            if err.kind in (ErrorKind.RATE_LIMIT, ErrorKind.OVERLOADED)
            else None
        )

        def release(conn: Any) -> None:
            limits.release(
                conn,
                lease,
                tokens_used=spent.input_tokens + spent.output_tokens,
                cost_usd=spent.cost_usd,
                succeeded=False,
                throttled_for=throttled,
            )

        if can_retry and job.attempt < job.max_attempts:
            delay = jobs.retry_delay(
                job.attempt,
                self.settings.backoff_base_seconds,
                self.settings.backoff_cap_seconds,
                err.retry_after,
            )
            with self.engine.begin() as conn:
                owned = jobs.retry_job(
                    conn,
                    job,
                    delay_seconds=delay,
                    error_kind=err.kind,
                    error_message=err.message,
                    usage=spent,
                )
                if owned:
                    release(conn)
            if not owned:
                return Outcome.STALE
            logger.warning("job will be retried", extra={**extra, "delay_s": round(delay, 1)})
            raise RetryLater(delay, str(err.kind), retry=True)
        message = (
            err.message if not can_retry else f"gave up after {job.attempt} attempts: {err.message}"
        )
        with self.engine.begin() as conn:
            owned = jobs.fail_job(
                conn, job, error_kind=err.kind, error_message=message, usage=spent
            )
            if owned:
                release(conn)
        logger.warning("job failed", extra=extra)
        return Outcome.FAILED if owned else Outcome.STALE
