"""The processor's work for one SQS record: claim the job, call the model, store the result.

The database row is the guard; the SQS body is trusted for nothing but `job_id`.
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import Engine, insert

from promptrun import jobs
from promptrun.aws import JobQueue
from promptrun.db.models import EntityMention, JobStatus, Response
from promptrun.errors import InputError
from promptrun.extraction import ExtractionResult, normalize_entities
from promptrun.jobs import ClaimedJob, ModelRef
from promptrun.observability import logger, metrics
from promptrun.providers import ErrorKind, ModelCall, Provider, ProviderError, get_provider
from promptrun.providers.errors import redact
from promptrun.settings import Settings

# Seconds kept back from the Lambda's remaining time, to write the outcome after a timeout.
SAFETY_MARGIN = 10.0
DEFAULT_CALL_TIMEOUT = 120.0
# How long a job that found its model at max_concurrency waits before it tries again.
SLOT_WAIT_SECONDS = 4.0
MIN_CALL_SECONDS = 2.0
MILLION = Decimal(1_000_000)


class JobMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    job_id: uuid.UUID


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # duplicate, finished, cancelled, or held by a live worker
    STALE = "stale"  # a newer attempt owns the row; this one's result was discarded


class RetryLater(Exception):
    """The record must come back after `delay` seconds: reported in batchItemFailures."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(f"retry in {delay:.1f}s: {reason}")
        self.delay = delay
        self.reason = reason


class _StaleAttempt(Exception):
    pass


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
        field = ".".join(str(x) for x in err["loc"]) or "body"
        raise InputError(f"SQS body: {field}: {err['msg']}") from None


def call_cost(model: ModelRef, input_tokens: int, output_tokens: int) -> Decimal:
    """USD from the catalogue's prices per million tokens."""
    return (
        Decimal(input_tokens) * model.price_input_per_mtok
        + Decimal(output_tokens) * model.price_output_per_mtok
    ) / MILLION


def _add_billed(spent: jobs.Usage, model: ModelRef, err: ProviderError) -> None:
    """Calls that failed after the provider answered (and billed) them still count."""
    spent.add(
        err.input_tokens, err.output_tokens, call_cost(model, err.input_tokens, err.output_tokens)
    )


@dataclass
class JobRunner:
    engine: Engine
    settings: Settings
    queue: JobQueue | None = None
    providers: Callable[[str, Settings], Provider] = get_provider

    def handle(
        self, body: str, receipt_handle: str | None, remaining_ms: Callable[[], int] | None = None
    ) -> Outcome:
        """Process one record. Raises InputError (bad body) or RetryLater (come back later):
        both make the record a batch item failure; anything else was handled here."""
        message = parse_message(body)
        try:
            outcome = self._run(message.job_id, remaining_ms)
            metrics.add_metric(name=f"Jobs{outcome.value.title()}", unit=MetricUnit.Count, value=1)
            return outcome
        except RetryLater as retry:
            metrics.add_metric(name="JobsRetried", unit=MetricUnit.Count, value=1)
            if self.queue is not None and receipt_handle:
                try:
                    self.queue.delay_message(receipt_handle, math.ceil(retry.delay))
                except Exception as exc:  # the message still comes back after the queue's timeout
                    logger.warning(
                        "could not delay the message", extra={"error": type(exc).__name__}
                    )
            raise

    def _run(self, job_id: uuid.UUID, remaining_ms: Callable[[], int] | None) -> Outcome:
        try:
            with self.engine.begin() as conn:
                job = jobs.claim_job(conn, job_id, self.settings.lease_seconds)
                if job is None:
                    state = jobs.job_state(conn, job_id)
        except jobs.NoSlot as busy:
            # Not an attempt: the job never reached the model. Come back soon, spread out.
            raise RetryLater(
                random.uniform(SLOT_WAIT_SECONDS / 2, SLOT_WAIT_SECONDS), str(busy)
            ) from None
        if job is None:
            if state is None:
                logger.warning("no such job; message dropped", extra={"job_id": str(job_id)})
            elif state.status == "queued" and state.seconds_until_due > 0:
                # An early copy of a retried job: keep it until the job is due.
                raise RetryLater(state.seconds_until_due, "not due yet")
            else:
                logger.info(
                    "job not claimable; acknowledged",
                    extra={"job_id": str(job_id), "status": state.status},
                )
            return Outcome.SKIPPED

        log = {
            "job_id": str(job.id),
            "attempt": job.attempt,
            "model": job.model_slug,
            "prompt": job.prompt_slug,
        }
        if job.attempt > job.max_attempts:
            # Rescued after its last attempt's worker died: no attempts left.
            return self._end_unrun(
                job,
                ErrorKind.ATTEMPTS_EXHAUSTED,
                f"no attempts left ({job.max_attempts}) after an expired lease",
                JobStatus.FAILED,
            )
        if not job.model_enabled:
            # Disabled in the catalogue after the fan-out: not run, and said so.
            return self._end_unrun(
                job,
                ErrorKind.CONFIG,
                f"model {job.model_slug} is disabled in the catalogue",
                JobStatus.SKIPPED,
            )
        spent = jobs.Usage()
        try:
            return self._call_and_store(job, remaining_ms, log, spent)
        except _StaleAttempt:
            logger.warning("a newer attempt owns the job; result discarded", extra=log)
            return Outcome.STALE
        except ProviderError as err:
            return self._on_error(job, err, log, spent)
        except RetryLater:
            raise
        except Exception as exc:  # a bug or an unexpected library error: retried, then failed
            logger.exception("unexpected error", extra=log)
            return self._on_error(
                job,
                ProviderError(ErrorKind.INTERNAL, redact(f"{type(exc).__name__}: {exc}")),
                log,
                spent,
                retryable=True,
            )

    def _end_unrun(
        self, job: ClaimedJob, kind: ErrorKind, message: str, status: JobStatus
    ) -> Outcome:
        """Finish a claimed job without calling the model."""
        with self.engine.begin() as conn:
            jobs.fail_job(conn, job, error_kind=kind, error_message=message, status=status)
        return Outcome.SKIPPED if status == JobStatus.SKIPPED else Outcome.FAILED

    def _timeout(self, remaining_ms: Callable[[], int] | None, params: dict[str, Any]) -> float:
        wanted = float(params.get("timeout", DEFAULT_CALL_TIMEOUT))
        if remaining_ms is None:
            return wanted
        left = remaining_ms() / 1000 - SAFETY_MARGIN
        if left < MIN_CALL_SECONDS:
            # Too little time for a call: hand the job back rather than be killed mid-call.
            raise ProviderError(
                ErrorKind.TIMEOUT, f"only {left:.1f}s of Lambda time left for the call"
            )
        return min(wanted, left)

    def _call(
        self, model: ModelRef, job: ClaimedJob, remaining_ms: Callable[[], int] | None, seed: str
    ) -> ModelCall:
        return ModelCall(
            provider_model=model.provider_model,
            base_url=model.base_url,
            params=dict(model.params),
            timeout_seconds=self._timeout(remaining_ms, model.params),
            attempt=job.attempt,
            seed=seed,
        )

    def _call_and_store(
        self,
        job: ClaimedJob,
        remaining_ms: Callable[[], int] | None,
        log: dict[str, Any],
        spent: jobs.Usage,
    ) -> Outcome:
        seed = f"{job.batch_key}:{job.run_index}"
        started = time.monotonic()
        try:
            completion = self.providers(job.model.provider, self.settings).answer(
                self._call(job.model, job, remaining_ms, seed), job.prompt_text, job.system_text
            )
        except ProviderError as err:
            _add_billed(spent, job.model, err)
            raise
        latency_ms = int((time.monotonic() - started) * 1000)
        spent.add(
            completion.input_tokens,
            completion.output_tokens,
            call_cost(job.model, completion.input_tokens, completion.output_tokens),
        )
        extractor = job.extraction_model
        try:
            extraction = self.providers(extractor.provider, self.settings).extract(
                self._call(extractor, job, remaining_ms, seed), completion.text
            )
        except ProviderError as err:
            _add_billed(spent, extractor, err)
            raise
        spent.add(
            extraction.input_tokens,
            extraction.output_tokens,
            call_cost(extractor, extraction.input_tokens, extraction.output_tokens),
        )
        try:
            result = ExtractionResult(entities=extraction.entities)
        except ValidationError as exc:
            raise ProviderError(
                ErrorKind.VALIDATION, f"extraction result invalid: {exc.errors()[0]['msg']}"
            ) from None
        entities = normalize_entities(result.entities)
        input_tokens = completion.input_tokens + extraction.input_tokens
        output_tokens = completion.output_tokens + extraction.output_tokens

        with self.engine.begin() as conn:
            conn.execute(
                insert(Response).values(
                    job_id=job.id,
                    answer_text=completion.text,
                    structured={"entities": [e.model_dump() for e in entities]},
                    provider_response_id=completion.response_id,
                    finish_reason=completion.finish_reason,
                    latency_ms=latency_ms,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                )
            )
            if entities:
                conn.execute(
                    insert(EntityMention),
                    [
                        {
                            "job_id": job.id,
                            "prompt_id": job.prompt_id,
                            "model_id": job.model_id,
                            "batch_key": job.batch_key,
                            "name": e.name,
                            "display_name": e.display_name,
                            "entity_type": e.type,
                            "rank": e.rank,
                            "sentiment": e.sentiment,
                            "snippet": e.snippet,
                        }
                        for e in entities
                    ],
                )
            if not jobs.complete_job(conn, job, spent):
                # Raising rolls back the response and mentions written above.
                raise _StaleAttempt()
        logger.info(
            "job succeeded", extra={**log, "entities": len(entities), "latency_ms": latency_ms}
        )
        return Outcome.SUCCEEDED

    def _on_error(
        self,
        job: ClaimedJob,
        err: ProviderError,
        log: dict[str, Any],
        spent: jobs.Usage,
        retryable: bool | None = None,
    ) -> Outcome:
        can_retry = err.retryable if retryable is None else retryable
        extra = {**log, "error_kind": str(err.kind), "error": err.message}
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
            if not owned:
                return Outcome.STALE
            logger.warning("job will be retried", extra={**extra, "delay_s": round(delay, 1)})
            raise RetryLater(delay, str(err.kind))
        message = (
            err.message if not can_retry else f"gave up after {job.attempt} attempts: {err.message}"
        )
        with self.engine.begin() as conn:
            owned = jobs.fail_job(
                conn, job, error_kind=err.kind, error_message=message, usage=spent
            )
        logger.warning("job failed", extra=extra)
        return Outcome.FAILED if owned else Outcome.STALE
