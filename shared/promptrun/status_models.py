"""The status API's answers (pydantic models that serialize to JSON as they are: money and
averages as floats, datetimes as ISO 8601), its limits and its opaque cursors."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from promptrun.db.enums import JobStatus
from promptrun.errors import InputError

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
