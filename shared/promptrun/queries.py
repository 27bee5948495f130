"""Read-only SQL for the status API: jobs, batches, batch summaries and entity counts.

Every function takes an Engine, runs plain SELECTs and returns pydantic models that
serialize to JSON as they are: money and averages as floats, datetimes as ISO 8601.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Engine, Row, distinct, func, literal, select, tuple_

from promptrun.db.models import (
    FINISHED_STATUSES,
    EntityMention,
    JobStatus,
    Model,
    Prompt,
    PromptJob,
    Response,
)
from promptrun.errors import InputError
from promptrun.schedule import BATCH_KEY_RE

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
TOP_ERRORS = 5
STATUSES: tuple[str, ...] = tuple(s.value for s in JobStatus)


class InvalidQuery(InputError):
    """A query value that passed type checks but means nothing here (a bad cursor)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --- response models -------------------------------------------------------------------


class JobItem(BaseModel):
    id: uuid.UUID
    prompt: str = Field(description="prompt slug")
    model: str = Field(description="model slug")
    run_index: int
    batch_key: str
    prompt_version: str
    status: JobStatus
    attempt_count: int
    max_attempts: int
    error_kind: str | None
    error_message: str | None
    scheduled_for: datetime
    next_attempt_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    updated_at: datetime
    duration_ms: int | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    wait_reason: str | None = Field(
        default=None, description="why a queued job waits: paused, budget, rate limits"
    )


class JobResponse(BaseModel):
    answer_text: str
    structured: dict[str, Any] = Field(description="the validated extraction: {'entities': [...]}")
    provider_response_id: str | None
    finish_reason: str | None
    latency_ms: int | None
    input_tokens: int | None
    output_tokens: int | None
    created_at: datetime


class Mention(BaseModel):
    name: str = Field(description="normalized (case-folded) name, the match key")
    display_name: str
    type: str
    rank: int
    sentiment: str | None
    snippet: str | None


class JobDetail(JobItem):
    response: JobResponse | None = Field(description="present once the job succeeded")
    mentions: list[Mention]


class JobPage(BaseModel):
    items: list[JobItem]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last"
    )
    summary: dict[str, int] = Field(description="jobs per status for the same filter, all pages")


class BatchItem(BaseModel):
    batch_key: str
    created_at: datetime = Field(description="when the batch's first job row was created")
    total: int
    counts: dict[str, int] = Field(description="jobs per status")
    progress: float = Field(description="finished / total, 0..1")
    started_at: datetime | None = Field(description="first job started")
    ended_at: datetime | None = Field(description="last job finished; null until all have")


class BatchPage(BaseModel):
    items: list[BatchItem]
    next_cursor: str | None


class Usage(BaseModel):
    total: int
    counts: dict[str, int]
    p50_duration_ms: float | None = Field(description="over jobs that ran to an end")
    p95_duration_ms: float | None
    input_tokens: int
    output_tokens: int
    cost_usd: float


class ModelUsage(Usage):
    model: str


class ErrorCount(BaseModel):
    error_kind: str | None
    error_message: str | None
    jobs: int = Field(description="jobs whose latest attempt ended with this error")


class BatchSummary(Usage):
    batch_key: str
    created_at: datetime
    progress: float
    started_at: datetime | None
    ended_at: datetime | None
    by_model: list[ModelUsage]
    top_errors: list[ErrorCount]


class EntityCount(BaseModel):
    name: str = Field(description="normalized (case-folded) name")
    display_name: str = Field(description="the most common spelling")
    type: str = Field(description="the most common type")
    mentions: int
    jobs: int = Field(description="answers that mention it")
    share: float | None = Field(description="jobs / answers")
    average_rank: float


class EntityReport(BaseModel):
    answers: int = Field(description="answers (succeeded jobs) matching the filter")
    items: list[EntityCount]


# --- cursors -----------------------------------------------------------------------------


def encode_cursor(kind: str, created_at: datetime, key: str) -> str:
    raw = f"{kind}|{created_at.isoformat()}|{key}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> tuple[datetime, str]:
    """The (created_at, key) a page ended at; InvalidQuery naming `cursor` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        found, at_text, key = raw.split("|", 2)
        at = datetime.fromisoformat(at_text)
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
        raise InvalidQuery("cursor", "not a cursor this API returned") from None
    if found != kind or at.tzinfo is None:
        raise InvalidQuery("cursor", "not a cursor this API returned")
    try:  # checked here, not in SQL: year 1 at +14:00 is before year 1 in UTC
        at = at.astimezone(UTC)
    except OverflowError:
        raise InvalidQuery("cursor", "not a cursor this API returned") from None
    return at, key


# --- shared pieces -------------------------------------------------------------------------


def _zero_counts() -> dict[str, int]:
    return dict.fromkeys(STATUSES, 0)


def _status_counts() -> list[Any]:
    return [func.count().filter(PromptJob.status == s).label(f"n_{s}") for s in STATUSES]


def _counts_from(row: Row[Any]) -> dict[str, int]:
    m = row._mapping
    return {s: int(m[f"n_{s}"]) for s in STATUSES}


def _finished(counts: dict[str, int]) -> int:
    return sum(counts[s.value] for s in FINISHED_STATUSES)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _job_filters(
    batch_key: str | None = None,
    prompt: str | None = None,
    model: str | None = None,
    status: str | None = None,
) -> list[ColumnElement[bool]]:
    """Filters on prompt_jobs alone (slugs through subqueries), so counts need no join."""
    where: list[ColumnElement[bool]] = []
    if batch_key is not None:
        where.append(PromptJob.batch_key == batch_key)
    if prompt is not None:
        where.append(
            PromptJob.prompt_id == select(Prompt.id).where(Prompt.slug == prompt).scalar_subquery()
        )
    if model is not None:
        where.append(
            PromptJob.model_id == select(Model.id).where(Model.slug == model).scalar_subquery()
        )
    if status is not None:
        where.append(PromptJob.status == status)
    return where


_JOB_COLUMNS = (
    PromptJob.id,
    Prompt.slug.label("prompt"),
    Model.slug.label("model"),
    PromptJob.run_index,
    PromptJob.batch_key,
    PromptJob.prompt_version,
    PromptJob.status,
    PromptJob.attempt_count,
    PromptJob.max_attempts,
    PromptJob.error_kind,
    PromptJob.error_message,
    PromptJob.scheduled_for,
    PromptJob.next_attempt_at,
    PromptJob.started_at,
    PromptJob.finished_at,
    PromptJob.created_at,
    PromptJob.updated_at,
    PromptJob.duration_ms,
    PromptJob.input_tokens,
    PromptJob.output_tokens,
    PromptJob.cost_usd,
    PromptJob.wait_reason,
)


def _jobs_select() -> Any:
    return (
        select(*_JOB_COLUMNS)
        .join(Prompt, Prompt.id == PromptJob.prompt_id)
        .join(Model, Model.id == PromptJob.model_id)
    )


def _job_item(row: Row[Any]) -> dict[str, Any]:
    return dict(row._mapping)


# --- jobs --------------------------------------------------------------------------------------


def get_job(engine: Engine, job_id: uuid.UUID) -> JobDetail | None:
    """One job with its answer (once succeeded) and the entities the answer mentions."""
    with engine.connect() as conn:
        row = conn.execute(_jobs_select().where(PromptJob.id == job_id)).first()
        if row is None:
            return None
        job = _job_item(row)
        response = None
        if job["status"] == JobStatus.SUCCEEDED:
            answer = conn.execute(
                select(
                    Response.answer_text,
                    Response.structured,
                    Response.provider_response_id,
                    Response.finish_reason,
                    Response.latency_ms,
                    Response.input_tokens,
                    Response.output_tokens,
                    Response.created_at,
                ).where(Response.job_id == job_id)
            ).first()
            response = JobResponse.model_validate(dict(answer._mapping)) if answer else None
        mentions = conn.execute(
            select(
                EntityMention.name,
                EntityMention.display_name,
                EntityMention.entity_type.label("type"),
                EntityMention.rank,
                EntityMention.sentiment,
                EntityMention.snippet,
            )
            .where(EntityMention.job_id == job_id)
            .order_by(EntityMention.rank, EntityMention.name)
        ).all()
    return JobDetail.model_validate(
        {**job, "response": response, "mentions": [dict(m._mapping) for m in mentions]}
    )


def list_jobs(
    engine: Engine,
    *,
    batch_key: str | None = None,
    prompt: str | None = None,
    model: str | None = None,
    status: str | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> JobPage:
    """Newest first by (created_at, id); the summary counts the whole filter, not the page."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery("limit", f"must be between 1 and {MAX_LIMIT}")
    where = _job_filters(batch_key, prompt, model, status)
    page_where = list(where)
    if cursor is not None:
        at, key = decode_cursor("job", cursor)
        try:
            last_id = uuid.UUID(key)
        except ValueError:
            raise InvalidQuery("cursor", "not a cursor this API returned") from None
        page_where.append(
            tuple_(PromptJob.created_at, PromptJob.id) < tuple_(literal(at), literal(last_id))
        )
    with engine.connect() as conn:
        rows = conn.execute(
            _jobs_select()
            .where(*page_where)
            .order_by(PromptJob.created_at.desc(), PromptJob.id.desc())
            .limit(limit + 1)
        ).all()
        counted = conn.execute(
            select(PromptJob.status, func.count()).where(*where).group_by(PromptJob.status)
        ).all()
    items = [JobItem.model_validate(_job_item(r)) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor("job", last.created_at, str(last.id))
    summary = _zero_counts()
    for job_status, n in counted:
        summary[job_status] = int(n)
    return JobPage(items=items, next_cursor=next_cursor, summary=summary)


# --- batches -------------------------------------------------------------------------------


def list_batches(
    engine: Engine, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> BatchPage:
    """Batches newest first (by their first job row), with counts per status."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery("limit", f"must be between 1 and {MAX_LIMIT}")
    created = func.min(PromptJob.created_at)
    query = (
        select(
            PromptJob.batch_key,
            created.label("created_at"),
            func.count().label("total"),
            func.min(PromptJob.started_at).label("started_at"),
            func.max(PromptJob.finished_at).label("last_finished_at"),
            *_status_counts(),
        )
        .group_by(PromptJob.batch_key)
        .order_by(created.desc(), PromptJob.batch_key.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        at, key = decode_cursor("batch", cursor)
        if not BATCH_KEY_RE.match(key):
            raise InvalidQuery("cursor", "not a cursor this API returned")
        query = query.having(
            tuple_(created, PromptJob.batch_key) < tuple_(literal(at), literal(key))
        )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    items = []
    for row in rows[:limit]:
        counts = _counts_from(row)
        finished = _finished(counts)
        items.append(
            BatchItem(
                batch_key=row.batch_key,
                created_at=row.created_at,
                total=row.total,
                counts=counts,
                progress=finished / row.total,
                started_at=row.started_at,
                ended_at=row.last_finished_at if finished == row.total else None,
            )
        )
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor("batch", items[-1].created_at, items[-1].batch_key)
    return BatchPage(items=items, next_cursor=next_cursor)


def _usage_columns() -> list[Any]:
    return [
        func.count().label("total"),
        *_status_counts(),
        func.percentile_cont(0.5).within_group(PromptJob.duration_ms).label("p50"),
        func.percentile_cont(0.95).within_group(PromptJob.duration_ms).label("p95"),
        func.coalesce(func.sum(PromptJob.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(PromptJob.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(PromptJob.cost_usd), 0).label("cost_usd"),
    ]


def _usage(row: Any) -> dict[str, Any]:
    return {
        "total": int(row.total),
        "counts": _counts_from(row),
        "p50_duration_ms": _float(row.p50),
        "p95_duration_ms": _float(row.p95),
        "input_tokens": int(row.input_tokens),
        "output_tokens": int(row.output_tokens),
        "cost_usd": float(row.cost_usd),
    }


def batch_summary(engine: Engine, batch_key: str) -> BatchSummary | None:
    """Counts by status and by model, progress, start/end, p50/p95 duration, tokens, cost,
    top errors. None when the batch has no jobs."""
    in_batch = PromptJob.batch_key == batch_key
    with engine.connect() as conn:
        overall = conn.execute(
            select(
                *_usage_columns(),
                func.min(PromptJob.created_at).label("created_at"),
                func.min(PromptJob.started_at).label("started_at"),
                func.max(PromptJob.finished_at).label("last_finished_at"),
            ).where(in_batch)
        ).one()
        if not overall.total:
            return None
        per_model = conn.execute(
            select(Model.slug.label("model"), *_usage_columns())
            .join(Model, Model.id == PromptJob.model_id)
            .where(in_batch)
            .group_by(Model.slug)
            .order_by(Model.slug)
        ).all()
        errors = conn.execute(
            select(PromptJob.error_kind, PromptJob.error_message, func.count().label("jobs"))
            .where(
                in_batch, PromptJob.error_kind.is_not(None) | PromptJob.error_message.is_not(None)
            )
            .group_by(PromptJob.error_kind, PromptJob.error_message)
            .order_by(func.count().desc(), PromptJob.error_kind, PromptJob.error_message)
            .limit(TOP_ERRORS)
        ).all()
    usage = _usage(overall)
    finished = _finished(usage["counts"])
    return BatchSummary(
        batch_key=batch_key,
        created_at=overall.created_at,
        progress=finished / usage["total"],
        started_at=overall.started_at,
        ended_at=overall.last_finished_at if finished == usage["total"] else None,
        by_model=[ModelUsage(model=r.model, **_usage(r)) for r in per_model],
        top_errors=[ErrorCount.model_validate(dict(e._mapping)) for e in errors],
        **usage,
    )


# --- entities ---------------------------------------------------------------------------------


def _mention_filters(
    batch_key: str | None, prompt: str | None, model: str | None
) -> Sequence[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if batch_key is not None:
        where.append(EntityMention.batch_key == batch_key)
    if prompt is not None:
        where.append(
            EntityMention.prompt_id
            == select(Prompt.id).where(Prompt.slug == prompt).scalar_subquery()
        )
    if model is not None:
        where.append(
            EntityMention.model_id == select(Model.id).where(Model.slug == model).scalar_subquery()
        )
    return where


def entity_counts(
    engine: Engine,
    *,
    batch_key: str | None = None,
    prompt: str | None = None,
    model: str | None = None,
    limit: int = 100,
) -> EntityReport:
    """Mentions per normalized entity name, most mentioned first."""
    if not 1 <= limit <= 1000:
        raise InvalidQuery("limit", "must be between 1 and 1000")
    mentions = func.count().label("mentions")
    with engine.connect() as conn:
        answers = conn.execute(
            select(func.count())
            .select_from(Response)
            .join(PromptJob, PromptJob.id == Response.job_id)
            .where(*_job_filters(batch_key, prompt, model))
        ).scalar_one()
        rows = conn.execute(
            select(
                EntityMention.name,
                func.mode().within_group(EntityMention.display_name).label("display_name"),
                func.mode().within_group(EntityMention.entity_type).label("type"),
                mentions,
                func.count(distinct(EntityMention.job_id)).label("jobs"),
                func.avg(EntityMention.rank).label("average_rank"),
            )
            .where(*_mention_filters(batch_key, prompt, model))
            .group_by(EntityMention.name)
            .order_by(mentions.desc(), EntityMention.name)
            .limit(limit)
        ).all()
    return EntityReport(
        answers=answers,
        items=[
            EntityCount(
                name=r.name,
                display_name=r.display_name,
                type=r.type,
                mentions=r.mentions,
                jobs=r.jobs,
                share=round(r.jobs / answers, 4) if answers else None,
                average_rank=round(float(r.average_rank), 3),
            )
            for r in rows
        ],
    )
