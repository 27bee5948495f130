"""GET /dashboard: a read-only page served by the status function.

The page (HTML, script, style) is a static shell holding no data, so it is the one thing
served without a token: it asks for the token in a form, keeps it in sessionStorage (gone
when the tab closes; never in a URL, so never in an access log) and sends it as
`Authorization: Bearer` on every data request below, each of which needs it like any route.
A strict Content-Security-Policy allows only this origin's script: no inline code, no CDN.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.openapi.params import Query
from sqlalchemy import Engine

from promptrun import dashboard, operator, visibility
from promptrun.api.visibility_routes import (
    BrandQuery,
    FromQuery,
    PromptQuery,
    ToQuery,
)
from promptrun.dashboard.svg import trend_chart

STATIC = {
    "/dashboard": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/dashboard/app.css": ("app.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_public(path: str) -> bool:
    """Only the static shell is served without a token."""
    return path in STATIC


@cache
def _static(name: str) -> str:
    return resources.files("promptrun.dashboard").joinpath("static", name).read_text("utf-8")


def register(
    app: APIGatewayRestResolver, engine_factory: Callable[[], Engine], responses: dict[int, Any]
) -> None:
    def static(path: str) -> Response[str]:
        name, ctype = STATIC[path]
        return Response(
            status_code=200, content_type=ctype, body=_static(name), headers=SECURITY_HEADERS
        )

    @app.get("/dashboard", include_in_schema=False)
    def page() -> Response[str]:
        return static("/dashboard")

    @app.get("/dashboard/app.js", include_in_schema=False)
    def script() -> Response[str]:
        return static("/dashboard/app.js")

    @app.get("/dashboard/app.css", include_in_schema=False)
    def style() -> Response[str]:
        return static("/dashboard/app.css")

    @app.get(
        "/dashboard/overview",
        responses=responses,
        summary="recent batches per model, latency, tokens, cost, failures by kind",
    )
    def overview(
        batches: Annotated[int, Query(ge=1, le=50, description="recent batches, 1-50")] = 10,
    ) -> dashboard.Overview:
        return dashboard.overview(engine_factory(), batches)

    @app.get(
        "/dashboard/answers",
        responses=responses,
        summary="a prompt's answers in a batch, cut into segments with mentions marked",
    )
    def answers(
        batch_key: Annotated[str, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")],
        prompt: Annotated[str, Query(pattern=r"^[a-z0-9][a-z0-9._-]{0,199}$")],
    ) -> dashboard.AnswerList:
        operator.check_filters(engine_factory(), prompt=prompt)
        return dashboard.answers(engine_factory(), batch_key, prompt)

    @app.get(
        "/dashboard/charts/visibility.svg",
        responses=responses,
        summary="an SVG chart of a brand's mention rate or share of voice per model",
    )
    def chart(
        brand: BrandQuery = None,
        metric: Annotated[
            Literal["mention_rate", "share_of_voice"], Query(description="what to plot")
        ] = "mention_rate",
        prompt: PromptQuery = None,
        date_from: FromQuery = None,
        date_to: ToQuery = None,
    ) -> Response[str]:
        s = visibility.Slice(prompt=prompt, date_from=date_from, date_to=date_to)
        engine = engine_factory()
        if brand is None:
            with engine.connect() as conn:
                tracked = visibility.brand_rows(conn)
            if not tracked:
                raise visibility.InvalidVisibilityQuery(
                    "brand", "no brands tracked: add a brands section to the catalogue"
                )
            brand = tracked[0]["slug"]
        report = visibility.trends(engine, s, brand=brand, split="model")
        return Response(
            status_code=200,
            content_type="image/svg+xml; charset=utf-8",
            body=trend_chart(report, brand, metric),
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )
