"""Fan-out: due prompts x enabled models x runs -> job rows (idempotent per batch) -> SQS.

Rows are inserted first and sent second; a row is marked `enqueued_at` only once SQS took
its message. Every run also sends what an earlier run inserted but never sent, so a crash
between insert and send loses nothing.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Engine, bindparam, select, text, update
from sqlalchemy.dialects.postgresql import insert

from promptrun.aws import JobQueue
from promptrun.db.engine import session_scope
from promptrun.db.models import Model, Prompt, PromptJob, PromptVersion
from promptrun.errors import InputError
from promptrun.observability import logger, metrics
from promptrun.schedule import batch_key, period_start, validate_batch_key
from promptrun.settings import Settings

INSERT_CHUNK = 1000
SEND_LIMIT = 20000


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


def parse_event(event: Any, now: datetime | None = None) -> FanoutRequest:
    """A scheduled event (its `time` sets the period) or a manual event."""
    if not isinstance(event, dict):
        raise InputError("fan-out event must be a JSON object")
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
    batches: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "existing": self.existing,
            "sent": self.sent,
            "send_failed": self.send_failed,
            "rescued": self.rescued,
            "batches": self.batches,
        }


def _select(
    session: Any, cls: Any, slugs: list[str] | None, kind: str, include_disabled: bool = False
) -> list[Any]:
    query = select(cls).order_by(cls.id)
    if slugs is None:
        return list(session.scalars(query.where(cls.enabled.is_(True))))
    rows = list(session.scalars(query.where(cls.slug.in_(slugs))))
    unknown = sorted(set(slugs) - {r.slug for r in rows})
    if unknown:
        raise InputError(f"fan-out event: {kind}: unknown slug(s) {', '.join(unknown)}")
    disabled = sorted(r.slug for r in rows if not r.enabled)
    if disabled and not include_disabled:
        raise InputError(f"fan-out event: {kind}: disabled: {', '.join(disabled)}")
    return rows


def store_versions(session: Any, prompts: list[Any]) -> None:
    """The versions these jobs will record exist as rows (the catalogue sync stores them too)."""
    if prompts:
        session.execute(
            insert(PromptVersion)
            .values(
                [
                    {"prompt_id": p.id, "version": p.version, "text": p.text, "system_text": p.system_text}
                    for p in prompts
                ]
            )
            .on_conflict_do_nothing(constraint="uq_prompt_versions_version")
        )


def create_jobs(engine: Engine, request: FanoutRequest, settings: Settings) -> FanoutResult:
    """Insert the batch's job rows; rows that exist already are left as they are."""
    result = FanoutResult()
    with session_scope(engine) as session:
        prompts = _select(session, Prompt, request.prompts, "prompts", request.include_disabled)
        models = _select(session, Model, request.models, "models")
        store_versions(session, prompts)
        rows: list[dict[str, Any]] = []
        for prompt in prompts:
            key = request.batch_key or batch_key(prompt.schedule, request.at)
            result.batches.setdefault(key, {"created": 0, "existing": 0})
            wanted = [
                m for m in models if prompt.model_slugs is None or m.slug in prompt.model_slugs
            ]
            for model in wanted:
                for run_index in range(prompt.runs_per_batch):
                    rows.append(
                        {
                            "id": uuid.uuid4(),
                            "prompt_id": prompt.id,
                            "model_id": model.id,
                            "run_index": run_index,
                            "batch_key": key,
                            "prompt_version": prompt.version,
                            "status": "queued",
                            "attempt_count": 0,
                            "max_attempts": settings.max_attempts,
                            "scheduled_for": period_start(prompt.schedule, request.at),
                        }
                    )
        created_prompts: set[int] = set()
        for start in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[start : start + INSERT_CHUNK]
            stmt = (
                insert(PromptJob)
                .values(chunk)
                .on_conflict_do_nothing(constraint="uq_prompt_jobs_run")
                .returning(PromptJob.prompt_id, PromptJob.batch_key)
            )
            inserted = session.execute(stmt).all()
            for prompt_id, key in inserted:
                result.batches[key]["created"] += 1
                created_prompts.add(prompt_id)
            result.created += len(inserted)
        result.existing = len(rows) - result.created
        planned_per_batch = Counter(r["batch_key"] for r in rows)
        for key, counts in result.batches.items():
            counts["existing"] = planned_per_batch[key] - counts["created"]
        if created_prompts:
            session.execute(
                update(Prompt).where(Prompt.id.in_(created_prompts)).values(last_run_at=request.at)
            )
    return result


_PENDING = text(
    """
    SELECT id, (status = 'processing') AS rescued FROM prompt_jobs
    WHERE (status = 'queued' AND enqueued_at IS NULL)
       OR (status = 'queued' AND enqueued_at < now() - make_interval(secs => :stale)
           AND (next_attempt_at IS NULL OR next_attempt_at <= now()))
       OR (status = 'processing' AND lease_expires_at < now()
           AND (enqueued_at IS NULL OR enqueued_at < lease_expires_at))
    ORDER BY created_at, id
    LIMIT :limit
    """
)


def send_pending(engine: Engine, queue: JobQueue, settings: Settings) -> tuple[int, int, int]:
    """Send every job that has no message in flight: new rows, rows a crash left unsent,
    rows whose message was lost (dead-lettered) and expired leases. Returns (sent, failed, rescued)."""
    sent = failed = rescued = 0
    with engine.connect() as conn:
        pending = conn.execute(
            _PENDING, {"stale": settings.requeue_after_seconds, "limit": SEND_LIMIT}
        ).all()
    ids = [str(row.id) for row in pending]
    rescued_ids = {str(row.id) for row in pending if row.rescued}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        outcome = queue.send_jobs(chunk)
        if outcome.sent:
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE prompt_jobs SET enqueued_at = now() WHERE id IN :ids").bindparams(
                        bindparam("ids", expanding=True)
                    ),
                    {"ids": [uuid.UUID(i) for i in outcome.sent]},
                )
        sent += len(outcome.sent)
        rescued += len(rescued_ids.intersection(outcome.sent))
        failed += len(outcome.failed)
        if outcome.failed:
            logger.warning(
                "some jobs were not sent; the next fan-out sends them",
                extra={
                    "failed": len(outcome.failed),
                    "codes": sorted(set(outcome.failed.values())),
                },
            )
        logger.info("fan-out progress", extra={"sent": sent, "pending": len(ids)})
    return sent, failed, rescued


def run_fanout(
    engine: Engine, queue: JobQueue, request: FanoutRequest, settings: Settings
) -> FanoutResult:
    result = create_jobs(engine, request, settings)
    result.sent, result.send_failed, result.rescued = send_pending(engine, queue, settings)
    logger.info("fan-out done", extra={"result": result.as_dict()})
    metrics.add_metric(name="JobsCreated", unit=MetricUnit.Count, value=result.created)
    metrics.add_metric(name="JobsSent", unit=MetricUnit.Count, value=result.sent)
    metrics.add_metric(name="JobsSendFailed", unit=MetricUnit.Count, value=result.send_failed)
    return result
