"""ORM classes for the tables code handles as objects (the catalogue sync, brands, the tests),
mapped onto the Core tables of `promptrun.db.schema`, the one definition; Alembic reads every
table from its metadata. The Lambda hot paths use the tables and never import sqlalchemy.orm.
The other tables (limits, summaries, completions, rollups) are read and written with SQL only,
so they have no class here."""

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
