"""The status API: Powertools REST resolver, typed parameters, bearer-token auth.

Every path, /openapi.json included, needs `Authorization: Bearer <token>`; without a valid
one the answer is 401, even when the request is also malformed. Errors are JSON:

    401/404/500  {"statusCode": n, "message": "..."}
    422          {"statusCode": 422, "detail": [{"loc": ["query", "limit"], "type": "...", "msg": "..."}]}
"""

import hmac
import uuid
from collections.abc import Callable
from functools import cache
from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, ServiceError
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from promptrun import __version__, operator, queries
from promptrun.api import dashboard_routes, models_routes, visibility_routes
from promptrun.aws import get_secret_string
from promptrun.db.engine import get_engine
from promptrun.db.enums import JobStatus
from promptrun.observability import logger
from promptrun.schedule import BATCH_KEY_RE
from promptrun.settings import Settings
from promptrun.slugs import SLUG_PATTERN

EngineFactory = Callable[[], Engine]
TokenProvider = Callable[[], str]

BatchKeyQuery = Annotated[
    str | None,
    Query(pattern=BATCH_KEY_RE.pattern, max_length=64, description="batch key, e.g. 2026-11-22"),
]
PromptQuery = Annotated[
    str | None, Query(pattern=SLUG_PATTERN, max_length=200, description="prompt slug")
]
ModelQuery = Annotated[
    str | None, Query(pattern=SLUG_PATTERN, max_length=200, description="model slug")
]
StatusQuery = Annotated[JobStatus | None, Query(description="one job status")]
LimitQuery = Annotated[int, Query(ge=1, le=queries.MAX_LIMIT, description="page size, 1-100")]
CursorQuery = Annotated[
    str | None,
    Query(min_length=1, max_length=400, description="`next_cursor` from the previous page"),
]
BatchKeyPath = Annotated[str, Path(pattern=BATCH_KEY_RE.pattern, max_length=64)]


class ErrorBody(BaseModel):
    statusCode: int
    message: str


class InvalidField(BaseModel):
    loc: list[str | int] = Field(description='where, e.g. ["query", "limit"]')
    type: str
    msg: str


class ValidationErrorBody(BaseModel):
    statusCode: int
    detail: list[InvalidField]


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"model": model}}


# Documented per route; 200 without content takes the route's return type.
_ERRORS: dict[int, Any] = {
    200: {"description": "OK"},
    401: {"description": "missing or invalid bearer token", "content": _json(ErrorBody)},
    422: {
        "description": "invalid input; `detail[].loc` names the field",
        "content": _json(ValidationErrorBody),
    },
}
_ERRORS_404: dict[int, Any] = {
    **_ERRORS,
    404: {"description": "not found", "content": _json(ErrorBody)},
}


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=int(status),
        content_type=content_types.APPLICATION_JSON,
        body={"statusCode": int(status), "message": message},
        headers=headers,
    )


def _invalid(detail: list[dict[str, Any]]) -> Response:
    return Response(
        status_code=422,
        content_type=content_types.APPLICATION_JSON,
        body={"statusCode": 422, "detail": detail},
    )


def _unauthorized() -> Response:
    return _json_error(
        HTTPStatus.UNAUTHORIZED,
        "missing or invalid bearer token",
        headers={"WWW-Authenticate": 'Bearer realm="promptrun"'},
    )


def presented_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def build_app(
    engine_factory: EngineFactory,
    token_provider: TokenProvider,
    sender: Callable[[], Any] = lambda: None,
    fresh_attempts: int = 5,
) -> APIGatewayRestResolver:
    """The resolver with its routes. The engine and the token are fetched on use, not here.
    `sender` gives the SQS sender for retried jobs (None: the next fan-out sends them);
    a retried job gets `fresh_attempts` more attempts (MAX_ATTEMPTS)."""
    app = APIGatewayRestResolver(enable_validation=True)
    app.configure_openapi(
        title="promptrun status API",
        version=__version__,
        description="Jobs, batches, summaries and entity counts of promptrun runs.",
        security=[{"bearerAuth": []}],  # the scheme itself: see openapi_document
    )

    def authorized() -> bool:
        token = presented_token(app.current_event.headers.get("Authorization"))
        if token is None:
            return False
        expected = token_provider()
        if not expected:  # an empty configured token must never let anyone in
            logger.error("the API token is empty; every request is refused")
            return False
        return hmac.compare_digest(token.encode(), expected.encode())

    def require_bearer_token(
        app: APIGatewayRestResolver, next_middleware: NextMiddleware
    ) -> Response:
        if not (dashboard_routes.is_public(app.current_event.path) or authorized()):
            return _unauthorized()
        return next_middleware(app)

    app.use(middlewares=[require_bearer_token])

    @app.exception_handler(Exception)
    def unexpected(exc: Exception) -> Response:
        logger.exception("status API request failed")
        return _json_error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

    # Powertools validates requests before any middleware runs; answer 401 first there too,
    # so an anonymous caller learns nothing from the validation errors.
    @app.exception_handler(RequestValidationError)
    def validation_error(exc: RequestValidationError) -> Response:
        try:
            allowed = authorized()
        except Exception:  # the token could not be fetched: a server fault, not the caller's
            return unexpected(exc)
        if not allowed:
            return _unauthorized()
        detail = [
            {"loc": list(e["loc"]), "type": e["type"], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return _invalid(detail)

    @app.exception_handler(queries.InvalidQuery)
    def invalid_query(exc: queries.InvalidQuery) -> Response:
        return _invalid([{"loc": ["query", exc.field], "type": "value_error", "msg": exc.message}])

    @app.exception_handler(ServiceError)
    def service_error(exc: ServiceError) -> Response:
        return _json_error(exc.status_code, str(exc.msg))

    @app.get(
        "/jobs/<job_id>", responses=_ERRORS_404, summary="one job, with its answer and mentions"
    )
    def get_job(job_id: uuid.UUID) -> queries.JobDetail:
        job = queries.get_job(engine_factory(), job_id)
        if job is None:
            raise NotFoundError(f"job {job_id} not found")
        return job

    @app.get("/jobs", responses=_ERRORS, summary="jobs, newest first, with counts per status")
    def list_jobs(
        batch_key: BatchKeyQuery = None,
        prompt: PromptQuery = None,
        model: ModelQuery = None,
        status: StatusQuery = None,
        limit: LimitQuery = queries.DEFAULT_LIMIT,
        cursor: CursorQuery = None,
    ) -> queries.JobPage:
        operator.check_filters(engine_factory(), prompt=prompt, model=model)
        return queries.list_jobs(
            engine_factory(),
            batch_key=batch_key,
            prompt=prompt,
            model=model,
            status=status.value if status else None,
            limit=limit,
            cursor=cursor,
        )

    @app.get("/batches", responses=_ERRORS, summary="batches, newest first, with counts")
    def list_batches(
        limit: LimitQuery = queries.DEFAULT_LIMIT, cursor: CursorQuery = None
    ) -> queries.BatchPage:
        return queries.list_batches(engine_factory(), limit=limit, cursor=cursor)

    @app.get(
        "/batches/<batch_key>",
        responses=_ERRORS_404,
        summary="a batch's progress, latency, cost, errors",
    )
    def get_batch(batch_key: BatchKeyPath) -> queries.BatchSummary:
        summary = queries.batch_summary(engine_factory(), batch_key)
        if summary is None:
            raise NotFoundError(f"batch {batch_key} not found")
        return summary

    @app.get("/entities", responses=_ERRORS, summary="mention counts per entity")
    def entities(
        batch_key: BatchKeyQuery = None,
        prompt: PromptQuery = None,
        model: ModelQuery = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="entities, 1-1000")] = 100,
    ) -> queries.EntityReport:
        operator.check_filters(engine_factory(), prompt=prompt, model=model)
        return queries.entity_counts(
            engine_factory(), batch_key=batch_key, prompt=prompt, model=model, limit=limit
        )

    from promptrun.api import operator_routes  # it uses this module's error shapes

    operator_routes.register(app, engine_factory, sender, _ERRORS_404, fresh_attempts)
    models_routes.register(app, engine_factory, _ERRORS_404)
    visibility_routes.register(app, engine_factory, _ERRORS)
    dashboard_routes.register(app, engine_factory, _ERRORS)

    @cache
    def openapi_document() -> str:
        # Powertools' OpenAPI models cost 0.1-0.2 s to import: paid by the first /openapi.json,
        # not by every cold start (requests never need them).
        from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer

        return app.get_openapi_json_schema(security_schemes={"bearerAuth": HTTPBearer()})

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> Response[str]:
        return Response(
            status_code=200, content_type=content_types.APPLICATION_JSON, body=openapi_document()
        )

    return app


def app_from_settings(settings: Settings) -> APIGatewayRestResolver:
    """The Lambda's app: the engine made on first use; the token from API_TOKEN, or from
    API_TOKEN_SECRET_ARN through Powertools' cache (refreshed every SECRET_MAX_AGE_SECONDS)."""

    def engine() -> Engine:
        return get_engine(settings, pool_size=1)  # one request at a time per instance

    def token() -> str:
        if settings.api_token:
            return settings.api_token
        return get_secret_string(
            settings.api_token_secret_arn or "", settings.secret_max_age_seconds
        ).strip()

    def sender() -> Any:
        if not settings.jobs_queue_url:
            return None
        from promptrun.aws import JobQueue

        return JobQueue(settings.jobs_queue_url).send_jobs

    return build_app(engine, token, sender, settings.max_attempts)
