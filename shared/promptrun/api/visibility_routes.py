"""Results routes: GET /brands, /visibility, /visibility/trends, /export (bearer token, as
every route). Registered on the app by api/routes.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import BaseModel
from sqlalchemy import Engine

from promptrun import export, visibility
from promptrun.brands import BRAND_SLUG_PATTERN, brand_rows
from promptrun.schedule import BATCH_KEY_RE

SLUG = r"^[a-z0-9][a-z0-9._-]{0,199}$"

BrandQuery = Annotated[
    str | None, Query(pattern=BRAND_SLUG_PATTERN, max_length=200, description="brand slug")
]
PromptQuery = Annotated[str | None, Query(pattern=SLUG, max_length=200, description="prompt slug")]
ModelQuery = Annotated[str | None, Query(pattern=SLUG, max_length=200, description="model slug")]
FromQuery = Annotated[
    date | None, Query(alias="from", description="first batch period, YYYY-MM-DD (inclusive)")
]
ToQuery = Annotated[
    date | None, Query(alias="to", description="last batch period, YYYY-MM-DD (inclusive)")
]
BatchKeyQuery = Annotated[
    str | None, Query(pattern=BATCH_KEY_RE.pattern, max_length=64, description="batch key")
]


class BrandItem(BaseModel):
    slug: str
    name: str
    own: bool
    aliases: list[str]


class BrandList(BaseModel):
    items: list[BrandItem]


def _invalid(field: str, message: str) -> Response:
    return Response(
        status_code=422,
        content_type=content_types.APPLICATION_JSON,
        body={
            "statusCode": 422,
            "detail": [{"loc": ["query", field], "type": "value_error", "msg": message}],
        },
    )


def register(
    app: APIGatewayRestResolver, engine_factory: Callable[[], Engine], responses: dict[int, Any]
) -> None:
    @app.exception_handler(visibility.InvalidVisibilityQuery)
    def invalid_visibility(exc: visibility.InvalidVisibilityQuery) -> Response:
        return _invalid(exc.field, exc.message)

    @app.exception_handler(export.InvalidExport)
    def invalid_export(exc: export.InvalidExport) -> Response:
        return _invalid(exc.field, exc.message)

    @app.get("/brands", responses=responses, summary="tracked brands and their aliases")
    def brands() -> BrandList:
        with engine_factory().connect() as conn:
            rows = brand_rows(conn)
        return BrandList(items=[BrandItem.model_validate(r) for r in rows])

    @app.get(
        "/visibility",
        responses=responses,
        summary="mention rate (95% Wilson interval), share of voice, position, sentiment",
    )
    def get_visibility(
        brand: BrandQuery = None,
        prompt: PromptQuery = None,
        model: ModelQuery = None,
        date_from: FromQuery = None,
        date_to: ToQuery = None,
        batch_key: BatchKeyQuery = None,
        group_by: Annotated[
            Literal["batch", "model", "prompt"], Query(description="batch, model or prompt")
        ] = "model",
    ) -> visibility.VisibilityReport:
        s = visibility.Slice(
            prompt=prompt,
            model=model,
            date_from=date_from,
            date_to=date_to,
            batch_keys=(batch_key,) if batch_key else None,
        )
        return visibility.visibility(engine_factory(), s, brand=brand, group_by=group_by)

    @app.get(
        "/visibility/trends",
        responses=responses,
        summary="per brand and model, the series across batches, significant changes flagged",
    )
    def get_trends(
        brand: BrandQuery = None,
        prompt: PromptQuery = None,
        model: ModelQuery = None,
        date_from: FromQuery = None,
        date_to: ToQuery = None,
        split: Annotated[
            Literal["model", "none"], Query(description="one series per model, or one in all")
        ] = "model",
    ) -> visibility.TrendReport:
        s = visibility.Slice(prompt=prompt, model=model, date_from=date_from, date_to=date_to)
        return visibility.trends(engine_factory(), s, brand=brand, split=split)

    @app.get(
        "/export",
        responses=responses,
        summary="answers or mentions as CSV or JSON Lines, a page at a time (X-Next-Cursor)",
    )
    def get_export(
        table: Annotated[
            Literal["answers", "mentions"], Query(description="one row per job, or per mention")
        ] = "answers",
        format: Annotated[Literal["csv", "jsonl"], Query(description="csv or jsonl")] = "csv",
        batch_key: BatchKeyQuery = None,
        date_from: FromQuery = None,
        date_to: ToQuery = None,
        prompt: PromptQuery = None,
        model: ModelQuery = None,
        limit: Annotated[int, Query(ge=1, le=2000, description="rows per page, 1-2000")] = 500,
        cursor: Annotated[
            str | None, Query(min_length=1, max_length=400, description="X-Next-Cursor")
        ] = None,
    ) -> Response[str]:
        f = export.ExportFilter(
            batch_key=batch_key, date_from=date_from, date_to=date_to, prompt=prompt, model=model
        )
        p = export.page(engine_factory(), table, f, limit=limit, cursor=cursor)
        if format == "csv":
            body, ctype = export.to_csv(p.rows, table), "text/csv; charset=utf-8"
        else:
            body, ctype = export.to_jsonl(p.rows), "application/x-ndjson; charset=utf-8"
        headers = {"Content-Disposition": f'attachment; filename="promptrun-{table}.{format}"'}
        if p.next_cursor:
            headers["X-Next-Cursor"] = p.next_cursor
        return Response(status_code=200, content_type=ctype, body=body, headers=headers)
