"""The schema as SQLAlchemy Core tables: the one definition. Alembic migrations create it.

The Lambda functions import this, never the ORM (sqlalchemy.orm and the mapping of every
class cost about 0.1 s of each cold start); `promptrun.db.models` maps ORM classes onto
these same tables for the catalogue sync, the migrations' comparison and the tests.
"""

from __future__ import annotations

import uuid

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

from promptrun.db.enums import JobStatus

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


def _id() -> Column[int]:
    return Column("id", BigInteger, primary_key=True, autoincrement=True)


def _now(name: str) -> Column[object]:
    return Column(name, DateTime(timezone=True), server_default=func.now(), nullable=False)


def _at(name: str) -> Column[object]:
    return Column(name, DateTime(timezone=True))


def _ref(name: str, target: str, unique: bool | None = None) -> Column[object]:
    # No type: a foreign key column takes the type of the column it references.
    return Column(name, ForeignKey(target, ondelete="CASCADE"), nullable=False, unique=unique)


def _count(name: str) -> Column[int]:
    return Column(name, BigInteger, nullable=False, default=0)


prompts = Table(
    "prompts",
    metadata,
    _id(),
    Column("slug", String(200), unique=True, nullable=False),
    Column("text", Text, nullable=False),
    Column("system_text", Text),
    Column("schedule", String(16), nullable=False),
    Column("runs_per_batch", Integer, nullable=False, default=1),
    # None means every enabled model; otherwise a list of model slugs.
    Column("model_slugs", JSONB),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("version", String(64), nullable=False),
    _at("last_run_at"),
    _now("created_at"),
    _now("updated_at"),
    CheckConstraint("schedule IN ('hourly', 'daily', 'weekly')", name="schedule"),
    CheckConstraint("runs_per_batch BETWEEN 1 AND 100", name="runs_per_batch"),
)

# A prompt's text as it was at one version: immutable (a trigger refuses updates).
prompt_versions = Table(
    "prompt_versions",
    metadata,
    _id(),
    _ref("prompt_id", "prompts.id"),
    Column("version", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("system_text", Text),
    _now("created_at"),
    UniqueConstraint("prompt_id", "version", name="uq_prompt_versions_version"),
)

models = Table(
    "models",
    metadata,
    _id(),
    Column("slug", String(200), unique=True, nullable=False),
    Column("provider", String(32), nullable=False),
    Column("provider_model", String(300), nullable=False),
    Column("base_url", Text),
    Column("params", JSONB, nullable=False, default=dict),
    Column("price_input_per_mtok", Numeric(12, 6), nullable=False, default=0),
    Column("price_output_per_mtok", Numeric(12, 6), nullable=False, default=0),
    Column("max_concurrency", Integer, nullable=False, default=4),
    Column("enabled", Boolean, nullable=False, default=True),
    # The model that extracts entities from this model's answers; None: this model itself.
    Column("extraction_model_id", ForeignKey("models.id", ondelete="SET NULL")),
    _now("created_at"),
    _now("updated_at"),
    CheckConstraint("max_concurrency >= 1", name="max_concurrency"),
)

prompt_jobs = Table(
    "prompt_jobs",
    metadata,
    Column("id", Uuid, primary_key=True, default=uuid.uuid4),
    _ref("prompt_id", "prompts.id"),
    _ref("model_id", "models.id"),
    Column("run_index", Integer, nullable=False),
    Column("batch_key", String(64), nullable=False),
    Column("prompt_version", String(64), nullable=False),
    Column("status", String(16), nullable=False, default=JobStatus.QUEUED),
    Column("attempt_count", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False, default=5),
    Column("error_kind", String(32)),
    Column("error_message", Text),
    Column("scheduled_for", DateTime(timezone=True), nullable=False),
    _at("next_attempt_at"),
    _at("lease_expires_at"),
    _at("enqueued_at"),
    _at("started_at"),
    _at("finished_at"),
    # An operator cancelled the job while it ran: it finishes its call, then is not retried.
    _at("cancel_requested_at"),
    _now("created_at"),
    _now("updated_at"),
    Column("duration_ms", Integer),
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
    Column("cost_usd", Numeric(14, 8)),
    # Why a queued job is waiting without using an attempt (paused, budget, rate): see limits.py.
    Column("wait_reason", Text),
    UniqueConstraint("prompt_id", "model_id", "run_index", "batch_key", name="uq_prompt_jobs_run"),
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

# Admission state shared by every processor: one row per model (`model:<slug>`) and per limit
# group (`group:<name>`), plus `catalog` for the catalogue-wide budget.
flow_limits = Table(
    "flow_limits",
    metadata,
    Column("key", String(220), primary_key=True),
    Column("group_key", String(220)),
    Column("provider", String(32)),
    Column("max_concurrency", Integer),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("budget_batch_usd", Numeric(14, 6)),
    Column("budget_day_usd", Numeric(14, 6)),
    Column("paused", Boolean, nullable=False, default=False),
    Column("paused_reason", Text),
    Column("in_flight", Integer, nullable=False, default=0),
    # GCRA theoretical arrival times, epoch seconds of the database clock.
    Column("request_tat", Float, nullable=False, default=0),
    Column("token_tat", Float, nullable=False, default=0),
    # The last turn handed to a job held back by the rates (see limits.admit).
    Column("queue_tat", Float, nullable=False, default=0),
    # Share of the configured rates in use: halved on 429, raised step by step on success.
    Column("rate_factor", Float, nullable=False, default=1),
    Column("decreased_at", Float, nullable=False, default=0),
    Column("recounted_at", Float, nullable=False, default=0),
    Column("throttled", BigInteger, nullable=False, default=0),
    _now("updated_at"),
    CheckConstraint("max_concurrency IS NULL OR max_concurrency >= 1", name="max_concurrency"),
    CheckConstraint("rpm IS NULL OR rpm >= 1", name="rpm"),
    CheckConstraint("tpm IS NULL OR tpm >= 1", name="tpm"),
    CheckConstraint("rate_factor > 0 AND rate_factor <= 1", name="rate_factor"),
)

# USD spent (and reserved for calls in flight) per budget scope and period.
budget_spend = Table(
    "budget_spend",
    metadata,
    Column("scope", String(220), primary_key=True),
    Column("period", String(80), primary_key=True),
    Column("spent_usd", Numeric(16, 8), nullable=False, default=0),
    _now("updated_at"),
)

responses = Table(
    "responses",
    metadata,
    _id(),
    _ref("job_id", "prompt_jobs.id", unique=True),
    Column("answer_text", Text, nullable=False),
    Column("structured", JSONB, nullable=False),
    Column("provider_response_id", String(300)),
    Column("finish_reason", String(64)),
    Column("latency_ms", Integer),
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
    _now("created_at"),
)

entity_mentions = Table(
    "entity_mentions",
    metadata,
    _id(),
    _ref("job_id", "prompt_jobs.id"),
    # Copied from the job, whose foreign keys hold them (migration 0008).
    Column("prompt_id", BigInteger, nullable=False),
    Column("model_id", BigInteger, nullable=False),
    Column("batch_key", String(64), nullable=False),
    Column("name", String(300), nullable=False),
    Column("display_name", String(300), nullable=False),
    Column("entity_type", String(32), nullable=False),
    Column("rank", Integer, nullable=False),
    Column("sentiment", String(16)),
    Column("snippet", Text),
    _now("created_at"),
    UniqueConstraint("job_id", "name", name="uq_entity_mentions_job_name"),
    Index("ix_entity_mentions_batch_key_name", "batch_key", "name"),
    Index("ix_entity_mentions_prompt_id", "prompt_id"),
    # Visibility: a brand's aliases across batches, answered from the index alone.
    Index(
        "ix_entity_mentions_name_batch_key",
        "name",
        "batch_key",
        postgresql_include=["job_id", "model_id", "prompt_id", "rank", "sentiment"],
    ),
)

# A brand the catalogue tracks: the user's own (own=True) or a competitor.
brands = Table(
    "brands",
    metadata,
    _id(),
    Column("slug", String(200), unique=True, nullable=False),
    Column("name", String(300), nullable=False),
    Column("own", Boolean, nullable=False, default=False),
    _now("created_at"),
    _now("updated_at"),
)

# A normalized mention name (entity_mentions.name) that stands for a brand; matched at query
# time, so a changed alias applies to every past answer at once.
brand_aliases = Table(
    "brand_aliases",
    metadata,
    Column("alias", String(300), primary_key=True),
    _ref("brand_id", "brands.id"),
    Column("spelling", String(300), nullable=False),
    Index("ix_brand_aliases_brand_id", "brand_id"),
)

# One row per finished batch: the guard that sends promptrun.batch.completed once.
batch_completions = Table(
    "batch_completions",
    metadata,
    Column("batch_key", String(64), primary_key=True),
    _now("detected_at"),
    # A sender holds the row until then; a crashed sender's claim lapses and another sends.
    _at("claimed_until"),
    _at("sent_at"),
    Column("detail", JSONB),
    # When visibility_rollups last summed this batch; None: read its mentions live.
    _at("rolled_up_at"),
)

# A finished batch's brand counts per model and prompt, summed once at completion so a year of
# visibility reads thousands of rows instead of a million mentions.
visibility_rollups = Table(
    "visibility_rollups",
    metadata,
    Column("batch_key", String(64), primary_key=True),
    Column("model_id", BigInteger, primary_key=True),
    Column("prompt_id", BigInteger, primary_key=True),
    Column("brand_id", ForeignKey("brands.id", ondelete="CASCADE"), primary_key=True),
    Column("answers_mentioning", Integer, nullable=False),
    Column("position_sum", BigInteger, nullable=False),
    Column("first_position", Integer, nullable=False),
    Column("positive", Integer, nullable=False),
    Column("neutral", Integer, nullable=False),
    Column("negative", Integer, nullable=False),
    Column("unknown", Integer, nullable=False),
)

# --- summaries, maintained by triggers (migration 0007) as jobs and mentions change ---------
# The status API reads these instead of scanning history; see promptrun/summaries.py.

# One row per batch: its key and when its first job row was created (the list order).
batch_stats = Table(
    "batch_stats",
    metadata,
    Column("batch_key", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_batch_stats_created_at_batch_key", "created_at", "batch_key"),
)

# Jobs, tokens and cost per (batch, model, status); first start and last finish seen.
job_counts = Table(
    "job_counts",
    metadata,
    Column("batch_key", String(64), primary_key=True),
    Column("model_id", BigInteger, primary_key=True),
    Column("status", String(16), primary_key=True),
    _count("jobs"),
    _count("input_tokens"),
    _count("output_tokens"),
    Column("cost_usd", Numeric(20, 8), nullable=False, default=0),
    _at("first_created_at"),
    _at("first_started_at"),
    _at("last_finished_at"),
)

# Jobs per (prompt, batch, status): GET /jobs?prompt= counts.
prompt_job_counts = Table(
    "prompt_job_counts",
    metadata,
    Column("prompt_id", BigInteger, primary_key=True),
    Column("batch_key", String(64), primary_key=True),
    Column("status", String(16), primary_key=True),
    _count("jobs"),
)

# A histogram of job durations per (batch, model): exact below 1 s, 1% wide above.
job_duration_buckets = Table(
    "job_duration_buckets",
    metadata,
    Column("batch_key", String(64), primary_key=True),
    Column("model_id", BigInteger, primary_key=True),
    Column("bucket", Integer, primary_key=True),
    _count("jobs"),
)

# Jobs whose latest attempt ended with an error, per (batch, error); keyed by its md5.
job_error_counts = Table(
    "job_error_counts",
    metadata,
    Column("batch_key", String(64), primary_key=True),
    Column("error_key", String(32), primary_key=True),
    Column("error_kind", String(32)),
    Column("error_message", Text),
    _count("jobs"),
)


def _entity_counts(name: str, *keys: Column[object]) -> Table:
    """Mentions and the sum of their ranks per `keys` and (name, spelling, type)."""
    return Table(
        name,
        metadata,
        *keys,
        Column("name", String(300), primary_key=True),
        Column("display_name", String(300), primary_key=True),
        Column("entity_type", String(32), primary_key=True),
        _count("mentions"),
        _count("rank_sum"),
    )


# Per (batch, model); per batch over all models (GET /entities?batch_key=); per model over all
# batches (GET /entities?model=); over all history (GET /entities without a filter).
entity_counts = _entity_counts(
    "entity_counts",
    Column("batch_key", String(64), primary_key=True),
    Column("model_id", BigInteger, primary_key=True),
)
entity_batch_totals = _entity_counts(
    "entity_batch_totals", Column("batch_key", String(64), primary_key=True)
)
entity_model_totals = _entity_counts(
    "entity_model_totals", Column("model_id", BigInteger, primary_key=True)
)
entity_totals = _entity_counts("entity_totals")

# One row: when the pending deltas were last folded into the summaries (and the lock that lets
# one writer at a time do it).
summary_compaction = Table(
    "summary_compaction",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("compacted_at", DateTime(timezone=True), nullable=False),
)


def _pending(table: Table) -> Table:
    """Deltas not yet folded into `table`: its columns, no key (writers only append)."""
    return Table(
        f"{table.name}_pending",
        metadata,
        *(Column(c.name, c.type, nullable=c.nullable) for c in table.columns),
    )


PENDING_TABLES = [
    _pending(t)
    for t in (job_counts, prompt_job_counts, job_duration_buckets, job_error_counts, entity_counts)
]
