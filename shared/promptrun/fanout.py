"""Fan-out: due prompts x enabled models x runs -> job rows (idempotent per batch) -> SQS.

Rows are inserted first and sent second; a row is marked `enqueued_at` only once SQS took
its message. Every run also sends what an earlier run inserted but never sent, so a crash
between insert and send loses nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Engine, select, text, update
from sqlalchemy.dialects.postgresql import insert

from promptrun.aws import ContinuationQueue, JobQueue, is_continuation
from promptrun.db import schema
from promptrun.errors import InputError
from promptrun.observability import logger, metrics
from promptrun.schedule import batch_key, period_start, validate_batch_key
from promptrun.settings import Settings

# Rows locked, sent and marked per transaction; the invocation stops sending RESERVE_MS
# (plus twice its slowest chunk) before its timeout and hands the rest on.
SEND_CHUNK = 2000
RESERVE_MS = 15_000


class ScheduledEvent(BaseModel):
    """An EventBridge (or Scheduler) event; only its time matters."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    time: AwareDatetime
    detail_type: str | None = Field(default=None, alias="detail-type")


class ManualEvent(BaseModel):
    """{"batch_key": "...", "prompts": [...], "models": [...]} (lists optional)."""

    model_config = ConfigDict(extra="forbid")
    batch_key: str
    prompts: list[str] | None = None
    models: list[str] | None = None
    # Run the named prompts even when disabled in the catalogue (an operator's explicit choice).
    include_disabled: bool = False

    @field_validator("batch_key")
    @classmethod
    def _key(cls, v: str) -> str:
        return validate_batch_key(v)


@dataclass(frozen=True)
class FanoutRequest:
    at: datetime
    batch_key: str | None = None
    prompts: list[str] | None = None
    models: list[str] | None = None
    include_disabled: bool = False
    continuation: bool = False  # only send what is pending: an earlier run ran out of time


def parse_event(event: Any, now: datetime | None = None) -> FanoutRequest:
    """A scheduled event (its `time` sets the period) or a manual event."""
    if not isinstance(event, dict):
        raise InputError("fan-out event must be a JSON object")
    if is_continuation(event):
        return FanoutRequest(at=now or datetime.now(UTC), continuation=True)
    try:
        if "batch_key" in event:
            manual = ManualEvent.model_validate(event)
            return FanoutRequest(
                at=now or datetime.now(UTC),
                batch_key=manual.batch_key,
                prompts=manual.prompts,
                models=manual.models,
                include_disabled=manual.include_disabled,
            )
        if "time" in event:
            return FanoutRequest(at=ScheduledEvent.model_validate(event).time)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "event"
        raise InputError(f"fan-out event: {where}: {first['msg']}") from None
    raise InputError(
        "fan-out event needs either 'time' (scheduled event) or 'batch_key' (manual run)"
    )


@dataclass
class FanoutResult:
    created: int = 0
    existing: int = 0
    sent: int = 0
    send_failed: int = 0
    rescued: int = 0
    continued: bool = False
    batches: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "existing": self.existing,
            "sent": self.sent,
            "send_failed": self.send_failed,
            "rescued": self.rescued,
            "continued": self.continued,
            "batches": self.batches,
        }


def _select(
    conn: Any, table: Any, slugs: list[str] | None, kind: str, include_disabled: bool = False
) -> list[Any]:
    query = select(table).order_by(table.c.id)
    if slugs is None:
        return list(conn.execute(query.where(table.c.enabled.is_(True))))
    rows = list(conn.execute(query.where(table.c.slug.in_(slugs))))
    unknown = sorted(set(slugs) - {r.slug for r in rows})
    if unknown:
        raise InputError(f"fan-out event: {kind}: unknown slug(s) {', '.join(unknown)}")
    disabled = sorted(r.slug for r in rows if not r.enabled)
    if disabled and not include_disabled:
        raise InputError(f"fan-out event: {kind}: disabled: {', '.join(disabled)}")
    return rows


def store_versions(conn: Any, prompts: list[Any]) -> None:
    """The versions these jobs will record exist as rows (the catalogue sync stores them too)."""
    if prompts:
        conn.execute(
            insert(schema.prompt_versions)
            .values(
                [
                    {
                        "prompt_id": p.id,
                        "version": p.version,
                        "text": p.text,
                        "system_text": p.system_text,
                    }
                    for p in prompts
                ]
            )
            .on_conflict_do_nothing(constraint="uq_prompt_versions_version")
        )


# One statement per batch: the database builds prompt x model x run itself, so the rows
# never travel. The rows the batch holds already are left out first, in one pass over the
# batch's rows (an anti-join: a re-run of 100,000 jobs in 0.4 s, where finding each one taken
# by the unique key took 1.0-1.3 s); ON CONFLICT still guards against a fan-out running at
# the same time.
_INSERT_BATCH = text(
    """
    WITH wanted AS (
        SELECT p.id AS prompt_id, p.version, m.id AS model_id, r.run_index
        FROM prompts p
        JOIN models m ON m.id = ANY(:model_ids)
            AND (p.model_slugs IS NULL OR jsonb_typeof(p.model_slugs) = 'null'
                 OR p.model_slugs @> to_jsonb(m.slug))
        CROSS JOIN LATERAL generate_series(0, p.runs_per_batch - 1) AS r(run_index)
        WHERE p.id = ANY(:prompt_ids)
    ), inserted AS (
        INSERT INTO prompt_jobs (id, prompt_id, model_id, run_index, batch_key, prompt_version,
            status, attempt_count, max_attempts, scheduled_for)
        SELECT gen_random_uuid(), w.prompt_id, w.model_id, w.run_index, :batch_key, w.version,
            'queued', 0, :max_attempts, :scheduled_for
        FROM wanted w
        WHERE NOT EXISTS (
            SELECT 1 FROM prompt_jobs j
            WHERE j.batch_key = :batch_key AND j.prompt_id = w.prompt_id
              AND j.model_id = w.model_id AND j.run_index = w.run_index
        )
        ON CONFLICT ON CONSTRAINT uq_prompt_jobs_run DO NOTHING
        RETURNING prompt_id
    )
    SELECT (SELECT count(*) FROM wanted) AS planned,
           (SELECT count(*) FROM inserted) AS created,
           (SELECT array_agg(DISTINCT prompt_id) FROM inserted) AS prompt_ids
    """
)


def create_jobs(engine: Engine, request: FanoutRequest, settings: Settings) -> FanoutResult:
    """Insert the batch's job rows; rows that exist already are left as they are."""
    result = FanoutResult()
    # Core rows, no ORM session: the fan-out's cold start does not import sqlalchemy.orm.
    with engine.begin() as conn:
        prompts = _select(
            conn, schema.prompts, request.prompts, "prompts", request.include_disabled
        )
        models = _select(conn, schema.models, request.models, "models")
        store_versions(conn, prompts)
        groups: dict[tuple[str, datetime], list[int]] = {}
        for prompt in prompts:
            key = request.batch_key or batch_key(prompt.schedule, request.at)
            groups.setdefault((key, period_start(prompt.schedule, request.at)), []).append(
                prompt.id
            )
        created_prompts: set[int] = set()
        for (key, scheduled_for), prompt_ids in groups.items():
            row = conn.execute(
                _INSERT_BATCH,
                {
                    "prompt_ids": prompt_ids,
                    "model_ids": [m.id for m in models],
                    "batch_key": key,
                    "max_attempts": settings.max_attempts,
                    "scheduled_for": scheduled_for,
                },
            ).one()
            counts = result.batches.setdefault(key, {"created": 0, "existing": 0})
            counts["created"] += row.created
            counts["existing"] += row.planned - row.created
            result.created += row.created
            result.existing += row.planned - row.created
            created_prompts.update(row.prompt_ids or ())
        if created_prompts:
            conn.execute(
                update(schema.prompts)
                .where(schema.prompts.c.id.in_(created_prompts))
                .values(last_run_at=request.at)
            )
    return result


# Rows with no message in flight, oldest first, locked so that two fan-outs (a schedule and a
# continuation) never send the same row: new rows through their partial index, then lost
# messages (queued, sent long ago, due) and expired leases through the live-rows index.
_UNSENT = text(
    """
    SELECT id, false AS rescued FROM prompt_jobs
    WHERE status = 'queued' AND enqueued_at IS NULL AND id <> ALL(:skip)
    ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED
    """
)
_LOST = text(
    """
    SELECT id, (status = 'processing') AS rescued FROM prompt_jobs
    WHERE status IN ('queued', 'processing') AND id <> ALL(:skip) AND (
        (status = 'queued' AND enqueued_at < now() - make_interval(secs => :stale)
         AND (next_attempt_at IS NULL OR next_attempt_at <= now()))
     OR (status = 'processing' AND lease_expires_at < now()
         AND (enqueued_at IS NULL OR enqueued_at < lease_expires_at)))
    ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED
    """
)
_MARK_SENT = text("UPDATE prompt_jobs SET enqueued_at = now() WHERE id = ANY(:ids)")


@dataclass
class SendProgress:
    sent: int = 0
    failed: int = 0
    rescued: int = 0
    more: bool = False  # rows were left for a continuation


def send_until(
    engine: Engine,
    queue: JobQueue,
    settings: Settings,
    remaining_ms: Callable[[], int] | None = None,
) -> SendProgress:
    """Send every job that has no message in flight, SEND_CHUNK rows per transaction, while
    the invocation has more than RESERVE_MS left; `more` says rows were left over."""
    progress = SendProgress()
    skip: list[uuid.UUID] = []  # rows SQS refused this run: the next run tries them again
    slowest_ms = 0.0
    while True:
        if remaining_ms is not None and remaining_ms() < RESERVE_MS + 2 * slowest_ms:
            progress.more = True
            break
        started = time.monotonic()
        with engine.begin() as conn:
            params = {"skip": skip, "limit": SEND_CHUNK, "stale": settings.requeue_after_seconds}
            rows = list(conn.execute(_UNSENT, params).all())
            if len(rows) < SEND_CHUNK:
                rows += conn.execute(_LOST, {**params, "limit": SEND_CHUNK - len(rows)}).all()
            if not rows:
                break
            outcome = queue.send_jobs(str(r.id) for r in rows)
            if outcome.sent:
                conn.execute(_MARK_SENT, {"ids": [uuid.UUID(i) for i in outcome.sent]})
        rescued = {str(r.id) for r in rows if r.rescued}
        progress.sent += len(outcome.sent)
        progress.rescued += len(rescued.intersection(outcome.sent))
        progress.failed += len(outcome.failed)
        skip.extend(uuid.UUID(i) for i in outcome.failed)
        slowest_ms = max(slowest_ms, (time.monotonic() - started) * 1000)
        if outcome.failed:
            logger.warning(
                "some jobs were not sent; the next fan-out sends them",
                extra={
                    "failed": len(outcome.failed),
                    "codes": sorted(set(outcome.failed.values())),
                },
            )
        if not outcome.sent:  # SQS takes nothing now: leave the rest to the next run
            break
        logger.info("fan-out progress", extra={"sent": progress.sent})
    return progress


def send_pending(engine: Engine, queue: JobQueue, settings: Settings) -> tuple[int, int, int]:
    """Send every job that has no message in flight: new rows, rows a crash left unsent,
    rows whose message was lost (dead-lettered) and expired leases. Returns (sent, failed, rescued)."""
    progress = send_until(engine, queue, settings)
    return progress.sent, progress.failed, progress.rescued


def run_fanout(
    engine: Engine,
    queue: JobQueue,
    request: FanoutRequest,
    settings: Settings,
    remaining_ms: Callable[[], int] | None = None,
    continuation: ContinuationQueue | None = None,
) -> FanoutResult:
    """Create the batch's rows (not for a continuation), then send while time allows; what
    is left goes to the continuation queue, which invokes the fan-out again at once."""
    result = FanoutResult() if request.continuation else create_jobs(engine, request, settings)
    progress = send_until(engine, queue, settings, remaining_ms)
    result.sent, result.send_failed, result.rescued = (
        progress.sent,
        progress.failed,
        progress.rescued,
    )
    if progress.more and progress.sent and continuation is not None:
        continuation.continue_sending()
        result.continued = True
    logger.info("fan-out done", extra={"result": result.as_dict()})
    metrics.add_metric(name="JobsCreated", unit=MetricUnit.Count, value=result.created)
    metrics.add_metric(name="JobsSent", unit=MetricUnit.Count, value=result.sent)
    metrics.add_metric(name="JobsSendFailed", unit=MetricUnit.Count, value=result.send_failed)
    return result
