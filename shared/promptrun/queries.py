"""Read-only SQL for the status API: jobs, batches, batch summaries and entity counts.

Every function takes an Engine, runs plain SELECTs and returns pydantic models that
serialize to JSON as they are: money and averages as floats, datetimes as ISO 8601.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, Engine, Row, literal, select, tuple_

from promptrun.db.models import (
    EntityMention,
    JobStatus,
    Model,
    Prompt,
    PromptJob,
    Response,
)
from promptrun.status_models import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    STATUSES,
    TOP_ERRORS,
    BatchItem,
    BatchPage,
    BatchSummary,
    EntityCount,
    EntityReport,
    ErrorCount,
    InvalidQuery,
    JobDetail,
    JobItem,
    JobPage,
    JobResponse,
    Mention,
    ModelUsage,
    Usage,
    decode_cursor,
    encode_cursor,
)

# --- shared pieces -------------------------------------------------------------------------


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
        summary = summaries.status_counts(
            conn, batch_key=batch_key, prompt=prompt, model=model, status=status
        )
    items = [JobItem.model_validate(_job_item(r)) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor("job", last.created_at, str(last.id))
    return JobPage(items=items, next_cursor=next_cursor, summary=summary)


# --- batches and entities: from the maintained summaries ---------------------------------------

# Imported last: promptrun.summaries builds on the models and cursors above.
from promptrun import summaries  # noqa: E402
from promptrun.summaries import batch_summary, entity_counts, list_batches  # noqa: E402

# The status API reads its answers and its limits here too.
__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "STATUSES",
    "TOP_ERRORS",
    "BatchItem",
    "BatchPage",
    "BatchSummary",
    "EntityCount",
    "EntityReport",
    "ErrorCount",
    "InvalidQuery",
    "JobDetail",
    "JobItem",
    "JobPage",
    "JobResponse",
    "Mention",
    "ModelUsage",
    "Usage",
    "batch_summary",
    "decode_cursor",
    "encode_cursor",
    "entity_counts",
    "get_job",
    "list_batches",
    "list_jobs",
]
