"""`GET /models` (limits, effective rates, in flight, paused) and `POST /models/{slug}/pause`
and `/resume`. Registered by routes.build_app; the bearer token is checked there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from sqlalchemy import Engine

from promptrun import flow_status
from promptrun.aws import JobQueue
from promptrun.errors import InputError
from promptrun.settings import get_settings
from promptrun.slugs import SLUG_PATTERN

SlugPath = Annotated[str, Path(pattern=SLUG_PATTERN, max_length=200)]
ReasonQuery = Annotated[
    str | None, Query(min_length=1, max_length=500, description="why, shown on waiting jobs")
]


def _queue() -> JobQueue | None:
    url = get_settings().jobs_queue_url
    return JobQueue(url) if url else None


def register(
    app: APIGatewayRestResolver,
    engine_factory: Callable[[], Engine],
    responses: dict[int, Any],
    queue_factory: Callable[[], JobQueue | None] = _queue,
) -> None:
    @app.get("/models", responses=responses, summary="models: limits, rates, in flight, paused")
    def list_models() -> flow_status.ModelList:
        return flow_status.list_models(engine_factory())

    @app.post("/models/<slug>/pause", responses=responses, summary="pause a model: its jobs wait")
    def pause_model(slug: SlugPath, reason: ReasonQuery = None) -> flow_status.PauseResult:
        try:
            return flow_status.pause(engine_factory(), flow_status.Target(model=slug), reason)
        except InputError as exc:
            raise NotFoundError(str(exc)) from None

    @app.post(
        "/models/<slug>/resume",
        responses=responses,
        summary="resume a model: its waiting jobs run now",
    )
    def resume_model(slug: SlugPath) -> flow_status.PauseResult:
        try:
            return flow_status.resume(
                engine_factory(), flow_status.Target(model=slug), queue_factory()
            )
        except InputError as exc:
            raise NotFoundError(str(exc)) from None
