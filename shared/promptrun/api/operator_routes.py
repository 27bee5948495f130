"""Operators' writes in the status API (same bearer token): retry and cancel batches and jobs,
and the prompts whose newest batch ran an older version."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestUnsupportedContentType
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from promptrun import operator
from promptrun.observability import logger
from promptrun.schedule import BATCH_KEY_RE
from promptrun.slugs import SLUG_PATTERN

Sender = operator.Sender | None


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: list[Literal["failed", "cancelled", "skipped"]] | None = Field(
        default=None, max_length=3, description="statuses to retry (default: all three)"
    )
    model: str | None = Field(default=None, pattern=SLUG_PATTERN, max_length=200)
    prompt: str | None = Field(default=None, pattern=SLUG_PATTERN, max_length=200)


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, pattern=SLUG_PATTERN, max_length=200)
    prompt: str | None = Field(default=None, pattern=SLUG_PATTERN, max_length=200)


BatchKeyPath = Annotated[str, Path(pattern=BATCH_KEY_RE.pattern, max_length=64)]


def register(
    app: APIGatewayRestResolver,
    engine_factory: Callable[[], Any],
    sender: Callable[[], Sender],
    errors: dict[int, Any],
    fresh_attempts: int = 5,
) -> None:
    """Add the operator routes to the status API's resolver; a retry gives each job
    `fresh_attempts` more attempts, as the CLI's does (MAX_ATTEMPTS)."""

    def _error(status: int, message: str) -> Response:
        return Response(
            status_code=status,
            content_type=content_types.APPLICATION_JSON,
            body={"statusCode": status, "message": message},
        )

    @app.exception_handler(operator.NotFound)
    def not_found(exc: operator.NotFound) -> Response:
        return _error(404, str(exc))

    @app.exception_handler(RequestUnsupportedContentType)
    def unsupported_body(exc: RequestUnsupportedContentType) -> Response:
        return _error(415, "the request body must be JSON (Content-Type: application/json)")

    # Powertools' body parsing raises a bare ValueError for a malformed multipart header.
    @app.exception_handler(ValueError)
    def unparsable_body(exc: ValueError) -> Response:
        event = app.current_event
        content_type = (event.headers or {}).get("Content-Type") or (event.headers or {}).get(
            "content-type", ""
        )
        if event.body and "json" not in str(content_type).lower():
            return _error(415, "the request body must be JSON (Content-Type: application/json)")
        logger.exception("status API request failed")
        return _error(500, "internal error")

    @app.exception_handler(operator.Conflict)
    def conflict(exc: operator.Conflict) -> Response:
        return _error(409, str(exc))

    with_body = {
        **errors,
        415: {**errors[404], "description": "a request body that is not JSON"},
    }
    with_conflict = {
        **errors,
        409: {**errors[404], "description": "the job is in a state the action does not apply to"},
    }

    @app.post(
        "/batches/<batch_key>/retry",
        responses=with_body,
        summary="retry a batch's failed, cancelled or skipped jobs (fresh attempts, sent now)",
    )
    def retry_batch(
        batch_key: BatchKeyPath, body: Annotated[RetryRequest | None, Body()] = None
    ) -> operator.RetryResult:
        req = body or RetryRequest()
        return operator.retry_batch(
            engine_factory(),
            sender(),
            batch_key,
            statuses=req.status,
            model=req.model,
            prompt=req.prompt,
            fresh_attempts=fresh_attempts,
        )

    @app.post(
        "/batches/<batch_key>/cancel",
        responses=with_body,
        summary="cancel a batch's queued jobs; running ones finish their call, then stop",
    )
    def cancel_batch(
        batch_key: BatchKeyPath, body: Annotated[CancelRequest | None, Body()] = None
    ) -> operator.CancelResult:
        req = body or CancelRequest()
        return operator.cancel_batch(
            engine_factory(), batch_key, model=req.model, prompt=req.prompt
        )

    @app.post("/jobs/<job_id>/retry", responses=with_conflict, summary="retry one finished job")
    def retry_job(job_id: uuid.UUID) -> operator.RetryResult:
        return operator.retry_job(engine_factory(), sender(), job_id, fresh_attempts)

    @app.post(
        "/jobs/<job_id>/cancel",
        responses=with_conflict,
        summary="cancel one job (a running one finishes its call first)",
    )
    def cancel_job(job_id: uuid.UUID) -> operator.CancelResult:
        return operator.cancel_job(engine_factory(), job_id)

    @app.get(
        "/prompts",
        responses=errors,
        summary="prompts with their version, and whether their newest batch needs a re-run",
    )
    def prompts(
        needs_rerun: Annotated[
            bool | None, Query(description="only prompts that need (true) or not (false) a re-run")
        ] = None,
    ) -> list[operator.PromptState]:
        states = operator.prompt_states(engine_factory())
        if needs_rerun is not None:
            states = [s for s in states if s.needs_rerun == needs_rerun]
        return states
