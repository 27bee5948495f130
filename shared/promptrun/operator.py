"""Operators' writes: retry, cancel, and re-run prompts whose text changed.

The CLI and the status API call these functions; each answers what it changed. Every write is
a conditional UPDATE on the job rows, so it is safe beside running processors:

- retry: failed, cancelled or skipped jobs go back to `queued` with fresh attempts (the attempt
  counter keeps counting, `max_attempts` grows, so a late worker of an old attempt can never
  finish the new one) and are sent at once; a job that could not be sent is sent by the next
  fan-out (its `enqueued_at` stays empty).
- cancel: queued jobs end `cancelled`; running jobs are marked and finish the call they are
  in (what was paid for is kept), then are not retried.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Connection, Engine, bindparam, text

from promptrun import summaries
from promptrun.aws import SendResult
from promptrun.db.enums import JobStatus
from promptrun.errors import InputError, PromptrunError

RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SKIPPED)
SEND_CHUNK = 500

Sender = Callable[[list[str]], SendResult]


class NotFound(InputError):
    """The batch, job, prompt or model an operator named does not exist (bad input: the CLI
    exits 2, as for an unknown filter; the API answers 404)."""

    def __init__(self, what: str, field: str) -> None:
        super().__init__(what)
        self.field = field


class Conflict(PromptrunError):
    """The job is in a state the action does not apply to."""


class RetryResult(BaseModel):
    retried: int = Field(description="jobs put back to queued with fresh attempts")
    sent: int = Field(description="of those, messages sent now; the rest go with the next fan-out")
    job_ids: list[uuid.UUID] = Field(description="the retried jobs (at most 1000 listed)")


class CancelResult(BaseModel):
    cancelled: int = Field(description="queued jobs now cancelled")
    cancel_requested: int = Field(
        description="running jobs marked: they finish their current call, then are not retried"
    )
    already_finished: int = Field(description="jobs left as they were (already finished)")


# --- checks ---------------------------------------------------------------------------------


def require_batch(conn: Connection, batch_key: str) -> None:
    found = conn.execute(
        text("SELECT 1 FROM prompt_jobs WHERE batch_key = :k LIMIT 1"), {"k": batch_key}
    ).first()
    if found is None:
        raise NotFound(f"batch {batch_key} has no jobs", "batch_key")


def slug_id(conn: Connection, kind: str, slug: str | None) -> int | None:
    """The id of a prompt or model slug; NotFound naming it when there is none."""
    if slug is None:
        return None
    table = {"prompt": "prompts", "model": "models"}[kind]
    found = conn.execute(text(f"SELECT id FROM {table} WHERE slug = :s"), {"s": slug}).first()
    if found is None:
        raise NotFound(f"unknown {kind} {slug!r}", kind)
    return int(found[0])


def check_filters(engine: Engine, *, prompt: str | None = None, model: str | None = None) -> None:
    """A read filter that names a prompt or model that does not exist is an error, not []."""
    if prompt is None and model is None:
        return
    from promptrun.queries import InvalidQuery

    with engine.connect() as conn:
        try:
            slug_id(conn, "prompt", prompt)
            slug_id(conn, "model", model)
        except NotFound as exc:
            raise InvalidQuery(exc.field, str(exc)) from None


def parse_statuses(values: Sequence[str] | None) -> list[str]:
    """Statuses a retry may take back; the default is all of them."""
    if not values:
        return [s.value for s in RETRYABLE]
    allowed = {s.value for s in RETRYABLE}
    bad = sorted(set(values) - allowed)
    if bad:
        raise InputError(
            f"status: {', '.join(bad)} cannot be retried; choose from {', '.join(sorted(allowed))}"
        )
    return sorted(set(values))


# --- retry ----------------------------------------------------------------------------------


_RETRY = """
    UPDATE prompt_jobs SET status = 'queued', max_attempts = attempt_count + :fresh,
        error_kind = NULL, error_message = NULL, finished_at = NULL, next_attempt_at = NULL,
        lease_expires_at = NULL, cancel_requested_at = NULL, enqueued_at = NULL,
        updated_at = now()
    WHERE status IN :statuses AND {target}
      AND (CAST(:model_id AS bigint) IS NULL OR model_id = :model_id)
      AND (CAST(:prompt_id AS bigint) IS NULL OR prompt_id = :prompt_id)
    RETURNING id
"""


def send_and_mark(
    engine: Engine,
    send: Sender | None,
    ids: list[str],
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Send the jobs' messages and mark what SQS took; returns how many were sent.
    `on_progress` hears the count sent so far after each chunk (a large batch takes minutes)."""
    if send is None:
        return 0
    sent = 0
    for start in range(0, len(ids), SEND_CHUNK):
        outcome = send(ids[start : start + SEND_CHUNK])
        if outcome.sent:
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE prompt_jobs SET enqueued_at = now() WHERE id IN :ids").bindparams(
                        bindparam("ids", expanding=True)
                    ),
                    {"ids": [uuid.UUID(i) for i in outcome.sent]},
                )
        sent += len(outcome.sent)
        if on_progress is not None:
            on_progress(sent)
    return sent


def retry_batch(
    engine: Engine,
    send: Sender | None,
    batch_key: str,
    *,
    statuses: Sequence[str] | None = None,
    model: str | None = None,
    prompt: str | None = None,
    fresh_attempts: int = 5,
    on_progress: Callable[[int], None] | None = None,
) -> RetryResult:
    """Put a batch's failed/cancelled/skipped jobs (filtered) back to queued and send them."""
    wanted = parse_statuses(statuses)
    with engine.begin() as conn:
        require_batch(conn, batch_key)
        params = {
            "key": batch_key,
            "statuses": wanted,
            "fresh": fresh_attempts,
            "model_id": slug_id(conn, "model", model),
            "prompt_id": slug_id(conn, "prompt", prompt),
        }
        ids = [
            str(r[0])
            for r in conn.execute(
                text(_RETRY.format(target="batch_key = :key")).bindparams(
                    bindparam("statuses", expanding=True)
                ),
                params,
            )
        ]
    sent = send_and_mark(engine, send, ids, on_progress)
    return RetryResult(retried=len(ids), sent=sent, job_ids=[uuid.UUID(i) for i in ids[:1000]])


def retry_job(
    engine: Engine, send: Sender | None, job_id: uuid.UUID, fresh_attempts: int = 5
) -> RetryResult:
    with engine.begin() as conn:
        status = _job_status(conn, job_id)
        if status not in {s.value for s in RETRYABLE}:
            raise Conflict(
                f"job {job_id} is {status}; only failed, cancelled or skipped jobs are retried"
            )
        ids = [
            str(r[0])
            for r in conn.execute(
                text(_RETRY.format(target="id = :id")).bindparams(
                    bindparam("statuses", expanding=True)
                ),
                {
                    "id": job_id,
                    "statuses": [s.value for s in RETRYABLE],
                    "fresh": fresh_attempts,
                    "model_id": None,
                    "prompt_id": None,
                },
            )
        ]
    sent = send_and_mark(engine, send, ids)
    return RetryResult(retried=len(ids), sent=sent, job_ids=[uuid.UUID(i) for i in ids])


def _job_status(conn: Connection, job_id: uuid.UUID) -> str:
    row = conn.execute(
        text("SELECT status FROM prompt_jobs WHERE id = :id"), {"id": job_id}
    ).first()
    if row is None:
        raise NotFound(f"job {job_id} not found", "job_id")
    return str(row[0])


# --- cancel ---------------------------------------------------------------------------------


_CANCEL_QUEUED = """
    UPDATE prompt_jobs SET status = 'cancelled', finished_at = now(), updated_at = now(),
        next_attempt_at = NULL
    WHERE status = 'queued' AND {target}
      AND (CAST(:model_id AS bigint) IS NULL OR model_id = :model_id)
      AND (CAST(:prompt_id AS bigint) IS NULL OR prompt_id = :prompt_id)
"""
# A running job keeps its call: the answer it pays for is stored; it is just not retried.
_REQUEST_CANCEL = """
    UPDATE prompt_jobs SET cancel_requested_at = now(), updated_at = now()
    WHERE status = 'processing' AND cancel_requested_at IS NULL AND {target}
      AND (CAST(:model_id AS bigint) IS NULL OR model_id = :model_id)
      AND (CAST(:prompt_id AS bigint) IS NULL OR prompt_id = :prompt_id)
"""
_FINISHED = """
    SELECT count(*) FROM prompt_jobs
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'skipped') AND {target}
      AND (CAST(:model_id AS bigint) IS NULL OR model_id = :model_id)
      AND (CAST(:prompt_id AS bigint) IS NULL OR prompt_id = :prompt_id)
"""


def _cancel(conn: Connection, target: str, params: dict[str, Any]) -> CancelResult:
    finished = conn.execute(text(_FINISHED.format(target=target)), params).scalar_one()
    cancelled = conn.execute(text(_CANCEL_QUEUED.format(target=target)), params).rowcount
    requested = conn.execute(text(_REQUEST_CANCEL.format(target=target)), params).rowcount
    return CancelResult(
        cancelled=int(cancelled), cancel_requested=int(requested), already_finished=int(finished)
    )


def cancel_batch(
    engine: Engine, batch_key: str, *, model: str | None = None, prompt: str | None = None
) -> CancelResult:
    with engine.begin() as conn:
        require_batch(conn, batch_key)
        params = {
            "key": batch_key,
            "model_id": slug_id(conn, "model", model),
            "prompt_id": slug_id(conn, "prompt", prompt),
        }
        return _cancel(conn, "batch_key = :key", params)


def cancel_job(engine: Engine, job_id: uuid.UUID) -> CancelResult:
    with engine.begin() as conn:
        status = _job_status(conn, job_id)
        if status not in (JobStatus.QUEUED, JobStatus.PROCESSING):
            raise Conflict(f"job {job_id} is already {status}")
        return _cancel(conn, "id = :id", {"id": job_id, "model_id": None, "prompt_id": None})


def finish_cancelled(conn: Connection) -> int:
    """Running jobs whose cancel was requested and whose worker died (lease expired): cancelled.
    Their claim refuses to rescue them, so nothing else ends them."""
    return int(
        conn.execute(
            text(
                "UPDATE prompt_jobs SET status = 'cancelled', finished_at = now(), updated_at = now(), "
                "lease_expires_at = NULL WHERE status = 'processing' "
                "AND cancel_requested_at IS NOT NULL AND lease_expires_at < now()"
            )
        ).rowcount
    )


# --- prompt versions and re-runs --------------------------------------------------------------


class PromptState(BaseModel):
    slug: str
    enabled: bool
    version: str = Field(description="the current version (hash of text and system text)")
    latest_batch_key: str | None = Field(description="the prompt's newest batch")
    latest_batch_versions: list[str] = Field(description="versions its jobs in that batch ran")
    needs_rerun: bool = Field(description="that batch ran another version than the current one")


# Each prompt's newest batch: batch_stats newest first, each probed in the per-prompt job
# counts (a primary key lookup), so the read does not grow with history. The versions its
# jobs ran come from one pass over the newest batches' own rows (their key's index), not from
# every job of every prompt (0.9-1.5 s at 1M jobs before).
_PROMPT_STATES = text(
    f"""
    WITH latest AS MATERIALIZED (
        SELECT p.id AS prompt_id, p.slug, p.enabled, p.version, b.batch_key
        FROM prompts p
        LEFT JOIN LATERAL (
            SELECT s.batch_key FROM batch_stats s
            WHERE (CAST(:key AS text) IS NULL OR s.batch_key = :key)
              AND (SELECT sum(c.jobs) FROM {summaries.PROMPT_COUNTS} c
                   WHERE c.prompt_id = p.id AND c.batch_key = s.batch_key) > 0
            ORDER BY s.created_at DESC, s.batch_key DESC LIMIT 1
        ) b ON true
    ), versions AS (
        SELECT j.prompt_id,
               array_agg(DISTINCT j.prompt_version ORDER BY j.prompt_version) AS versions
        FROM prompt_jobs j JOIN latest l ON l.prompt_id = j.prompt_id AND l.batch_key = j.batch_key
        WHERE j.batch_key = ANY(ARRAY(SELECT DISTINCT batch_key FROM latest
                                      WHERE batch_key IS NOT NULL))
        GROUP BY j.prompt_id
    )
    SELECT l.slug, l.enabled, l.version, l.batch_key,
           COALESCE(v.versions, ARRAY[]::varchar[]) AS versions
    FROM latest l LEFT JOIN versions v ON v.prompt_id = l.prompt_id
    ORDER BY l.slug
    """
)


def prompt_states(engine: Engine, batch_key: str | None = None) -> list[PromptState]:
    """Each prompt's current version against what its newest batch (or `batch_key`) ran."""
    with engine.connect() as conn:
        rows = conn.execute(_PROMPT_STATES, {"key": batch_key}).all()
    return [
        PromptState(
            slug=r.slug,
            enabled=r.enabled,
            version=r.version,
            latest_batch_key=r.batch_key,
            latest_batch_versions=list(r.versions),
            needs_rerun=bool(r.batch_key) and any(v != r.version for v in r.versions),
        )
        for r in rows
    ]


def rerun_key(batch_key: str, version: str) -> str:
    """The re-run's own batch: the old key plus the new version, so repeating it is a no-op."""
    return f"{batch_key[: 64 - 10]}.v{version[:8]}"


class RerunResult(BaseModel):
    prompts: list[str]
    batches: dict[str, dict[str, int]]
    created: int
    sent: int


def rerun_changed(
    engine: Engine, queue: Any, settings: Any, batch_key: str | None = None
) -> RerunResult:
    """New jobs for every enabled prompt whose newest batch (or `batch_key`) ran an older
    version; each into `<that batch>.v<new version>`."""
    from promptrun.fanout import FanoutRequest, run_fanout

    if batch_key is not None:
        with engine.connect() as conn:
            require_batch(conn, batch_key)
    changed = [s for s in prompt_states(engine, batch_key) if s.needs_rerun and s.enabled]
    result = RerunResult(prompts=[s.slug for s in changed], batches={}, created=0, sent=0)
    for state in changed:
        assert state.latest_batch_key is not None
        request = FanoutRequest(
            at=datetime.now(UTC),
            batch_key=rerun_key(state.latest_batch_key, state.version),
            prompts=[state.slug],
        )
        done = run_fanout(engine, queue, request, settings)
        result.created += done.created
        result.sent += done.sent
        result.batches.update(done.batches)
    return result
