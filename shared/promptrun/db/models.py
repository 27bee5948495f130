"""The schema's ORM classes, mapped onto the Core tables of `promptrun.db.schema` (the one
definition). For the catalogue sync, the fan-out's reads, Alembic and the tests: the Lambda
hot paths use the tables and never import sqlalchemy.orm."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import DeclarativeBase, Mapped

from promptrun.db import schema

# Re-exported: callers outside the Lambda paths still name them from here.
from promptrun.db.enums import FINISHED_STATUSES as FINISHED_STATUSES
from promptrun.db.enums import JobStatus as JobStatus
from promptrun.db.enums import Schedule as Schedule


class Base(DeclarativeBase):
    metadata = schema.metadata


class Prompt(Base):
    __table__ = schema.prompts

    id: Mapped[int]
    slug: Mapped[str]
    text: Mapped[str]
    system_text: Mapped[str | None]
    schedule: Mapped[str]
    runs_per_batch: Mapped[int]
    model_slugs: Mapped[list[str] | None]
    enabled: Mapped[bool]
    version: Mapped[str]
    last_run_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class PromptVersion(Base):
    """A prompt's text as it was at one version: immutable (a trigger refuses updates)."""

    __table__ = schema.prompt_versions

    id: Mapped[int]
    prompt_id: Mapped[int]
    version: Mapped[str]
    text: Mapped[str]
    system_text: Mapped[str | None]
    created_at: Mapped[datetime]


class Model(Base):
    __table__ = schema.models

    id: Mapped[int]
    slug: Mapped[str]
    provider: Mapped[str]
    provider_model: Mapped[str]
    base_url: Mapped[str | None]
    params: Mapped[dict[str, Any]]
    price_input_per_mtok: Mapped[Decimal]
    price_output_per_mtok: Mapped[Decimal]
    max_concurrency: Mapped[int]
    enabled: Mapped[bool]
    extraction_model_id: Mapped[int | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class PromptJob(Base):
    __table__ = schema.prompt_jobs

    id: Mapped[uuid.UUID]
    prompt_id: Mapped[int]
    model_id: Mapped[int]
    run_index: Mapped[int]
    batch_key: Mapped[str]
    prompt_version: Mapped[str]
    status: Mapped[str]
    attempt_count: Mapped[int]
    max_attempts: Mapped[int]
    error_kind: Mapped[str | None]
    error_message: Mapped[str | None]
    scheduled_for: Mapped[datetime]
    next_attempt_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    duration_ms: Mapped[int | None]
    input_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    cost_usd: Mapped[Decimal | None]
    wait_reason: Mapped[str | None]


class FlowLimit(Base):
    """Admission state shared by every processor: one row per model (`model:<slug>`) and per
    limit group (`group:<name>`), plus `catalog` for the catalogue-wide budget."""

    __table__ = schema.flow_limits

    key: Mapped[str]
    group_key: Mapped[str | None]
    provider: Mapped[str | None]
    max_concurrency: Mapped[int | None]
    rpm: Mapped[int | None]
    tpm: Mapped[int | None]
    budget_batch_usd: Mapped[Decimal | None]
    budget_day_usd: Mapped[Decimal | None]
    paused: Mapped[bool]
    paused_reason: Mapped[str | None]
    in_flight: Mapped[int]
    request_tat: Mapped[float]
    token_tat: Mapped[float]
    queue_tat: Mapped[float]
    rate_factor: Mapped[float]
    decreased_at: Mapped[float]
    recounted_at: Mapped[float]
    throttled: Mapped[int]
    updated_at: Mapped[datetime]


class BudgetSpend(Base):
    """USD spent (and reserved for calls in flight) per budget scope and period."""

    __table__ = schema.budget_spend

    scope: Mapped[str]
    period: Mapped[str]
    spent_usd: Mapped[Decimal]
    updated_at: Mapped[datetime]


class Response(Base):
    __table__ = schema.responses

    id: Mapped[int]
    job_id: Mapped[uuid.UUID]
    answer_text: Mapped[str]
    structured: Mapped[dict[str, Any]]
    provider_response_id: Mapped[str | None]
    finish_reason: Mapped[str | None]
    latency_ms: Mapped[int | None]
    input_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    created_at: Mapped[datetime]


class EntityMention(Base):
    __table__ = schema.entity_mentions

    id: Mapped[int]
    job_id: Mapped[uuid.UUID]
    prompt_id: Mapped[int]
    model_id: Mapped[int]
    batch_key: Mapped[str]
    name: Mapped[str]
    display_name: Mapped[str]
    entity_type: Mapped[str]
    rank: Mapped[int]
    sentiment: Mapped[str | None]
    snippet: Mapped[str | None]
    created_at: Mapped[datetime]


class Brand(Base):
    """A brand the catalogue tracks: the user's own (own=True) or a competitor."""

    __table__ = schema.brands

    id: Mapped[int]
    slug: Mapped[str]
    name: Mapped[str]
    own: Mapped[bool]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class BrandAlias(Base):
    """A normalized mention name (entity_mentions.name) that stands for a brand; matched at
    query time, so a changed alias applies to every past answer at once."""

    __table__ = schema.brand_aliases

    alias: Mapped[str]
    brand_id: Mapped[int]
    spelling: Mapped[str]


class BatchCompletion(Base):
    """One row per finished batch: the guard that sends promptrun.batch.completed once."""

    __table__ = schema.batch_completions

    batch_key: Mapped[str]
    detected_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    detail: Mapped[dict[str, Any] | None]
    rolled_up_at: Mapped[datetime | None]


class VisibilityRollup(Base):
    """A finished batch's brand counts per model and prompt, summed once at completion so a
    year of visibility reads thousands of rows instead of a million mentions."""

    __table__ = schema.visibility_rollups

    batch_key: Mapped[str]
    model_id: Mapped[int]
    prompt_id: Mapped[int]
    brand_id: Mapped[int]
    answers_mentioning: Mapped[int]
    position_sum: Mapped[int]
    first_position: Mapped[int]
    positive: Mapped[int]
    neutral: Mapped[int]
    negative: Mapped[int]
    unknown: Mapped[int]


class BatchStats(Base):
    """One row per batch: its key and when its first job row was created (the list order)."""

    __table__ = schema.batch_stats

    batch_key: Mapped[str]
    created_at: Mapped[datetime]


class JobCount(Base):
    """Jobs, tokens and cost per (batch, model, status); first start and last finish seen."""

    __table__ = schema.job_counts

    batch_key: Mapped[str]
    model_id: Mapped[int]
    status: Mapped[str]
    jobs: Mapped[int]
    input_tokens: Mapped[int]
    output_tokens: Mapped[int]
    cost_usd: Mapped[Decimal]
    first_created_at: Mapped[datetime | None]
    first_started_at: Mapped[datetime | None]
    last_finished_at: Mapped[datetime | None]


class PromptJobCount(Base):
    """Jobs per (prompt, batch, status): GET /jobs?prompt= counts."""

    __table__ = schema.prompt_job_counts

    prompt_id: Mapped[int]
    batch_key: Mapped[str]
    status: Mapped[str]
    jobs: Mapped[int]


class JobDurationBucket(Base):
    """A histogram of job durations per (batch, model): exact below 1 s, 1% wide above."""

    __table__ = schema.job_duration_buckets

    batch_key: Mapped[str]
    model_id: Mapped[int]
    bucket: Mapped[int]
    jobs: Mapped[int]


class JobErrorCount(Base):
    """Jobs whose latest attempt ended with an error, per (batch, error); keyed by its md5."""

    __table__ = schema.job_error_counts

    batch_key: Mapped[str]
    error_key: Mapped[str]
    error_kind: Mapped[str | None]
    error_message: Mapped[str | None]
    jobs: Mapped[int]


class EntityCountRow(Base):
    """Mentions and the sum of their ranks per (batch, model, name, spelling, type)."""

    __table__ = schema.entity_counts

    batch_key: Mapped[str]
    model_id: Mapped[int]
    name: Mapped[str]
    display_name: Mapped[str]
    entity_type: Mapped[str]
    mentions: Mapped[int]
    rank_sum: Mapped[int]


class EntityBatchTotal(Base):
    """The same per batch, over all models: GET /entities?batch_key=."""

    __table__ = schema.entity_batch_totals

    batch_key: Mapped[str]
    name: Mapped[str]
    display_name: Mapped[str]
    entity_type: Mapped[str]
    mentions: Mapped[int]
    rank_sum: Mapped[int]


class EntityModelTotal(Base):
    """The same per model, over all batches: GET /entities?model=."""

    __table__ = schema.entity_model_totals

    model_id: Mapped[int]
    name: Mapped[str]
    display_name: Mapped[str]
    entity_type: Mapped[str]
    mentions: Mapped[int]
    rank_sum: Mapped[int]


class EntityTotal(Base):
    """The same over all history: GET /entities without a filter."""

    __table__ = schema.entity_totals

    name: Mapped[str]
    display_name: Mapped[str]
    entity_type: Mapped[str]
    mentions: Mapped[int]
    rank_sum: Mapped[int]


class SummaryCompaction(Base):
    """One row: when the pending deltas were last folded into the summaries (and the lock
    that lets one writer at a time do it)."""

    __table__ = schema.summary_compaction

    id: Mapped[int]
    compacted_at: Mapped[datetime]
