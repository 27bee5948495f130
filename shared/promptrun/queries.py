"""Read-only SQL for the status API: jobs, batches, batch summaries and entity counts.

Every function takes an Engine, runs plain SELECTs and returns pydantic models that
serialize to JSON as they are: money and averages as floats, datetimes as ISO 8601.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, Engine, Row, literal, select, tuple_

from promptrun.db.enums import JobStatus
from promptrun.db.schema import entity_mentions, models, prompt_jobs, prompts, responses
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
        where.append(prompt_jobs.c.batch_key == batch_key)
    if prompt is not None:
        where.append(
            prompt_jobs.c.prompt_id
            == select(prompts.c.id).where(prompts.c.slug == prompt).scalar_subquery()
        )
    if model is not None:
        where.append(
            prompt_jobs.c.model_id
            == select(models.c.id).where(models.c.slug == model).scalar_subquery()
        )
    if status is not None:
        where.append(prompt_jobs.c.status == status)
    return where


_JOB_COLUMNS = (
    prompt_jobs.c.id,
    prompts.c.slug.label("prompt"),
    models.c.slug.label("model"),
    prompt_jobs.c.run_index,
    prompt_jobs.c.batch_key,
    prompt_jobs.c.prompt_version,
    prompt_jobs.c.status,
    prompt_jobs.c.attempt_count,
    prompt_jobs.c.max_attempts,
    prompt_jobs.c.error_kind,
    prompt_jobs.c.error_message,
    prompt_jobs.c.scheduled_for,
    prompt_jobs.c.next_attempt_at,
    prompt_jobs.c.started_at,
    prompt_jobs.c.finished_at,
    prompt_jobs.c.created_at,
    prompt_jobs.c.updated_at,
    prompt_jobs.c.duration_ms,
    prompt_jobs.c.input_tokens,
    prompt_jobs.c.output_tokens,
    prompt_jobs.c.cost_usd,
    prompt_jobs.c.wait_reason,
)


def _jobs_select() -> Any:
    return (
        select(*_JOB_COLUMNS)
        .join(prompts, prompts.c.id == prompt_jobs.c.prompt_id)
        .join(models, models.c.id == prompt_jobs.c.model_id)
    )


def _job_item(row: Row[Any]) -> dict[str, Any]:
    return dict(row._mapping)


# --- jobs --------------------------------------------------------------------------------------


def get_job(engine: Engine, job_id: uuid.UUID) -> JobDetail | None:
    """One job with its answer (once succeeded) and the entities the answer mentions."""
    with engine.connect() as conn:
        row = conn.execute(_jobs_select().where(prompt_jobs.c.id == job_id)).first()
        if row is None:
            return None
        job = _job_item(row)
        response = None
        if job["status"] == JobStatus.SUCCEEDED:
            answer = conn.execute(
                select(
                    responses.c.answer_text,
                    responses.c.structured,
                    responses.c.provider_response_id,
                    responses.c.finish_reason,
                    responses.c.latency_ms,
                    responses.c.input_tokens,
                    responses.c.output_tokens,
                    responses.c.created_at,
                ).where(responses.c.job_id == job_id)
            ).first()
            response = JobResponse.model_validate(dict(answer._mapping)) if answer else None
        mentions = conn.execute(
            select(
                entity_mentions.c.name,
                entity_mentions.c.display_name,
                entity_mentions.c.entity_type.label("type"),
                entity_mentions.c.rank,
                entity_mentions.c.sentiment,
                entity_mentions.c.snippet,
            )
            .where(entity_mentions.c.job_id == job_id)
            .order_by(entity_mentions.c.rank, entity_mentions.c.name)
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
            tuple_(prompt_jobs.c.created_at, prompt_jobs.c.id)
            < tuple_(literal(at), literal(last_id))
        )
    with engine.connect() as conn:
        rows = conn.execute(
            _jobs_select()
            .where(*page_where)
            .order_by(prompt_jobs.c.created_at.desc(), prompt_jobs.c.id.desc())
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
