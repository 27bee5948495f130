"""One attempt's model calls and what they leave behind: the answer, the extraction, the
response and mentions stored with the job marked succeeded, in one transaction."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from promptrun import jobs, limits
from promptrun.db.sql import Conn, Database, text
from promptrun.extraction import ExtractionResult, NormalizedEntity, normalize_entities
from promptrun.jobs import ClaimedJob, ModelRef
from promptrun.providers import Completion, ErrorKind, ModelCall, Provider, ProviderError
from promptrun.settings import Settings

# Seconds kept back from the Lambda's remaining time, to write the outcome after a timeout.
SAFETY_MARGIN = 10.0
DEFAULT_CALL_TIMEOUT = 120.0
MIN_CALL_SECONDS = 2.0
MILLION = Decimal(1_000_000)
# An extraction refused by the provider's rate limiter is retried in the attempt this often,
# when its Retry-After is this short (seconds).
EXTRACTION_RATE_LIMIT_TRIES = 4
EXTRACTION_WAIT_MAX = 10.0
EXTRACTION_MIN_WAIT = 0.5

ProviderFactory = Callable[[str, Settings], Provider]


class StaleAttempt(Exception):
    """A newer attempt owns the job: this one's result is discarded."""


def call_cost(model: ModelRef, input_tokens: int, output_tokens: int) -> Decimal:
    """USD from the catalogue's prices per million tokens."""
    return (
        Decimal(input_tokens) * model.price_input_per_mtok
        + Decimal(output_tokens) * model.price_output_per_mtok
    ) / MILLION


def add_billed(spent: jobs.Usage, model: ModelRef, err: ProviderError) -> None:
    """Calls that failed after the provider answered (and billed) them still count."""
    spent.add(
        err.input_tokens, err.output_tokens, call_cost(model, err.input_tokens, err.output_tokens)
    )


def call_timeout(remaining_ms: Callable[[], int] | None, params: dict[str, Any]) -> float:
    wanted = float(params.get("timeout", DEFAULT_CALL_TIMEOUT))
    if remaining_ms is None:
        return wanted
    left = remaining_ms() / 1000 - SAFETY_MARGIN
    if left < MIN_CALL_SECONDS:
        # Too little time for a call: hand the job back rather than be killed mid-call.
        raise ProviderError(ErrorKind.TIMEOUT, f"only {left:.1f}s of Lambda time left for the call")
    return min(wanted, left)


@dataclass
class ModelCaller:
    engine: Database
    settings: Settings
    providers: ProviderFactory

    def _call(
        self, model: ModelRef, job: ClaimedJob, remaining_ms: Callable[[], int] | None, seed: str
    ) -> ModelCall:
        return ModelCall(
            provider_model=model.provider_model,
            base_url=model.base_url,
            params=dict(model.params),
            timeout_seconds=call_timeout(remaining_ms, model.params),
            attempt=job.attempt,
            seed=seed,
        )

    def call_and_store(
        self,
        job: ClaimedJob,
        remaining_ms: Callable[[], int] | None,
        spent: jobs.Usage,
        lease: limits.Lease | None,
    ) -> tuple[int, int]:
        """Answer, extract, store and complete; (entities, latency ms). Raises ProviderError
        (spent holds what the failed calls billed) or StaleAttempt."""
        answer = self.call(job, remaining_ms, spent)
        self.finish(job, answer, spent, lease)
        return len(answer.entities), answer.latency_ms

    def finish(
        self, job: ClaimedJob, answer: Answer, spent: jobs.Usage, lease: limits.Lease | None
    ) -> None:
        """Store the answer and complete the job, one transaction. Raises StaleAttempt."""
        with self.engine.begin() as conn:
            store(conn, job, answer)
            if not jobs.complete_job(conn, job, spent):
                # Raising rolls back the response and mentions written above.
                raise StaleAttempt()
            limits.release(
                conn,
                lease,
                tokens_used=spent.input_tokens + spent.output_tokens,
                cost_usd=spent.cost_usd,
                succeeded=answer.throttled is None,
                throttled_for=answer.throttled,
                quota_wait=answer.quota_wait,
            )

    def call(
        self, job: ClaimedJob, remaining_ms: Callable[[], int] | None, spent: jobs.Usage
    ) -> Answer:
        """The answer and its extraction, nothing stored. Raises ProviderError (spent holds
        what the failed calls billed)."""
        seed = f"{job.batch_key}:{job.run_index}"
        started = time.monotonic()
        try:
            completion = self.providers(job.model.provider, self.settings).answer(
                self._call(job.model, job, remaining_ms, seed), job.prompt_text, job.system_text
            )
        except ProviderError as err:
            add_billed(spent, job.model, err)
            raise
        latency_ms = int((time.monotonic() - started) * 1000)
        spent.add(
            completion.input_tokens,
            completion.output_tokens,
            call_cost(job.model, completion.input_tokens, completion.output_tokens),
        )
        extractor = job.extraction_model
        throttled: float | None = None
        for tries_left in range(EXTRACTION_RATE_LIMIT_TRIES - 1, -1, -1):
            try:
                extraction = self.providers(extractor.provider, self.settings).extract(
                    self._call(extractor, job, remaining_ms, seed), completion.text
                )
                break
            except ProviderError as err:
                add_billed(spent, extractor, err)
                wait = max(err.retry_after or 0.0, EXTRACTION_MIN_WAIT)
                if err.kind != ErrorKind.RATE_LIMIT or not tries_left or wait > EXTRACTION_WAIT_MAX:
                    raise
                # The answer is paid for: wait out the rate limit rather than redo it later.
                throttled = wait
                time.sleep(wait)
        spent.add(
            extraction.input_tokens,
            extraction.output_tokens,
            call_cost(extractor, extraction.input_tokens, extraction.output_tokens),
        )
        try:
            result = ExtractionResult(entities=extraction.entities)
        except ValidationError as exc:
            raise ProviderError(
                ErrorKind.VALIDATION, f"extraction result invalid: {exc.errors()[0]['msg']}"
            ) from None
        return Answer(
            completion=completion,
            entities=normalize_entities(result.entities),
            latency_ms=latency_ms,
            input_tokens=completion.input_tokens + extraction.input_tokens,
            output_tokens=completion.output_tokens + extraction.output_tokens,
            throttled=throttled,
            quota_wait=completion.quota_wait,
        )


@dataclass(frozen=True)
class Answer:
    """One attempt's calls, done: what is stored with the job."""

    completion: Completion
    entities: list[NormalizedEntity]
    latency_ms: int
    input_tokens: int
    output_tokens: int
    throttled: float | None  # seconds an extraction waited out a 429 (the rate adapts)
    quota_wait: float | None

    def response_row(self, job: ClaimedJob) -> dict[str, Any]:
        return {
            "job_id": str(job.id),
            "answer_text": self.completion.text,
            "structured": {"entities": [e.model_dump() for e in self.entities]},
            "provider_response_id": self.completion.response_id,
            "finish_reason": self.completion.finish_reason,
            "latency_ms": self.latency_ms,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }

    def mention_rows(self, job: ClaimedJob) -> list[dict[str, Any]]:
        job_id = str(job.id)  # once, not through json's `default` for every mention
        return [
            {
                "job_id": job_id,
                "prompt_id": job.prompt_id,
                "model_id": job.model_id,
                "batch_key": job.batch_key,
                "name": e.name,
                "display_name": e.display_name,
                "entity_type": e.type,
                "rank": e.rank,
                "sentiment": e.sentiment,
                "snippet": e.snippet,
            }
            for e in self.entities
        ]


# An answer's rows, from JSON (json_to_recordset): one statement for any number of rows. The
# batch path writes with the same statements, its `only` keeping the jobs it still owned.
INSERT_RESPONSES_SQL = """
    INSERT INTO responses (job_id, answer_text, structured, provider_response_id,
                           finish_reason, latency_ms, input_tokens, output_tokens)
    SELECT r.job_id, r.answer_text, r.structured, r.provider_response_id,
           r.finish_reason, r.latency_ms, r.input_tokens, r.output_tokens
    FROM json_to_recordset(CAST(:responses AS json))
         AS r(job_id uuid, answer_text text, structured jsonb, provider_response_id text,
              finish_reason text, latency_ms int, input_tokens int, output_tokens int)
    {only}
"""
INSERT_MENTIONS_SQL = """
    INSERT INTO entity_mentions (job_id, prompt_id, model_id, batch_key, name, display_name,
                                 entity_type, rank, sentiment, snippet)
    SELECT m.job_id, m.prompt_id, m.model_id, m.batch_key, m.name, m.display_name,
           m.entity_type, m.rank, m.sentiment, m.snippet
    FROM json_to_recordset(CAST(:mentions AS json))
         AS m(job_id uuid, prompt_id bigint, model_id bigint, batch_key text, name text,
              display_name text, entity_type text, rank int, sentiment text, snippet text)
    {only}
"""
_STORE = text(
    f"WITH response AS ({INSERT_RESPONSES_SQL.format(only='')}) "
    f"{INSERT_MENTIONS_SQL.format(only='')}"
)


def store(conn: Conn, job: ClaimedJob, answer: Answer) -> None:
    """The response and its mentions, one statement (the caller completes the job in the same
    transaction)."""
    conn.execute(
        _STORE,
        {
            "responses": json.dumps([answer.response_row(job)], default=str),
            "mentions": json.dumps(answer.mention_rows(job), default=str),
        },
    )
