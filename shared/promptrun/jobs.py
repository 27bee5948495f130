"""The job state machine. Every transition is one conditional statement on the job row,
so duplicate deliveries and late workers can never run a job twice or overwrite a newer attempt.

    queued -> processing -> succeeded | failed | queued (retry)
    processing (lease expired) -> processing (rescued by a new claim)
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from promptrun.db.enums import JobStatus
from promptrun.db.sql import Conn, text
from promptrun.errors import PromptrunError

MAX_ERROR_MESSAGE = 2000


@dataclass(frozen=True)
class ModelRef:
    """A catalogue model as a call needs it."""

    slug: str
    provider: str
    provider_model: str
    base_url: str | None
    params: dict[str, Any]
    price_input_per_mtok: Decimal
    price_output_per_mtok: Decimal


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run one attempt of a job."""

    id: uuid.UUID
    attempt: int
    max_attempts: int
    run_index: int
    batch_key: str
    prompt_id: int
    prompt_slug: str
    prompt_text: str
    system_text: str | None
    model_id: int
    model: ModelRef
    model_enabled: bool
    extraction_model: ModelRef  # the job's model unless the catalogue names another

    @property
    def model_slug(self) -> str:
        return self.model.slug

    @property
    def log_fields(self) -> dict[str, Any]:
        """What a log line about this attempt names."""
        return {
            "job_id": str(self.id),
            "attempt": self.attempt,
            "model": self.model.slug,
            "prompt": self.prompt_slug,
        }


@dataclass(frozen=True)
class JobState:
    status: str
    next_attempt_at: datetime | None
    lease_expires_at: datetime | None
    seconds_until_due: float
    seconds_until_lease_ends: float = 0.0


# A job row `j` that may be claimed now: queued and due, or its lease expired with attempts left
# and no cancel requested.
CLAIMABLE = """
    ((j.status = 'queued' AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= now()))
     OR (j.status = 'processing' AND j.lease_expires_at < now()
         AND j.cancel_requested_at IS NULL AND j.attempt_count < j.max_attempts))
"""

# What a claim reads beside the job row `{r}` (which brings its own columns): the version of the
# prompt it records, its model and its extraction model, as claimed_from_row reads them. What
# only Python reads travels as one JSON text, `context`: identical for every job of the same
# prompt version and models, so it is parsed once per instance (`_context`), not decoded
# column by column for every job (a batch's claim used to decode 40 columns per row).
_MODEL_JSON = """json_build_array({m}.slug, {m}.provider, {m}.provider_model, {m}.base_url,
    {m}.params, CAST({m}.price_input_per_mtok AS text), CAST({m}.price_output_per_mtok AS text))"""
CONTEXT_COLUMNS = f"""
           p.id AS prompt_id, {{r}}.prompt_version, v.id AS version_id,
           m.id AS model_id, m.enabled AS model_enabled,
           CAST(json_build_array(p.slug, v.text, v.system_text, {_MODEL_JSON.format(m="m")},
                                 CASE WHEN e.id IS NOT NULL THEN {_MODEL_JSON.format(m="e")} END)
                AS text) AS context"""
CONTEXT_JOINS = """
    JOIN prompts p ON p.id = {r}.prompt_id JOIN models m ON m.id = {r}.model_id
    -- the job runs the version it records, never the prompt's current text
    LEFT JOIN prompt_versions v ON v.prompt_id = {r}.prompt_id AND v.version = {r}.prompt_version
    LEFT JOIN models e ON e.id = m.extraction_model_id"""

# What claiming does to a job row `j`: an attempt counted, a lease of :lease seconds.
CLAIM_SET = """
    status = 'processing',
    attempt_count = j.attempt_count + 1,
    lease_expires_at = now() + make_interval(secs => :lease),
    started_at = COALESCE(j.started_at, now()),
    next_attempt_at = NULL,
    wait_reason = NULL,
    updated_at = now()"""

_CLAIM = text(
    f"""
    WITH claimed AS (
        UPDATE prompt_jobs j SET {CLAIM_SET}
        WHERE j.id = :id AND {CLAIMABLE}
        RETURNING j.id, j.attempt_count, j.max_attempts, j.run_index, j.batch_key, j.prompt_id,
                  j.model_id, j.prompt_version
    )
    SELECT c.id, c.attempt_count, c.max_attempts, c.run_index, c.batch_key,
           {CONTEXT_COLUMNS.format(r="c")}
    FROM claimed c {CONTEXT_JOINS.format(r="c")}
    """
)


def claim_job(conn: Conn, job_id: uuid.UUID, lease_seconds: int) -> ClaimedJob | None:
    """Atomically take a job that is queued and due, or whose lease has expired with attempts
    left. None: duplicate delivery, not yet due, finished, cancelled, taken by a live worker, or
    rescued with no attempt left (see fail_exhausted). Limits are the caller's: limits.admit."""
    row = conn.execute(_CLAIM, {"id": job_id, "lease": lease_seconds}).mappings().first()
    if row is None:
        return None
    if row["version_id"] is None:  # raising rolls the claim back
        raise PromptrunError(
            f"job {job_id} records prompt version {row['prompt_version']}, which is not stored"
        )
    return claimed_from_row(row)


def claimed_from_row(row: Any) -> ClaimedJob:
    """A claimed job from the columns _CLAIM returns (promptrun.batch_jobs returns the same)."""
    prompt_slug, prompt_text, system_text, model, extraction_model = _context(row["context"])
    return ClaimedJob(
        id=row["id"],
        attempt=row["attempt_count"],
        max_attempts=row["max_attempts"],
        run_index=row["run_index"],
        batch_key=row["batch_key"],
        prompt_id=row["prompt_id"],
        prompt_slug=prompt_slug,
        prompt_text=prompt_text,
        system_text=system_text,
        model_id=row["model_id"],
        model=model,
        model_enabled=row["model_enabled"],
        extraction_model=extraction_model,
    )


@lru_cache(maxsize=1024)
def _context(context: str) -> tuple[str, str, str | None, ModelRef, ModelRef]:
    """CONTEXT_COLUMNS' `context`: prompt slug, text and system text, the model and the
    extraction model (the model itself unless the catalogue names another). Cached by the text
    itself, so a model or prompt changed by the catalogue is a new text, never a stale hit;
    the ModelRefs are shared (a call copies their params: model_call.ModelCaller._call)."""
    prompt_slug, prompt_text, system_text, model, extraction = json.loads(context)
    ref = _model_ref(model)
    return prompt_slug, prompt_text, system_text, ref, _model_ref(extraction) if extraction else ref


def _model_ref(fields: list[Any]) -> ModelRef:
    slug, provider, provider_model, base_url, params, price_input, price_output = fields
    return ModelRef(
        slug=slug,
        provider=provider,
        provider_model=provider_model,
        base_url=base_url,
        params=dict(params or {}),
        price_input_per_mtok=Decimal(price_input),
        price_output_per_mtok=Decimal(price_output),
    )


def job_state(conn: Conn, job_id: uuid.UUID) -> JobState | None:
    row = conn.execute(
        text(
            "SELECT status, next_attempt_at, lease_expires_at, "
            "GREATEST(0, EXTRACT(EPOCH FROM (next_attempt_at - now()))) AS wait, "
            "GREATEST(0, EXTRACT(EPOCH FROM (lease_expires_at - now()))) AS lease_left "
            "FROM prompt_jobs WHERE id = :id"
        ),
        {"id": job_id},
    ).first()
    if row is None:
        return None
    return JobState(row[0], row[1], row[2], float(row[3] or 0), float(row[4] or 0))


_GUARD = " WHERE id = :id AND status = 'processing' AND attempt_count = :attempt"
# Usage adds up over attempts: a failed attempt's billed tokens are still spent.
_ADD_USAGE = (
    ", input_tokens = COALESCE(input_tokens, 0) + :inp"
    ", output_tokens = COALESCE(output_tokens, 0) + :out"
    ", cost_usd = COALESCE(cost_usd, 0) + :cost"
)


@dataclass
class Usage:
    """Tokens and cost one attempt spent, whatever its outcome."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    def add(self, input_tokens: int, output_tokens: int, cost_usd: Decimal) -> None:
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost_usd += cost_usd

    def params(self) -> dict[str, Any]:
        return {"inp": self.input_tokens, "out": self.output_tokens, "cost": self.cost_usd}


_DURATION = "duration_ms = (EXTRACT(EPOCH FROM (now() - started_at)) * 1000)::int"


def complete_job(conn: Conn, job: ClaimedJob, usage: Usage) -> bool:
    """Mark succeeded, guarded by the claimed attempt. False: a newer attempt owns the row,
    and the caller must roll back what it wrote."""
    result = conn.execute(
        text(
            "UPDATE prompt_jobs SET status = 'succeeded', finished_at = now(), updated_at = now(), "
            "lease_expires_at = NULL, error_kind = NULL, error_message = NULL, "
            + _DURATION
            + _ADD_USAGE
            + _GUARD
        ),
        {"id": job.id, "attempt": job.attempt, **usage.params()},
    )
    return result.rowcount == 1


def retry_job(
    conn: Conn,
    job: ClaimedJob,
    *,
    delay_seconds: float,
    error_kind: str,
    error_message: str,
    usage: Usage | None = None,
) -> bool:
    """Back to queued, due after the delay; the attempt stays counted."""
    result = conn.execute(
        text(
            # An operator cancelled it while it ran: it ends cancelled instead of retrying.
            "UPDATE prompt_jobs SET status = CASE WHEN cancel_requested_at IS NULL "
            "THEN 'queued' ELSE 'cancelled' END, "
            "finished_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE now() END, "
            "updated_at = now(), lease_expires_at = NULL, "
            "next_attempt_at = now() + make_interval(secs => :delay), enqueued_at = now(), "
            "error_kind = :kind, error_message = :msg" + _ADD_USAGE + _GUARD
        ),
        {
            "id": job.id,
            "attempt": job.attempt,
            "delay": float(delay_seconds),
            "kind": error_kind,
            "msg": error_message[:MAX_ERROR_MESSAGE],
            **(usage or Usage()).params(),
        },
    )
    return result.rowcount == 1


def fail_job(
    conn: Conn,
    job: ClaimedJob,
    *,
    error_kind: str,
    error_message: str,
    usage: Usage | None = None,
    status: JobStatus = JobStatus.FAILED,
) -> bool:
    """Finish without a result: failed, or skipped (not run on purpose)."""
    result = conn.execute(
        text(
            "UPDATE prompt_jobs SET status = :status, finished_at = now(), updated_at = now(), "
            "lease_expires_at = NULL, error_kind = :kind, error_message = :msg, "
            + _DURATION
            + _ADD_USAGE
            + _GUARD
        ),
        {
            "id": job.id,
            "attempt": job.attempt,
            "kind": error_kind,
            "msg": error_message[:MAX_ERROR_MESSAGE],
            "status": str(status),
            **(usage or Usage()).params(),
        },
    )
    return result.rowcount == 1


def fail_exhausted(conn: Conn, job_id: uuid.UUID) -> bool:
    """A job whose last attempt's worker died (lease expired, no attempt left): failed, since
    every attempt really started. False: not in that state."""
    result = conn.execute(
        text(
            "UPDATE prompt_jobs SET status = 'failed', finished_at = now(), updated_at = now(), "
            "lease_expires_at = NULL, error_kind = 'attempts_exhausted', "
            "error_message = 'gave up after ' || attempt_count || ' attempts: the worker of the "
            "last one stopped without an outcome (lease expired)' "
            "WHERE id = :id AND status = 'processing' AND lease_expires_at < now() "
            "AND attempt_count >= max_attempts"
        ),
        {"id": job_id},
    )
    return result.rowcount == 1


def backoff_seconds(
    attempt: int, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0, ceiling)


def retry_delay(attempt: int, base: float, cap: float, retry_after: float | None) -> float:
    """The provider's Retry-After wins when it asks for longer than the jittered backoff."""
    delay = backoff_seconds(attempt, base, cap)
    if retry_after is not None:
        delay = max(delay, min(float(retry_after), 43200.0))
    return delay


TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SKIPPED}
