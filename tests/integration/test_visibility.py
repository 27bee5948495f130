"""Brands, visibility metrics, trends, exports and the dashboard's data: real PostgreSQL,
the real resolver, answers with known mentions."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from sqlalchemy import Engine, select, text

from promptrun.api import build_app
from promptrun.catalog import load_catalog, sync_catalog
from promptrun.db.models import BrandAlias, EntityMention
from promptrun.errors import InputError
from promptrun.local.events import api_gateway_event
from promptrun.local.lambda_runtime import LocalContext
from promptrun.visibility import Slice, significant_drops, trends, visibility
from tests.support.results import BRANDS_CATALOG, Answers, day

TOKEN = "visibility-test-token"


@pytest.fixture
def answers(engine: Engine) -> Answers:
    sync_catalog(engine, load_catalog(BRANDS_CATALOG))
    return Answers(engine)


@pytest.fixture
def app(engine: Engine, answers: Answers) -> APIGatewayRestResolver:
    return build_app(lambda: engine, lambda: TOKEN)


def call(
    app: APIGatewayRestResolver, path: str, token: str | None = TOKEN, **query: Any
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    event = api_gateway_event(path, query={k: str(v) for k, v in query.items()}, headers=headers)
    return app.resolve(event, LocalContext("StatusFunction", timeout_seconds=29))  # type: ignore[arg-type]


def header(resp: dict[str, Any], name: str) -> str | None:
    for key, values in {**(resp.get("multiValueHeaders") or {})}.items():
        if key.lower() == name.lower():
            return str(values[0])
    for key, value in (resp.get("headers") or {}).items():
        if key.lower() == name.lower():
            return str(value)
    return None


def two_batches(a: Answers) -> None:
    """Day 0: alpha names Acme in 3 of 4 answers; day 1: in 0 of 4. beta: Globex only."""
    for run, names in enumerate(
        [["Acme CRM", "Globex"], ["Globex", "acme"], ["ACME.com"], ["Initech"]]
    ):
        a.add("2026-01-01", day(0), "alpha", "crm", run, names)
    for run in range(4):
        a.add("2026-01-02", day(1), "alpha", "crm", run, ["Globex", "Initech"])
    for run in range(2):
        a.add("2026-01-01", day(0), "beta", "crm", run, ["Globex Corp", "Hooli"])
    a.add("2026-01-01", day(0), "beta", "crm", 2, [], status="failed", error_kind="server")


# --- brands in the catalogue --------------------------------------------------------------


def test_aliases_are_normalized_like_mentions_and_resync_rematches(
    engine: Engine, answers: Answers
) -> None:
    two_batches(answers)
    with engine.connect() as conn:
        aliases = dict(conn.execute(select(BrandAlias.alias, BrandAlias.spelling)).all())
    assert {"acme", "acme crm", "acme.com", "globex", "globex corp", "initech"} == set(aliases)
    before = visibility(engine, Slice(), brand="initech", group_by="model")
    alpha = next(g for g in before.groups if g.key == "alpha")
    assert alpha.brands[0].answers_mentioning == 5
    # Hooli becomes an alias of Initech: past answers match at once, no mention rewritten.
    catalog = BRANDS_CATALOG.replace(
        "{slug: initech, name: Initech}", "{slug: initech, name: Initech, aliases: [Hooli]}"
    )
    report = sync_catalog(engine, load_catalog(catalog))
    assert "brand initech (aliases)" in report.updated
    after = visibility(engine, Slice(), brand="initech", group_by="model")
    beta = next(g for g in after.groups if g.key == "beta")
    assert beta.brands[0].answers_mentioning == 2
    with engine.connect() as conn:
        assert conn.execute(select(EntityMention.name).where(EntityMention.name == "hooli")).all()
    # Resync unchanged: nothing reported as updated.
    again = sync_catalog(engine, load_catalog(catalog))
    assert not [u for u in again.updated if u.startswith("brand")]


def test_an_alias_naming_two_brands_is_rejected_with_the_entry() -> None:
    bad = BRANDS_CATALOG.replace(
        "{slug: initech, name: Initech}", "{slug: initech, name: Initech, aliases: ['**Globex**']}"
    )
    with pytest.raises(InputError) as err:
        load_catalog(bad)
    assert "brands[2] (initech).aliases: 'globex' already names brand 'globex'" in str(err.value)


def test_a_brand_name_that_normalizes_to_nothing_is_rejected() -> None:
    bad = BRANDS_CATALOG.replace("{slug: initech, name: Initech}", "{slug: initech, name: '**'}")
    with pytest.raises(InputError) as err:
        load_catalog(bad)
    assert "brands[2] (initech).name: empty after normalization ('**')" in str(err.value)


def test_brands_left_out_of_the_file_are_no_longer_tracked(
    engine: Engine, answers: Answers
) -> None:
    catalog = BRANDS_CATALOG.replace("  - {slug: initech, name: Initech}\n", "")
    report = sync_catalog(engine, load_catalog(catalog))
    assert "brand initech (removed)" in report.updated
    with pytest.raises(InputError, match="brand: unknown brand 'initech'"):
        visibility(engine, Slice(), brand="initech")


# --- metrics -----------------------------------------------------------------------------


def test_visibility_by_batch_counts_answers_once_per_brand(
    engine: Engine, answers: Answers
) -> None:
    two_batches(answers)
    report = visibility(engine, Slice(model="alpha"), group_by="batch")
    assert [g.key for g in report.groups] == ["2026-01-01", "2026-01-02"]
    first = report.groups[0]
    assert first.answers == 4
    acme = next(b for b in first.brands if b.brand == "acme")
    # "Acme CRM" and "acme" in one answer count once; ranks 1, 2, 1.
    assert acme.answers_mentioning == 3
    assert acme.mention_rate == 0.75
    assert (acme.mention_rate_low, acme.mention_rate_high) == (0.3006, 0.9544)
    assert acme.average_position == pytest.approx(4 / 3, abs=0.001)
    assert acme.first_position_rate == pytest.approx(0.6667, abs=0.0001)
    # Tracked mentioning answers in batch 1: acme 3, globex 2, initech 1.
    assert acme.share_of_voice == 0.5
    assert sum(acme.sentiment.values()) == 3
    second = next(b for b in report.groups[1].brands if b.brand == "acme")
    assert (second.answers_mentioning, second.mention_rate, second.mention_rate_low) == (
        0,
        0.0,
        0.0,
    )


def test_failed_jobs_are_not_answers_and_filters_apply(engine: Engine, answers: Answers) -> None:
    two_batches(answers)
    report = visibility(engine, Slice(model="beta"), group_by="prompt", brand="globex")
    (group,) = report.groups
    assert group.answers == 2 and group.brands[0].mention_rate == 1.0
    dated = visibility(engine, Slice(date_from=day(1).date()), group_by="batch")
    assert [g.key for g in dated.groups] == ["2026-01-02"]


def test_trends_flag_only_significant_changes(engine: Engine, answers: Answers) -> None:
    two_batches(answers)
    report = trends(engine, Slice(), brand="acme", split="model")
    alpha = next(s for s in report.series if s.model == "alpha")
    assert [p.batch_key for p in alpha.points] == ["2026-01-01", "2026-01-02"]
    change = alpha.points[1].change
    assert change is not None and change.previous_rate == 0.75 and change.rate == 0.0
    # 3 of 4 -> 0 of 4 is a big drop, and still not significant at four answers each.
    assert change.p_value == pytest.approx(0.1429, abs=0.001) and not change.significant
    assert significant_drops(engine, "2026-01-02") == []


def test_a_significant_drop_of_an_own_brand_is_found(engine: Engine, answers: Answers) -> None:
    for run in range(12):
        answers.add("2026-01-01", day(0), "alpha", "crm", run, ["Acme"] if run < 10 else ["Globex"])
        answers.add("2026-01-02", day(1), "alpha", "crm", run, ["Acme"] if run < 2 else ["Globex"])
    drops = significant_drops(engine, "2026-01-02")
    assert {(d.brand, d.model) for d in drops} == {("acme", "alpha"), ("acme", None)}
    d = drops[0]
    assert (d.previous_mention_rate, d.mention_rate, d.previous_batch_key) == (
        0.8333,
        0.1667,
        "2026-01-01",
    )
    assert d.p_value < 0.05 and d.mention_rate_high < d.previous_mention_rate_low


# --- the API -----------------------------------------------------------------------------


def test_visibility_routes_answer_and_name_bad_fields(
    app: APIGatewayRestResolver, answers: Answers
) -> None:
    two_batches(answers)
    resp = call(app, "/visibility", brand="acme", group_by="batch", model="alpha")
    assert resp["statusCode"] == 200, resp["body"]
    body = json.loads(resp["body"])
    assert body["groups"][0]["brands"][0]["mention_rate"] == 0.75
    resp = call(
        app, "/visibility/trends", brand="acme", **{"from": "2026-01-01", "to": "2026-01-02"}
    )
    series = json.loads(resp["body"])["series"]
    assert {s["model"] for s in series} == {"alpha", "beta"}
    for query, field in (
        ({"brand": "nope"}, "brand"),
        ({"group_by": "week"}, "group_by"),
        ({"from": "2026-13-01"}, "from"),
        ({"from": "2026-01-05", "to": "2026-01-01"}, "from"),
    ):
        resp = call(app, "/visibility", **query)
        assert resp["statusCode"] == 422, (query, resp["body"])
        assert json.loads(resp["body"])["detail"][0]["loc"][-1] == field
    # A filter naming no prompt or model is an error, not an empty report.
    for path, query, field in (
        ("/visibility", {"model": "nope"}, "model"),
        ("/visibility", {"prompt": "nope", "group_by": "batch"}, "prompt"),
        ("/visibility/trends", {"model": "nope"}, "model"),
        ("/dashboard/charts/visibility.svg", {"prompt": "nope"}, "prompt"),
        ("/dashboard/answers", {"batch_key": "2026-01-01", "prompt": "nope"}, "prompt"),
        ("/export", {"model": "nope"}, "model"),
        ("/export", {"prompt": "nope", "table": "mentions"}, "prompt"),
    ):
        resp = call(app, path, **query)
        assert resp["statusCode"] == 422, (path, query, resp["body"])
        detail = json.loads(resp["body"])["detail"][0]
        assert detail["loc"] == ["query", field] and "'nope'" in detail["msg"], detail
    assert call(app, "/visibility", token=None)["statusCode"] == 401
    brands = json.loads(call(app, "/brands")["body"])["items"]
    assert [b["slug"] for b in brands] == ["acme", "globex", "initech"]


def test_export_pages_through_every_row_once(app: APIGatewayRestResolver, answers: Answers) -> None:
    two_batches(answers)
    seen: list[dict[str, str]] = []
    cursor = None
    pages = 0
    while True:
        query: dict[str, Any] = {"table": "answers", "format": "csv", "limit": 3}
        if cursor:
            query["cursor"] = cursor
        resp = call(app, "/export", **query)
        assert resp["statusCode"] == 200, resp["body"]
        assert (header(resp, "Content-Type") or "").startswith("text/csv")
        seen += list(csv.DictReader(io.StringIO(resp["body"])))
        pages += 1
        cursor = header(resp, "X-Next-Cursor")
        if not cursor:
            break
    assert pages == 4 and len(seen) == 11
    assert len({r["job_id"] for r in seen}) == 11
    first = next(r for r in seen if r["entities"] == "Acme CRM; Globex")
    assert first["brands"] == "acme; globex" and first["status"] == "succeeded"
    failed = next(r for r in seen if r["status"] == "failed")
    assert failed["error_kind"] == "server" and failed["answer_text"] == ""
    resp = call(app, "/export", table="mentions", format="jsonl", batch_key="2026-01-01")
    lines = [json.loads(x) for x in resp["body"].splitlines()]
    assert len(lines) == 10  # alpha 2+2+1+1, beta 2+2
    assert {x["brand"] for x in lines if x["entity"] == "ACME.com"} == {"acme"}
    assert {x["brand"] for x in lines if x["entity"] == "Hooli"} == {None}
    # A later page is checked too: its filter may name nothing.
    first_page = call(app, "/export", table="answers", limit=3)
    cursor = header(first_page, "X-Next-Cursor")
    assert cursor
    later = call(app, "/export", table="answers", limit=3, cursor=cursor, model="nope")
    assert later["statusCode"] == 422
    assert json.loads(later["body"])["detail"][0]["loc"] == ["query", "model"]
    bad = call(app, "/export", cursor="garbage")
    assert bad["statusCode"] == 422 and json.loads(bad["body"])["detail"][0]["loc"] == [
        "query",
        "cursor",
    ]


def test_dashboard_shell_is_public_and_its_data_is_not(
    app: APIGatewayRestResolver, answers: Answers
) -> None:
    two_batches(answers)
    page = call(app, "/dashboard", token=None)
    assert page["statusCode"] == 200 and '<form id="login-form">' in page["body"]
    assert "script-src 'self'" in (header(page, "Content-Security-Policy") or "")
    assert call(app, "/dashboard/app.js", token=None)["statusCode"] == 200
    for path in ("/dashboard/overview", "/dashboard/charts/visibility.svg"):
        assert call(app, path, token=None)["statusCode"] == 401
        assert call(app, path, token="wrong")["statusCode"] == 401
    overview = json.loads(call(app, "/dashboard/overview")["body"])
    first = overview["batches"][-1]
    assert first["batch_key"] == "2026-01-01"
    beta = next(m for m in first["models"] if m["model"] == "beta")
    assert (beta["planned"], beta["succeeded"], beta["failed"]) == (3, 2, 1)
    assert overview["failures"][0]["error_kind"] == "server"
    svg = call(app, "/dashboard/charts/visibility.svg", brand="acme")
    assert (header(svg, "Content-Type") or "").startswith("image/svg+xml")
    assert svg["body"].count('class="point"') == 3  # alpha on two days, beta on one
    assert 'data-value="0.75"' in svg["body"]
    listed = json.loads(
        call(app, "/dashboard/answers", batch_key="2026-01-01", prompt="crm")["body"]
    )
    marked = [s for item in listed["items"] for s in item["segments"] if s["entity"]]
    assert {"text": "Acme CRM", "entity": "Acme CRM", "brand": "acme", "own": True} in marked


def test_results_routes_are_in_the_openapi_document(app: APIGatewayRestResolver) -> None:
    doc = json.loads(call(app, "/openapi.json")["body"])
    assert {
        "/brands",
        "/visibility",
        "/visibility/trends",
        "/export",
        "/dashboard/overview",
    } <= set(doc["paths"])
    assert "/dashboard" not in doc["paths"]  # the static shell is no API
    params = {p["name"] for p in doc["paths"]["/visibility"]["get"]["parameters"]}
    assert {"brand", "prompt", "model", "from", "to", "group_by"} <= params


# --- rollups of finished batches ----------------------------------------------------------


def _all_reports(engine: Engine) -> list[Any]:
    return [
        visibility(engine, Slice(), group_by=g).model_dump() for g in ("batch", "model", "prompt")
    ] + [
        visibility(engine, Slice(model="alpha"), group_by="batch").model_dump(),
        trends(engine, Slice(), brand="acme").model_dump(),
    ]


def test_rollups_of_finished_batches_give_the_live_figures(
    engine: Engine, answers: Answers, moto_server: Any
) -> None:
    from promptrun import batch_completion

    two_batches(answers)
    live = _all_reports(engine)
    assert batch_completion.complete(engine, ["2026-01-01", "2026-01-02"]) == [
        "2026-01-01",
        "2026-01-02",
    ]
    with engine.connect() as conn:
        rolled = conn.execute(text("SELECT count(*) FROM visibility_rollups")).scalar_one()
    assert rolled > 0
    assert _all_reports(engine) == live
    # Aliases change: the rollups are summed again under the new matching.
    catalog = BRANDS_CATALOG.replace(
        "{slug: initech, name: Initech}", "{slug: initech, name: Initech, aliases: [Hooli]}"
    )
    sync_catalog(engine, load_catalog(catalog))
    beta = next(g for g in visibility(engine, Slice(), brand="initech").groups if g.key == "beta")
    assert beta.brands[0].answers_mentioning == 2


def test_a_reopened_batch_is_summed_again(
    engine: Engine, answers: Answers, moto_server: Any
) -> None:
    from promptrun import batch_completion

    two_batches(answers)
    batch_completion.complete(engine, ["2026-01-02"])
    before = visibility(engine, Slice(batch_keys=("2026-01-02",)), brand="acme", group_by="batch")
    assert before.groups[0].brands[0].answers_mentioning == 0
    # A retried job of the finished batch succeeds later, naming Acme.
    later = datetime.now(UTC) + timedelta(minutes=1)
    answers.add("2026-01-02", day(1), "alpha", "crm", 9, ["Acme"], finished_at=later)
    assert batch_completion.complete(engine, ["2026-01-02"]) == []  # not announced twice
    after = visibility(engine, Slice(batch_keys=("2026-01-02",)), brand="acme", group_by="batch")
    assert (after.groups[0].answers, after.groups[0].brands[0].answers_mentioning) == (5, 1)
