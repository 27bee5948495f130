"""The status API: API Gateway REST proxy events (from events/*.json) resolved by the real
resolver against real PostgreSQL, with rows inserted with known values."""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from sqlalchemy import Connection, Engine, insert, select

from promptrun.api import app_from_settings, build_app
from promptrun.db.engine import get_engine
from promptrun.db.models import EntityMention, Model, Prompt, PromptJob, Response
from promptrun.local.events import api_gateway_event
from promptrun.local.lambda_runtime import LocalContext
from promptrun.queries import encode_cursor
from promptrun.settings import Settings, get_settings
from tests.support.stack import MotoServer

REPO = Path(__file__).resolve().parents[2]
EVENTS = REPO / "events"
TOKEN = "local-dev-token"
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
BATCH = "2026-11-22"

JOB_FIELDS = {
    "id", "prompt", "model", "run_index", "batch_key", "prompt_version", "status",
    "attempt_count", "max_attempts", "error_kind", "error_message", "scheduled_for",
    "next_attempt_at", "started_at", "finished_at", "created_at", "updated_at",
    "duration_ms", "input_tokens", "output_tokens", "cost_usd",
}  # fmt: skip


# --- helpers -----------------------------------------------------------------------------


def status_context() -> LocalContext:
    return LocalContext("StatusFunction", timeout_seconds=29)


def api_event(
    path: str,
    query: dict[str, str] | None = None,
    authorization: str | None = f"Bearer {TOKEN}",
    header_name: str = "Authorization",
) -> dict[str, Any]:
    """A REST proxy event for GET `path`, with this query and Authorization header (if any)."""
    headers = {header_name: authorization} if authorization is not None else {}
    return api_gateway_event(path, query=query, headers=headers)


def call(app: APIGatewayRestResolver, event: dict[str, Any]) -> tuple[int, Any, dict[str, Any]]:
    response = app.resolve(event, status_context())  # type: ignore[arg-type]
    headers = {k.lower(): v for k, v in (response.get("multiValueHeaders") or {}).items()}
    headers.update({k.lower(): v for k, v in (response.get("headers") or {}).items()})
    return response["statusCode"], json.loads(response["body"]), headers


def get(app: APIGatewayRestResolver, path: str, **query: Any) -> tuple[int, Any]:
    status, body, _ = call(app, api_event(path, {k: str(v) for k, v in query.items()}))
    return status, body


def ok(app: APIGatewayRestResolver, path: str, **query: Any) -> Any:
    status, body = get(app, path, **query)
    assert status == 200, body
    return body


class Rows:
    """Inserts jobs, answers and mentions with known values."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.prompts = dict(conn.execute(select(Prompt.slug, Prompt.id)).all())
        self.models = dict(conn.execute(select(Model.slug, Model.id)).all())

    def job(
        self,
        prompt: str = "crm",
        model: str = "alpha",
        run_index: int = 0,
        batch_key: str = BATCH,
        status: str = "queued",
        created_at: datetime = T0,
        **values: Any,
    ) -> uuid.UUID:
        job_id = uuid.uuid4()
        self.conn.execute(
            insert(PromptJob).values(
                id=job_id,
                prompt_id=self.prompts[prompt],
                model_id=self.models[model],
                run_index=run_index,
                batch_key=batch_key,
                prompt_version="v1",
                status=status,
                scheduled_for=T0,
                created_at=created_at,
                updated_at=created_at,
                **values,
            )
        )
        return job_id

    def answer(
        self, job_id: uuid.UUID, text: str, mentions: list[tuple[str, str, str, int]]
    ) -> None:
        """mentions: (display name, normalized name, type, rank)."""
        job = self.conn.execute(select(PromptJob).where(PromptJob.id == job_id)).one()
        self.conn.execute(
            insert(Response).values(
                job_id=job_id,
                answer_text=text,
                structured={
                    "entities": [{"name": n, "type": t, "rank": r} for _, n, t, r in mentions]
                },
                provider_response_id=f"resp-{job_id.hex[:8]}",
                finish_reason="stop",
                latency_ms=120,
                input_tokens=10,
                output_tokens=20,
            )
        )
        for display, name, entity_type, rank in mentions:
            self.conn.execute(
                insert(EntityMention).values(
                    job_id=job_id,
                    prompt_id=job.prompt_id,
                    model_id=job.model_id,
                    batch_key=job.batch_key,
                    name=name,
                    display_name=display,
                    entity_type=entity_type,
                    rank=rank,
                    sentiment="positive" if rank == 1 else None,
                    snippet=f"{display} is good" if rank == 1 else None,
                )
            )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@pytest.fixture
def app(engine: Engine, small_catalog: str) -> APIGatewayRestResolver:
    return build_app(lambda: engine, lambda: TOKEN)


@pytest.fixture
def rows(engine: Engine, small_catalog: str) -> Iterator[Rows]:
    with engine.connect() as conn:
        yield Rows(conn)


@dataclass
class Batch:
    """The batch of test_batch_summary: six jobs with known durations, tokens, cost, errors."""

    ids: dict[str, uuid.UUID]


def make_batch(rows: Rows) -> Batch:
    def done(seconds: int, duration_ms: int) -> dict[str, Any]:
        return {
            "started_at": at(seconds),
            "finished_at": at(seconds) + timedelta(milliseconds=duration_ms),
            "duration_ms": duration_ms,
            "attempt_count": 1,
        }

    ids = {
        "a0": rows.job("crm", "alpha", 0, status="succeeded", **done(5, 100), input_tokens=10,
                       output_tokens=20, cost_usd=Decimal("0.001")),
        "a1": rows.job("crm", "alpha", 1, status="succeeded", **done(6, 200), input_tokens=30,
                       output_tokens=40, cost_usd=Decimal("0.0025")),
        "a2": rows.job("laptops", "alpha", 0, status="failed", **done(7, 300), error_kind="http_400",
                       error_message="bad request"),
        "b0": rows.job("crm", "beta", 0, status="failed", **done(8, 400), error_kind="http_400",
                       error_message="bad request"),
        "b1": rows.job("crm", "beta", 1, status="succeeded", **done(9, 1000), input_tokens=5,
                       output_tokens=5, cost_usd=Decimal("0")),
        "b2": rows.job("crm", "beta", 2, status="queued", started_at=at(4), attempt_count=1,
                       error_kind="rate_limited", error_message="429 Too Many Requests",
                       next_attempt_at=at(60)),
    }  # fmt: skip
    rows.answer(
        ids["a0"],
        "HubSpot, then Salesforce.",
        [("HubSpot", "hubspot", "brand", 1), ("Salesforce", "salesforce", "brand", 2)],
    )
    rows.answer(
        ids["a1"],
        "Salesforce; also Hubspot.",
        [
            ("Salesforce", "salesforce", "brand", 1),
            ("Zoho CRM", "zoho crm", "product", 2),
            ("Hubspot", "hubspot", "brand", 3),
        ],
    )
    rows.answer(
        ids["b1"],
        "Zoho CRM and HubSpot.",
        [("Zoho CRM", "zoho crm", "product", 1), ("HubSpot", "hubspot", "brand", 2)],
    )
    return Batch(ids)


# --- GET /jobs/{job_id} -------------------------------------------------------------------


def test_get_job_returns_every_field_its_answer_and_mentions(
    app: APIGatewayRestResolver, rows: Rows
) -> None:
    batch = make_batch(rows)
    rows.conn.commit()
    job = ok(app, f"/jobs/{batch.ids['a1']}")
    assert set(job) == JOB_FIELDS | {"response", "mentions"}
    assert job["id"] == str(batch.ids["a1"])
    assert (job["prompt"], job["model"], job["run_index"], job["batch_key"]) == (
        "crm",
        "alpha",
        1,
        BATCH,
    )
    assert job["status"] == "succeeded"
    assert (job["duration_ms"], job["input_tokens"], job["output_tokens"]) == (200, 30, 40)
    assert job["cost_usd"] == 0.0025
    assert iso(job["started_at"]) == at(6)
    assert iso(job["finished_at"]) == at(6) + timedelta(milliseconds=200)
    assert iso(job["scheduled_for"]) == T0 and job["next_attempt_at"] is None
    assert job["response"]["answer_text"] == "Salesforce; also Hubspot."
    assert job["response"]["structured"]["entities"][0] == {
        "name": "salesforce",
        "type": "brand",
        "rank": 1,
    }
    assert (job["response"]["finish_reason"], job["response"]["latency_ms"]) == ("stop", 120)
    assert job["response"]["provider_response_id"] == f"resp-{batch.ids['a1'].hex[:8]}"
    assert [(m["display_name"], m["rank"]) for m in job["mentions"]] == [
        ("Salesforce", 1),
        ("Zoho CRM", 2),
        ("Hubspot", 3),
    ]
    assert job["mentions"][0] == {
        "name": "salesforce",
        "display_name": "Salesforce",
        "type": "brand",
        "rank": 1,
        "sentiment": "positive",
        "snippet": "Salesforce is good",
    }


def test_get_job_not_succeeded_has_no_response(app: APIGatewayRestResolver, rows: Rows) -> None:
    batch = make_batch(rows)
    rows.conn.commit()
    job = ok(app, f"/jobs/{batch.ids['b2']}")
    assert job["status"] == "queued" and job["response"] is None and job["mentions"] == []
    assert (job["error_kind"], job["error_message"]) == ("rate_limited", "429 Too Many Requests")
    assert iso(job["next_attempt_at"]) == at(60)
    assert job["cost_usd"] is None and job["finished_at"] is None


def test_get_unknown_job_is_404_json(app: APIGatewayRestResolver) -> None:
    missing = uuid.uuid4()
    status, body = get(app, f"/jobs/{missing}")
    assert status == 404
    assert body == {"statusCode": 404, "message": f"job {missing} not found"}


# --- GET /jobs ---------------------------------------------------------------------------


def test_list_jobs_filters_and_summary_counts(app: APIGatewayRestResolver, rows: Rows) -> None:
    batch = make_batch(rows)
    other = rows.job(
        "crm", "alpha", 0, batch_key="2026-11-21", status="succeeded", created_at=at(-86400)
    )
    rows.conn.commit()

    everything = ok(app, "/jobs")
    assert len(everything["items"]) == 7 and everything["next_cursor"] is None
    assert everything["summary"] == {
        "queued": 1,
        "processing": 0,
        "succeeded": 4,
        "failed": 2,
        "cancelled": 0,
        "skipped": 0,
    }
    assert set(everything["items"][0]) == JOB_FIELDS
    assert everything["items"][-1]["id"] == str(other)  # the oldest comes last

    in_batch = ok(app, "/jobs", batch_key=BATCH)
    assert {j["id"] for j in in_batch["items"]} == {str(i) for i in batch.ids.values()}
    assert in_batch["summary"]["succeeded"] == 3

    beta = ok(app, "/jobs", model="beta")
    assert {j["id"] for j in beta["items"]} == {str(batch.ids[k]) for k in ("b0", "b1", "b2")}
    assert beta["summary"] == {
        "queued": 1,
        "processing": 0,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
        "skipped": 0,
    }

    laptops = ok(app, "/jobs", prompt="laptops")
    assert [j["id"] for j in laptops["items"]] == [str(batch.ids["a2"])]

    failed = ok(app, "/jobs", batch_key=BATCH, status="failed", model="alpha", prompt="laptops")
    assert [j["id"] for j in failed["items"]] == [str(batch.ids["a2"])]
    assert failed["summary"]["failed"] == 1 and sum(failed["summary"].values()) == 1

    nothing = ok(app, "/jobs", prompt="no-such-prompt")
    assert nothing["items"] == [] and sum(nothing["summary"].values()) == 0


def test_cursor_pagination_walks_every_job_once_newest_first(
    app: APIGatewayRestResolver, rows: Rows
) -> None:
    # 23 jobs, three per created_at instant, so the id has to break the ties.
    created = {rows.job("crm", "alpha", i, created_at=at(i // 3)): at(i // 3) for i in range(23)}
    rows.conn.commit()
    expected = [str(i) for i in sorted(created, key=lambda i: (created[i], i), reverse=True)]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query: dict[str, Any] = {"limit": 5}
        if cursor:
            query["cursor"] = cursor
        page = ok(app, "/jobs", **query)
        pages += 1
        assert page["summary"]["queued"] == 23  # the whole filter, on every page
        assert len(page["items"]) == (5 if pages < 5 else 3)
        seen.extend(j["id"] for j in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert pages == 5
    assert seen == expected


def test_last_full_page_has_no_next_cursor(app: APIGatewayRestResolver, rows: Rows) -> None:
    for i in range(4):
        rows.job("crm", "alpha", i, created_at=at(i))
    rows.conn.commit()
    first = ok(app, "/jobs", limit=2)
    second = ok(app, "/jobs", limit=2, cursor=first["next_cursor"])
    assert first["next_cursor"] and second["next_cursor"] is None
    assert [iso(j["created_at"]) for j in first["items"] + second["items"]] == [
        at(3),
        at(2),
        at(1),
        at(0),
    ]


# --- GET /batches, GET /batches/{batch_key} ----------------------------------------------------


def test_batch_summary_numbers(app: APIGatewayRestResolver, rows: Rows) -> None:
    make_batch(rows)
    rows.job("crm", "alpha", 0, batch_key="2026-11-21", status="failed", error_kind="other",
             duration_ms=99999, input_tokens=999, cost_usd=Decimal(9))  # fmt: skip
    rows.conn.commit()
    summary = ok(app, f"/batches/{BATCH}")
    assert summary["batch_key"] == BATCH and summary["total"] == 6
    assert summary["counts"] == {
        "queued": 1,
        "processing": 0,
        "succeeded": 3,
        "failed": 2,
        "cancelled": 0,
        "skipped": 0,
    }
    assert summary["progress"] == pytest.approx(5 / 6)
    # durations 100, 200, 300, 400, 1000 (percentile_cont interpolates)
    assert summary["p50_duration_ms"] == pytest.approx(300)
    assert summary["p95_duration_ms"] == pytest.approx(880)
    assert (summary["input_tokens"], summary["output_tokens"]) == (45, 65)
    assert summary["cost_usd"] == pytest.approx(0.0035)
    assert iso(summary["started_at"]) == at(4)
    assert summary["ended_at"] is None  # one job is still queued
    assert iso(summary["created_at"]) == T0

    alpha, beta = summary["by_model"]
    assert (
        alpha["model"],
        alpha["total"],
        alpha["counts"]["succeeded"],
        alpha["counts"]["failed"],
    ) == ("alpha", 3, 2, 1)
    assert (alpha["p50_duration_ms"], alpha["p95_duration_ms"]) == (
        pytest.approx(200),
        pytest.approx(290),
    )
    assert (alpha["input_tokens"], alpha["output_tokens"], alpha["cost_usd"]) == (
        40,
        60,
        pytest.approx(0.0035),
    )
    assert (beta["model"], beta["total"], beta["counts"]["queued"]) == ("beta", 3, 1)
    assert (beta["p50_duration_ms"], beta["p95_duration_ms"]) == (
        pytest.approx(700),
        pytest.approx(970),
    )
    assert (beta["input_tokens"], beta["output_tokens"], beta["cost_usd"]) == (5, 5, 0)

    assert summary["top_errors"] == [
        {"error_kind": "http_400", "error_message": "bad request", "jobs": 2},
        {"error_kind": "rate_limited", "error_message": "429 Too Many Requests", "jobs": 1},
    ]


def test_batch_summary_ends_when_every_job_finished_and_keeps_top_five_errors(
    app: APIGatewayRestResolver, rows: Rows
) -> None:
    errors = ["timeout"] * 3 + ["http_500"] * 2 + ["a", "b", "c", "d"]
    for i, kind in enumerate(errors):
        rows.job("crm", "alpha", i, batch_key="2026-W47", status="failed", error_kind=kind,
                 error_message=f"{kind} happened", started_at=at(i), finished_at=at(10 + i))  # fmt: skip
    rows.job("crm", "beta", 0, batch_key="2026-W47", status="cancelled")
    rows.conn.commit()
    summary = ok(app, "/batches/2026-W47")
    assert summary["progress"] == 1.0
    assert iso(summary["ended_at"]) == at(10 + len(errors) - 1)
    assert summary["p50_duration_ms"] is None and summary["cost_usd"] == 0
    assert [(e["error_kind"], e["jobs"]) for e in summary["top_errors"]] == [
        ("timeout", 3),
        ("http_500", 2),
        ("a", 1),
        ("b", 1),
        ("c", 1),
    ]


def test_unknown_batch_is_404(app: APIGatewayRestResolver) -> None:
    status, body = get(app, "/batches/2030-01-01")
    assert status == 404 and body["message"] == "batch 2030-01-01 not found"


def test_list_batches_newest_first_with_counts_and_cursor(
    app: APIGatewayRestResolver, rows: Rows
) -> None:
    rows.job("crm", "alpha", 0, batch_key="2026-11-20", status="succeeded", created_at=at(-172800))
    rows.job("crm", "alpha", 1, batch_key="2026-11-20", status="failed", created_at=at(-172800))
    rows.job("crm", "alpha", 0, batch_key="2026-11-21", status="succeeded", created_at=at(-86400),
             finished_at=at(-86000))  # fmt: skip
    make_batch(rows)
    rows.conn.commit()

    listed = ok(app, "/batches")
    assert [b["batch_key"] for b in listed["items"]] == [BATCH, "2026-11-21", "2026-11-20"]
    assert listed["next_cursor"] is None
    newest, middle, oldest = listed["items"]
    assert (newest["total"], newest["counts"]["succeeded"], newest["counts"]["queued"]) == (6, 3, 1)
    assert newest["progress"] == pytest.approx(5 / 6) and newest["ended_at"] is None
    assert (middle["progress"], iso(middle["ended_at"])) == (1.0, at(-86000))
    assert (oldest["total"], oldest["counts"]["failed"], oldest["progress"]) == (2, 1, 1.0)

    walked: list[str] = []
    cursor = None
    while True:
        page = ok(app, "/batches", limit=1, **({"cursor": cursor} if cursor else {}))
        walked.extend(b["batch_key"] for b in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert walked == [BATCH, "2026-11-21", "2026-11-20"]


# --- GET /entities ---------------------------------------------------------------------------


def test_entity_counts(app: APIGatewayRestResolver, rows: Rows) -> None:
    make_batch(rows)
    rows.conn.commit()
    report = ok(app, "/entities", batch_key=BATCH)
    assert report["answers"] == 3
    by_name = {e["name"]: e for e in report["items"]}
    assert [e["name"] for e in report["items"]] == ["hubspot", "salesforce", "zoho crm"]
    assert by_name["hubspot"] == {
        "name": "hubspot",
        "display_name": "HubSpot",
        "type": "brand",
        "mentions": 3,
        "jobs": 3,
        "share": 1.0,
        "average_rank": 2.0,
    }
    assert (by_name["salesforce"]["mentions"], by_name["salesforce"]["average_rank"]) == (2, 1.5)
    assert by_name["salesforce"]["share"] == pytest.approx(2 / 3, abs=1e-4)
    assert (by_name["zoho crm"]["type"], by_name["zoho crm"]["average_rank"]) == ("product", 1.5)

    beta = ok(app, "/entities", model="beta")
    assert beta["answers"] == 1
    assert [(e["name"], e["mentions"], e["average_rank"]) for e in beta["items"]] == [
        ("hubspot", 1, 2.0),
        ("zoho crm", 1, 1.0),
    ]

    alpha_crm = ok(app, "/entities", prompt="crm", model="alpha", limit=1)
    assert alpha_crm["answers"] == 2
    assert [(e["name"], e["mentions"]) for e in alpha_crm["items"]] == [("hubspot", 2)]

    assert ok(app, "/entities", prompt="laptops") == {"answers": 0, "items": []}
    assert ok(app, "/entities", batch_key="2026-11-01") == {"answers": 0, "items": []}


# --- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer wrong-token", f"Bearer {TOKEN}x", f"Basic {TOKEN}",
     f"Token {TOKEN}", TOKEN, "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()],
)  # fmt: skip
def test_requests_without_a_valid_bearer_token_are_401(
    app: APIGatewayRestResolver, authorization: str | None
) -> None:
    status, body, headers = call(app, api_event("/jobs", authorization=authorization))
    assert status == 401
    assert body == {"statusCode": 401, "message": "missing or invalid bearer token"}
    assert "Bearer" in str(headers["www-authenticate"])


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/jobs/64e79de1-75a8-4750-9170-04b7d8cc2564", None),
        ("/jobs", None),
        ("/batches", None),
        (f"/batches/{BATCH}", None),
        ("/entities", None),
        ("/openapi.json", None),
        ("/no-such-path", None),
        # Malformed too: still 401, the validation errors are not for anonymous callers.
        ("/jobs/not-a-uuid", None),
        ("/jobs", {"limit": "0", "status": "bogus"}),
    ],
)
def test_every_path_needs_the_token(
    app: APIGatewayRestResolver, rows: Rows, path: str, query: dict[str, str] | None
) -> None:
    make_batch(rows)
    rows.conn.commit()
    status, body, _ = call(app, api_event(path, query, authorization=None))
    assert status == 401, body
    status, body, _ = call(app, api_event(path, query, authorization="Bearer nope"))
    assert status == 401, body


def test_scheme_and_header_name_are_case_insensitive(app: APIGatewayRestResolver) -> None:
    event = api_event("/batches", authorization=f"bearer {TOKEN}", header_name="authorization")
    status, body, _ = call(app, event)
    assert status == 200 and body == {"items": [], "next_cursor": None}


def test_an_empty_configured_token_lets_nobody_in(engine: Engine, small_catalog: str) -> None:
    app = build_app(lambda: engine, lambda: "")
    for authorization in ("Bearer ", "Bearer x", None):
        status, _, _ = call(app, api_event("/batches", authorization=authorization))
        assert status == 401


def test_token_from_secrets_manager(
    db_url: str, moto_server: MotoServer, small_catalog: str
) -> None:
    secrets = boto3.client("secretsmanager", endpoint_url=moto_server.endpoint)
    arn = secrets.create_secret(
        Name=f"api-token-{uuid.uuid4().hex[:8]}", SecretString="from-the-vault\n"
    )["ARN"]
    settings = Settings(database_url=db_url, api_token_secret_arn=arn)
    app = app_from_settings(settings)
    try:
        assert call(app, api_event("/batches", authorization="Bearer from-the-vault"))[0] == 200
        assert call(app, api_event("/batches", authorization=f"Bearer {TOKEN}"))[0] == 401
    finally:
        get_engine(settings, pool_size=2).dispose()


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "loc"),
    [
        ("/jobs/not-a-uuid", {}, ["path", "job_id"]),
        ("/jobs/1234", {}, ["path", "job_id"]),
        ("/jobs", {"status": "done"}, ["query", "status"]),
        ("/jobs", {"limit": "0"}, ["query", "limit"]),
        ("/jobs", {"limit": "101"}, ["query", "limit"]),
        ("/jobs", {"limit": "ten"}, ["query", "limit"]),
        ("/jobs", {"limit": "1.5"}, ["query", "limit"]),
        ("/jobs", {"limit": ""}, ["query", "limit"]),
        ("/jobs", {"cursor": "not a cursor"}, ["query", "cursor"]),
        ("/jobs", {"cursor": "!!!!"}, ["query", "cursor"]),
        ("/jobs", {"cursor": base64.urlsafe_b64encode(b"job|yesterday|x").decode()}, ["query", "cursor"]),
        ("/jobs", {"cursor": base64.urlsafe_b64encode(b"job|2026-11-22T10:00:00+00:00|nope").decode()},
         ["query", "cursor"]),
        ("/jobs", {"cursor": base64.urlsafe_b64encode(b"job|2026-11-22T10:00:00|" + str(uuid.uuid4()).encode())
                   .decode()}, ["query", "cursor"]),
        ("/jobs", {"cursor": base64.urlsafe_b64encode(b"\xff\xfe").decode()}, ["query", "cursor"]),
        ("/jobs", {"cursor": encode_cursor("batch", T0, BATCH)}, ["query", "cursor"]),
        ("/jobs", {"cursor": "x" * 500}, ["query", "cursor"]),
        ("/jobs", {"batch_key": "bad key!"}, ["query", "batch_key"]),
        ("/jobs", {"prompt": "crm\x00"}, ["query", "prompt"]),
        ("/jobs", {"model": "Alpha"}, ["query", "model"]),
        ("/batches", {"limit": "-1"}, ["query", "limit"]),
        ("/batches", {"cursor": encode_cursor("job", T0, str(uuid.uuid4()))}, ["query", "cursor"]),
        ("/batches/bad!key", {}, ["path", "batch_key"]),
        ("/entities", {"limit": "0"}, ["query", "limit"]),
        ("/entities", {"batch_key": "x" * 65}, ["query", "batch_key"]),
    ],
)  # fmt: skip
def test_bad_input_is_422_naming_the_field(
    app: APIGatewayRestResolver, rows: Rows, path: str, query: dict[str, str], loc: list[str]
) -> None:
    make_batch(rows)
    rows.conn.commit()
    status, body, _ = call(app, api_event(path, query))
    assert status == 422, body
    assert body["statusCode"] == 422
    assert loc in [d["loc"] for d in body["detail"]]
    assert all(d["msg"] and d["type"] for d in body["detail"])


def test_unknown_path_is_404_json(app: APIGatewayRestResolver) -> None:
    status, body = get(app, "/jobz")
    assert status == 404 and body == {"statusCode": 404, "message": "Not found"}


def test_server_faults_are_a_json_500_that_leaks_nothing(
    engine: Engine, small_catalog: str
) -> None:
    def no_database() -> Engine:
        raise RuntimeError("connection refused: postgresql://secret@db")

    def no_secret() -> str:
        raise RuntimeError("secrets manager unreachable")

    internal = {"statusCode": 500, "message": "internal error"}
    no_db = build_app(no_database, lambda: TOKEN)
    assert call(no_db, api_event("/batches"))[:2] == (500, internal)
    assert (
        call(no_db, api_event("/jobs", {"limit": "0"}))[0] == 422
    )  # input checked before the database
    no_token = build_app(lambda: engine, no_secret)
    assert call(no_token, api_event("/batches"))[:2] == (500, internal)
    assert call(no_token, api_event("/jobs", {"limit": "0"}))[:2] == (500, internal)


# --- OpenAPI ---------------------------------------------------------------------------------


def test_openapi_document(app: APIGatewayRestResolver) -> None:
    status, doc, headers = call(app, api_event("/openapi.json"))
    assert status == 200
    assert "application/json" in str(headers["content-type"])
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] == "promptrun status API"
    assert {
        "/jobs/{job_id}",
        "/jobs",
        "/batches",
        "/batches/{batch_key}",
        "/entities",
    } <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    params = {p["name"]: p for p in doc["paths"]["/jobs"]["get"]["parameters"]}
    assert set(params) == {"batch_key", "prompt", "model", "status", "limit", "cursor"}
    limit = params["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, 50)
    assert "401" in doc["paths"]["/jobs/{job_id}"]["get"]["responses"]
    assert "404" in doc["paths"]["/jobs/{job_id}"]["get"]["responses"]
    assert "skipped" in json.dumps(doc["components"]["schemas"])


# --- the Lambda handler itself, with the committed events -----------------------------------------


@pytest.fixture
def status_handler(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("API_TOKEN", TOKEN)
    monkeypatch.delenv("API_TOKEN_SECRET_ARN", raising=False)
    monkeypatch.delenv("DATABASE_SECRET_ARN", raising=False)
    get_settings.cache_clear()
    spec = importlib.util.spec_from_file_location(
        f"status_app_{uuid.uuid4().hex[:8]}", REPO / "functions" / "status" / "app.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module.lambda_handler
    get_engine(module.settings, pool_size=2).dispose()
    get_settings.cache_clear()


def test_lambda_handler_with_the_committed_events(status_handler: Any, rows: Rows) -> None:
    batch = make_batch(rows)
    rows.conn.commit()

    event = json.loads((EVENTS / "apigw_get_batch.json").read_text())
    response = status_handler(event, status_context())
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["total"] == 6

    event = json.loads((EVENTS / "apigw_list_jobs.json").read_text())
    assert event["queryStringParameters"]["status"] == "failed"
    response = status_handler(event, status_context())
    body = json.loads(response["body"])
    assert response["statusCode"] == 200
    assert {j["id"] for j in body["items"]} == {str(batch.ids["a2"]), str(batch.ids["b0"])}

    anonymous = copy.deepcopy(event)
    for field in ("headers", "multiValueHeaders"):
        del anonymous[field]["Authorization"]
    assert status_handler(anonymous, status_context())["statusCode"] == 401
