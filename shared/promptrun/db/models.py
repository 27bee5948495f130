"""The schema, as SQLAlchemy 2 typed models. Alembic migrations create it."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class Schedule(StrEnum):
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"


FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SKIPPED)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (
        CheckConstraint("schedule IN ('hourly', 'daily', 'weekly')", name="schedule"),
        CheckConstraint("runs_per_batch BETWEEN 1 AND 100", name="runs_per_batch"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    slug: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    system_text: Mapped[str | None] = mapped_column(Text)
    schedule: Mapped[str] = mapped_column(String(16), nullable=False)
    runs_per_batch: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    # None means every enabled model; otherwise a list of model slugs.
    model_slugs: Mapped[list[str] | None] = mapped_column(JSONB)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    version: Mapped[str] = mapped_column(String(64), nullable=False)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class PromptVersion(Base):
    """A prompt's text as it was at one version: immutable (a trigger refuses updates)."""

    __tablename__ = "prompt_versions"
    __table_args__ = (
        UniqueConstraint("prompt_id", "version", name="uq_prompt_versions_version"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    prompt_id: Mapped[int] = mapped_column(
        ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False
    )
    version: Mapped[str] = mapped_column(String(64), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    system_text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (CheckConstraint("max_concurrency >= 1", name="max_concurrency"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    slug: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    provider: Mapped[str] = mapped_column(String(32), nullable=False)
    provider_model: Mapped[str] = mapped_column(String(300), nullable=False)
    base_url: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    price_input_per_mtok: Mapped[Decimal] = mapped_column(Numeric(12, 6), nullable=False, default=0)
    price_output_per_mtok: Mapped[Decimal] = mapped_column(
        Numeric(12, 6), nullable=False, default=0
    )
    max_concurrency: Mapped[int] = mapped_column(Integer, nullable=False, default=4)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    # The model that extracts entities from this model's answers; None: this model itself.
    extraction_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class PromptJob(Base):
    __tablename__ = "prompt_jobs"
    __table_args__ = (
        UniqueConstraint(
            "prompt_id", "model_id", "run_index", "batch_key", name="uq_prompt_jobs_run"
        ),
        CheckConstraint(
            "status IN ('queued', 'processing', 'succeeded', 'failed', 'cancelled', 'skipped')",
            name="status",
        ),
        # prompt_id needs no index of its own: it leads the unique key.
        # A batch's jobs newest first (GET /jobs?batch_key=), and a batch's queued jobs.
        Index("ix_prompt_jobs_batch_key_created_at_id", "batch_key", "created_at", "id"),
        Index("ix_prompt_jobs_created_at_id", "created_at", "id"),
        # The few live rows among millions of finished ones (fan-out's repair pass).
        Index(
            "ix_prompt_jobs_live",
            "status",
            "created_at",
            postgresql_where="status IN ('queued', 'processing')",
        ),
        # Counting a model's live jobs for its max_concurrency.
        Index("ix_prompt_jobs_model_id_status", "model_id", "status"),
        # The fan-out's repair pass looks for rows that were never sent.
        # The retention sweep finds finished jobs by age.
        Index(
            "ix_prompt_jobs_finished_at",
            "finished_at",
            postgresql_where="status IN ('succeeded', 'failed', 'cancelled', 'skipped')",
        ),
        Index(
            "ix_prompt_jobs_unsent",
            "created_at",
            postgresql_where="status = 'queued' AND enqueued_at IS NULL",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    prompt_id: Mapped[int] = mapped_column(
        ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False
    )
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), nullable=False
    )
    run_index: Mapped[int] = mapped_column(Integer, nullable=False)
    batch_key: Mapped[str] = mapped_column(String(64), nullable=False)
    prompt_version: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=JobStatus.QUEUED)
    attempt_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=5)
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    scheduled_for: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # An operator cancelled the job while it ran: it finishes its call, then is not retried.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 8))
    # Why a queued job is waiting without using an attempt (paused, budget, rate): see limits.py.
    wait_reason: Mapped[str | None] = mapped_column(Text)


class FlowLimit(Base):
    """Admission state shared by every processor: one row per model (`model:<slug>`) and per
    limit group (`group:<name>`), plus `catalog` for the catalogue-wide budget."""

    __tablename__ = "flow_limits"
    __table_args__ = (
        CheckConstraint("max_concurrency IS NULL OR max_concurrency >= 1", name="max_concurrency"),
        CheckConstraint("rpm IS NULL OR rpm >= 1", name="rpm"),
        CheckConstraint("tpm IS NULL OR tpm >= 1", name="tpm"),
        CheckConstraint("rate_factor > 0 AND rate_factor <= 1", name="rate_factor"),
    )

    key: Mapped[str] = mapped_column(String(220), primary_key=True)
    group_key: Mapped[str | None] = mapped_column(String(220))
    provider: Mapped[str | None] = mapped_column(String(32))
    max_concurrency: Mapped[int | None] = mapped_column(Integer)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    budget_batch_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    budget_day_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    paused: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    paused_reason: Mapped[str | None] = mapped_column(Text)
    in_flight: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # GCRA theoretical arrival times, epoch seconds of the database clock.
    request_tat: Mapped[float] = mapped_column(Float, nullable=False, default=0)
    token_tat: Mapped[float] = mapped_column(Float, nullable=False, default=0)
    # The last turn handed to a job held back by the rates (see limits.admit).
    queue_tat: Mapped[float] = mapped_column(Float, nullable=False, default=0)
    # Share of the configured rates in use: halved on 429, raised step by step on success.
    rate_factor: Mapped[float] = mapped_column(Float, nullable=False, default=1)
    decreased_at: Mapped[float] = mapped_column(Float, nullable=False, default=0)
    recounted_at: Mapped[float] = mapped_column(Float, nullable=False, default=0)
    throttled: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    updated_at: Mapped[datetime] = _now()


class BudgetSpend(Base):
    """USD spent (and reserved for calls in flight) per budget scope and period."""

    __tablename__ = "budget_spend"

    scope: Mapped[str] = mapped_column(String(220), primary_key=True)
    period: Mapped[str] = mapped_column(String(80), primary_key=True)
    spent_usd: Mapped[Decimal] = mapped_column(Numeric(16, 8), nullable=False, default=0)
    updated_at: Mapped[datetime] = _now()


class Response(Base):
    __tablename__ = "responses"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("prompt_jobs.id", ondelete="CASCADE"), unique=True, nullable=False
    )
    answer_text: Mapped[str] = mapped_column(Text, nullable=False)
    structured: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    provider_response_id: Mapped[str | None] = mapped_column(String(300))
    finish_reason: Mapped[str | None] = mapped_column(String(64))
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _now()


class EntityMention(Base):
    __tablename__ = "entity_mentions"
    __table_args__ = (
        UniqueConstraint("job_id", "name", name="uq_entity_mentions_job_name"),
        Index("ix_entity_mentions_batch_key_name", "batch_key", "name"),
        Index("ix_entity_mentions_prompt_id", "prompt_id"),
        Index("ix_entity_mentions_model_id", "model_id"),
        # Visibility: a brand's aliases across batches, answered from the index alone.
        Index(
            "ix_entity_mentions_name_batch_key",
            "name",
            "batch_key",
            postgresql_include=["job_id", "model_id", "prompt_id", "rank", "sentiment"],
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("prompt_jobs.id", ondelete="CASCADE"), nullable=False
    )
    prompt_id: Mapped[int] = mapped_column(
        ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False
    )
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), nullable=False
    )
    batch_key: Mapped[str] = mapped_column(String(64), nullable=False)
    name: Mapped[str] = mapped_column(String(300), nullable=False)
    display_name: Mapped[str] = mapped_column(String(300), nullable=False)
    entity_type: Mapped[str] = mapped_column(String(32), nullable=False)
    rank: Mapped[int] = mapped_column(Integer, nullable=False)
    sentiment: Mapped[str | None] = mapped_column(String(16))
    snippet: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()


class Brand(Base):
    """A brand the catalogue tracks: the user's own (own=True) or a competitor."""

    __tablename__ = "brands"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    slug: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(300), nullable=False)
    own: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class BrandAlias(Base):
    """A normalized mention name (entity_mentions.name) that stands for a brand; matched at
    query time, so a changed alias applies to every past answer at once."""

    __tablename__ = "brand_aliases"
    __table_args__ = (Index("ix_brand_aliases_brand_id", "brand_id"),)

    alias: Mapped[str] = mapped_column(String(300), primary_key=True)
    brand_id: Mapped[int] = mapped_column(
        ForeignKey("brands.id", ondelete="CASCADE"), nullable=False
    )
    spelling: Mapped[str] = mapped_column(String(300), nullable=False)


class BatchCompletion(Base):
    """One row per finished batch: the guard that sends promptrun.batch.completed once."""

    __tablename__ = "batch_completions"

    batch_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    detected_at: Mapped[datetime] = _now()
    # A sender holds the row until then; a crashed sender's claim lapses and another sends.
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # When visibility_rollups last summed this batch; None: read its mentions live.
    rolled_up_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class VisibilityRollup(Base):
    """A finished batch's brand counts per model and prompt, summed once at completion so a
    year of visibility reads thousands of rows instead of a million mentions."""

    __tablename__ = "visibility_rollups"

    batch_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    brand_id: Mapped[int] = mapped_column(
        ForeignKey("brands.id", ondelete="CASCADE"), primary_key=True
    )
    answers_mentioning: Mapped[int] = mapped_column(Integer, nullable=False)
    position_sum: Mapped[int] = mapped_column(BigInteger, nullable=False)
    first_position: Mapped[int] = mapped_column(Integer, nullable=False)
    positive: Mapped[int] = mapped_column(Integer, nullable=False)
    neutral: Mapped[int] = mapped_column(Integer, nullable=False)
    negative: Mapped[int] = mapped_column(Integer, nullable=False)
    unknown: Mapped[int] = mapped_column(Integer, nullable=False)


# --- summaries, maintained by triggers (migration 0007) as jobs and mentions change ---------
# The status API reads these instead of scanning history; see promptrun/summaries.py.


class BatchStats(Base):
    """One row per batch: its key and when its first job row was created (the list order)."""

    __tablename__ = "batch_stats"
    __table_args__ = (Index("ix_batch_stats_created_at_batch_key", "created_at", "batch_key"),)

    batch_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class JobCount(Base):
    """Jobs, tokens and cost per (batch, model, status); first start and last finish seen."""

    __tablename__ = "job_counts"

    batch_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 8), nullable=False, default=0)
    first_created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    first_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PromptJobCount(Base):
    """Jobs per (prompt, batch, status): GET /jobs?prompt= counts."""

    __tablename__ = "prompt_job_counts"

    prompt_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    batch_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class JobDurationBucket(Base):
    """A histogram of job durations per (batch, model): exact below 1 s, 1% wide above."""

    __tablename__ = "job_duration_buckets"

    batch_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class JobErrorCount(Base):
    """Jobs whose latest attempt ended with an error, per (batch, error); keyed by its md5."""

    __tablename__ = "job_error_counts"

    batch_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    error_key: Mapped[str] = mapped_column(String(32), primary_key=True)
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    jobs: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class EntityCountRow(Base):
    """Mentions and the sum of their ranks per (batch, model, name, spelling, type)."""

    __tablename__ = "entity_counts"

    batch_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(300), primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    mentions: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    rank_sum: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class EntityBatchTotal(Base):
    """The same per batch, over all models: GET /entities?batch_key=."""

    __tablename__ = "entity_batch_totals"

    batch_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(300), primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    mentions: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    rank_sum: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class EntityModelTotal(Base):
    """The same per model, over all batches: GET /entities?model=."""

    __tablename__ = "entity_model_totals"

    model_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(300), primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    mentions: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    rank_sum: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class EntityTotal(Base):
    """The same over all history: GET /entities without a filter."""

    __tablename__ = "entity_totals"

    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(300), primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    mentions: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    rank_sum: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class SummaryCompaction(Base):
    """One row: when the pending deltas were last folded into the summaries (and the lock
    that lets one writer at a time do it)."""

    __tablename__ = "summary_compaction"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    compacted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


def _pending(table: Table) -> Table:
    """Deltas not yet folded into `table`: its columns, no key (writers only append)."""
    return Table(
        f"{table.name}_pending",
        Base.metadata,
        *(Column(c.name, c.type, nullable=c.nullable) for c in table.columns),
    )


PENDING_TABLES = [
    _pending(t.__table__)  # type: ignore[arg-type]
    for t in (JobCount, PromptJobCount, JobDurationBucket, JobErrorCount, EntityCountRow)
]
