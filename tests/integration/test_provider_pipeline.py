"""The provider path end to end: real PostgreSQL, moto's SQS and Secrets Manager, and the
fake OpenAI / Anthropic HTTP servers reached through the official SDKs (no mocks of our code).

Every model call is counted at the fake server; tokens and cost are checked against the
server's usage numbers and the catalogue's prices.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from sqlalchemy import Engine, text

from promptrun.api import build_app
from promptrun.aws import JobQueue
from promptrun.fanout import FanoutRequest, run_fanout
from promptrun.local.events import api_gateway_event, bearer
from promptrun.local.lambda_runtime import LocalContext
from promptrun.local.poller import LocalPoller
from promptrun.observability import logger as powertools_logger
from promptrun.processor import JobRunner, Outcome, RetryLater
from promptrun.settings import Settings
from tests.conftest import sync, with_settings
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fake_openai import DEFAULT_ANSWER, FakeOpenAI, Received, Reply
from tests.support.sqs import receive_all
from tests.support.stack import MotoServer

REPO = Path(__file__).resolve().parents[2]
AT = datetime(2026, 11, 22, 13, 5, tzinfo=UTC)
BATCH = "2026-11-22"  # the daily batch of AT
OPENAI_KEY = "sk-test-openai-pipeline-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-pipeline-0123456789abcdef"
MILLION = Decimal(1_000_000)
PROMPT = "What are the best CRM tools for a small business?"

# Usage the fake servers report per call: (input tokens, output tokens).
OPENAI_ANSWER = (120, 45)
OPENAI_EXTRACT = (80, 25)
ANTHROPIC_ANSWER = (25, 12)  # FakeAnthropic's defaults
ANTHROPIC_EXTRACT = (30, 15)
# Catalogue prices per million tokens: (input, output).
OPENAI_PRICES = (Decimal("1.5"), Decimal("6.0"))
ANTHROPIC_PRICES = (Decimal("3.0"), Decimal("15.0"))

EXPECTED_MENTIONS = [
    {
        "name": "acme crm",
        "display_name": "Acme CRM",
        "type": "product",
        "rank": 1,
        "sentiment": "positive",
        "snippet": "Acme CRM is great",
    },
    {
        "name": "globex",
        "display_name": "Globex",
        "type": "brand",
        "rank": 2,
        "sentiment": None,
        "snippet": None,
    },
]


def cost(usage: tuple[int, int], prices: tuple[Decimal, Decimal]) -> Decimal:
    return (usage[0] * prices[0] + usage[1] * prices[1]) / MILLION


def total(*usages: tuple[int, int]) -> tuple[int, int]:
    return sum(u[0] for u in usages), sum(u[1] for u in usages)


# --- fake servers ----------------------------------------------------------------------------


class MeteredOpenAI(FakeOpenAI):
    """The fake OpenAI server with distinct usage for answers and extractions, so the sums
    stored on a job show which calls were counted."""

    def answer(self, **kwargs: Any) -> Reply:
        kwargs.setdefault("prompt_tokens", OPENAI_ANSWER[0])
        kwargs.setdefault("completion_tokens", OPENAI_ANSWER[1])
        return self.completion(DEFAULT_ANSWER, **kwargs)

    def extraction(self, data: Any = None, **kwargs: Any) -> Reply:
        kwargs.setdefault("prompt_tokens", OPENAI_EXTRACT[0])
        kwargs.setdefault("completion_tokens", OPENAI_EXTRACT[1])
        return super().extraction(data, **kwargs)

    def default_reply(self, request: Received) -> Reply:
        reply = super().default_reply(request)
        if reply.status != 200:
            return reply
        return self.extraction() if self.is_extraction(request) else self.answer()


def calls_by_kind(server: FakeOpenAI) -> Counter[str]:
    return Counter(
        "extract" if server.is_extraction(r) else "answer" for r in list(server.requests)
    )


def presented_key(request: Received) -> str | None:
    """The key a request carried (Anthropic SDK versions differ in the header they use)."""
    return request.headers.get("x-api-key") or request.headers.get(
        "authorization", ""
    ).removeprefix("Bearer ")


@dataclass
class Fakes:
    openai: MeteredOpenAI
    anthropic: FakeAnthropic

    def of(self, provider: str) -> FakeOpenAI | FakeAnthropic:
        return self.openai if provider == "openai" else self.anthropic


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    with MeteredOpenAI() as oai, FakeAnthropic() as ant:
        yield Fakes(oai, ant)


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return with_settings(settings, provider_keys={"openai": OPENAI_KEY, "anthropic": ANTHROPIC_KEY})


# --- catalogue, fan-out, runner -----------------------------------------------------------


def model_entry(
    fakes: Fakes, provider: str, slug: str | None = None, **extra: Any
) -> dict[str, Any]:
    params = {"api_key_name": provider, "api_key_host": "127.0.0.1", **extra.pop("params", {})}
    prices = OPENAI_PRICES if provider == "openai" else ANTHROPIC_PRICES
    return {
        "slug": slug or provider,
        "provider": provider,
        "model": f"{provider}-fake-1",
        # A custom base_url gets no key unless the model names the key and the host.
        "base_url": fakes.of(provider).base_url,
        "params": params,
        "price_per_mtok": {"input": float(prices[0]), "output": float(prices[1])},
        **extra,
    }


def catalogue(
    engine: Engine,
    models: list[dict[str, Any]],
    runs: int = 1,
    prompt_models: str | list[str] = "all",
    **top: Any,
) -> None:
    doc = {
        **top,
        "models": models,
        "prompts": [
            {
                "slug": "crm",
                "text": PROMPT,
                "schedule": "daily",
                "runs": runs,
                "models": prompt_models,
            }
        ],
    }
    sync(engine, yaml.safe_dump(doc, sort_keys=False))


def fan_out(engine: Engine, settings: Settings) -> None:
    result = run_fanout(
        engine, JobQueue(settings.jobs_queue_url or ""), FanoutRequest(at=AT), settings
    )
    assert result.sent == result.created > 0


def runner(engine: Engine, settings: Settings) -> JobRunner:
    return JobRunner(engine, settings, JobQueue(settings.jobs_queue_url or ""))


def job_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                text("SELECT * FROM prompt_jobs ORDER BY run_index, created_at")
            ).mappings()
        ]


def one_job(engine: Engine) -> dict[str, Any]:
    (row,) = job_rows(engine)
    return row


def body_of(job_id: uuid.UUID) -> str:
    return json.dumps({"job_id": str(job_id)})


def make_due(engine: Engine) -> None:
    """Instead of waiting out the backoff: the queued job is due now."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE prompt_jobs SET next_attempt_at = now() WHERE status = 'queued'"))


def counts(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def first_message(engine: Engine, settings: Settings, sqs: Any) -> dict[str, Any]:
    fan_out(engine, settings)
    (msg,) = receive_all(sqs, settings.jobs_queue_url)
    return msg


def assert_usage(row: dict[str, Any], usage: tuple[int, int], expected_cost: Decimal) -> None:
    assert (row["input_tokens"], row["output_tokens"]) == usage
    assert Decimal(row["cost_usd"]) == pytest.approx(expected_cost, abs=Decimal("1e-9"))


# --- status API ------------------------------------------------------------------------------


def api_get(
    app: APIGatewayRestResolver, token: str, path: str, resource: str, **query: str
) -> tuple[int, Any]:
    """GET `path` through the resolver, as API Gateway would hand it over."""
    event = api_gateway_event(path, resource=resource, query=query, headers=bearer(token))
    response = app.resolve(event, LocalContext("StatusFunction", 29))  # type: ignore[arg-type]
    return response["statusCode"], json.loads(response["body"])


def status_api(engine: Engine, settings: Settings) -> Callable[..., Any]:
    app = build_app(lambda: engine, lambda: settings.api_token or "")

    def get(path: str, resource: str, **query: str) -> Any:
        status, body = api_get(app, settings.api_token or "", path, resource, **query)
        assert status == 200, body
        return body

    return get


# --- 1. end to end ------------------------------------------------------------------------


def test_pipeline_end_to_end_against_the_openai_protocol_server(
    engine: Engine, keyed: Settings, sqs: Any, fakes: Fakes
) -> None:
    """Fan-out -> SQS -> LocalPoller -> JobRunner -> OpenAI SDK -> fake server -> PostgreSQL
    -> status API: succeeded jobs, mentions, tokens and cost, and exactly 2 calls per job."""
    runs = 3
    catalogue(engine, [model_entry(fakes, "openai", "gpt", max_concurrency=4)], runs=runs)
    fan_out(engine, keyed)
    job_runner = runner(engine, keyed)

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        """As the processor Lambda: the batch's records at once, a partial batch response."""

        def one(record: dict[str, Any]) -> dict[str, str] | None:
            try:
                job_runner.handle(record["body"], record["receiptHandle"], lambda: 60_000)
                return None
            except Exception:
                return {"itemIdentifier": record["messageId"]}

        with ThreadPoolExecutor(len(event["Records"])) as pool:
            return {"batchItemFailures": [f for f in pool.map(one, event["Records"]) if f]}

    def finished() -> bool:
        return all(r["status"] in ("succeeded", "failed") for r in job_rows(engine))

    poller = LocalPoller(sqs, keyed.jobs_queue_url or "", invoke, wait_seconds=0)
    stats = poller.run_until(finished, timeout=30)
    assert (stats.received, stats.acknowledged, stats.failed) == (runs, runs, 0)

    # Exactly one answer and one extraction per job, reaching the server with the key.
    server = fakes.openai
    assert server.request_count == 2 * runs
    assert calls_by_kind(server) == {"answer": runs, "extract": runs}
    for request in server.requests:
        assert request.path == "/v1/chat/completions"
        assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
        assert request.body["model"] == "openai-fake-1"
        # Job-level params, never sent.
        assert "api_key_name" not in request.body and "api_key_host" not in request.body
    answers = [r.body for r in server.requests if not server.is_extraction(r)]
    assert all(b["messages"] == [{"role": "user", "content": PROMPT}] for b in answers)
    extractions = [r.body for r in server.requests if server.is_extraction(r)]
    assert all(b["response_format"]["type"] == "json_schema" for b in extractions)
    assert all(DEFAULT_ANSWER in b["messages"][-1]["content"] for b in extractions)

    # The queue is empty: every record was acknowledged.
    attrs = sqs.get_queue_attributes(QueueUrl=keyed.jobs_queue_url, AttributeNames=["All"])
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"
    assert attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"

    per_job = total(OPENAI_ANSWER, OPENAI_EXTRACT)
    per_job_cost = cost(OPENAI_ANSWER, OPENAI_PRICES) + cost(OPENAI_EXTRACT, OPENAI_PRICES)
    assert per_job_cost == Decimal("0.00072")
    get = status_api(engine, keyed)

    batch = get(f"/batches/{BATCH}", "/batches/{batch_key}")
    assert batch["batch_key"] == BATCH and batch["total"] == runs
    assert batch["counts"]["succeeded"] == runs and batch["progress"] == 1.0
    assert batch["ended_at"] is not None and batch["top_errors"] == []
    assert (batch["input_tokens"], batch["output_tokens"]) == (
        runs * per_job[0],
        runs * per_job[1],
    )
    assert batch["cost_usd"] == pytest.approx(float(runs * per_job_cost))
    (by_model,) = batch["by_model"]
    assert by_model["model"] == "gpt" and by_model["counts"]["succeeded"] == runs
    assert by_model["cost_usd"] == pytest.approx(float(runs * per_job_cost))

    for row in job_rows(engine):
        job = get(f"/jobs/{row['id']}", "/jobs/{job_id}")
        assert (job["status"], job["attempt_count"], job["error_kind"]) == ("succeeded", 1, None)
        assert (job["model"], job["prompt"], job["batch_key"]) == ("gpt", "crm", BATCH)
        assert (job["input_tokens"], job["output_tokens"]) == per_job
        assert job["cost_usd"] == pytest.approx(float(per_job_cost))
        response = job["response"]
        assert response["answer_text"] == DEFAULT_ANSWER
        assert response["provider_response_id"].startswith("chatcmpl-fake")
        assert response["finish_reason"] == "stop"
        assert (response["input_tokens"], response["output_tokens"]) == per_job
        assert job["mentions"] == EXPECTED_MENTIONS

    entities = get("/entities", "/entities", batch_key=BATCH)
    assert entities["answers"] == runs
    assert [(e["name"], e["mentions"], e["jobs"], e["share"]) for e in entities["items"]] == [
        ("acme crm", runs, runs, 1.0),
        ("globex", runs, runs, 1.0),
    ]


# --- 2. faults ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "fault", "kind", "retry_after"),
    [
        ("openai", lambda: FakeOpenAI.rate_limited("2"), "rate_limit", 2.0),
        ("openai", lambda: FakeOpenAI.server_error(503), "server", None),
        ("anthropic", lambda: FakeAnthropic.rate_limited("2"), "rate_limit", 2.0),
        ("anthropic", FakeAnthropic.overloaded, "overloaded", None),
    ],
    ids=["openai-429", "openai-503", "anthropic-429", "anthropic-529"],
)
def test_retryable_fault_requeues_then_the_next_attempt_succeeds(
    engine: Engine,
    keyed: Settings,
    sqs: Any,
    fakes: Fakes,
    provider: str,
    fault: Callable[[], Reply],
    kind: str,
    retry_after: float | None,
) -> None:
    server = fakes.of(provider)
    catalogue(engine, [model_entry(fakes, provider)])
    msg = first_message(engine, keyed, sqs)
    server.push(fault())
    job_runner = runner(engine, keyed)

    # Without a receipt handle the caller owns the way back: told by RetryLater.
    with pytest.raises(RetryLater) as info:
        job_runner.handle(msg["Body"], None)
    row = one_job(engine)
    assert (row["status"], row["attempt_count"], row["error_kind"]) == ("queued", 1, kind)
    assert row["lease_expires_at"] is None and row["finished_at"] is None
    assert (row["input_tokens"], row["output_tokens"]) == (0, 0)  # an error answer is not billed
    if retry_after is not None:
        # Retry-After honoured: on the row (set in the same statement as updated_at) ...
        assert row["next_attempt_at"] - row["updated_at"] >= timedelta(seconds=retry_after)
        assert info.value.delay >= retry_after
        # ... and on what the caller is told.
    else:
        assert row["next_attempt_at"] - row["updated_at"] <= timedelta(seconds=1)  # backoff cap
    assert server.request_count == 1  # the answer call failed; no extraction was tried

    make_due(engine)
    if kind == "rate_limit":
        # A 429 holds the whole model back for its Retry-After, without using an attempt.
        with pytest.raises(RetryLater, match="Retry-After"):
            job_runner.handle(body_of(row["id"]), None)
        assert one_job(engine)["attempt_count"] == 1
        with engine.begin() as conn:
            conn.execute(text("UPDATE flow_limits SET request_tat = 0"))
    assert job_runner.handle(body_of(row["id"]), None) == Outcome.SUCCEEDED
    row = one_job(engine)
    assert (row["status"], row["attempt_count"], row["error_kind"], row["error_message"]) == (
        "succeeded",
        2,
        None,
        None,
    )
    assert server.request_count == 3  # 1 failed + answer + extraction
    if provider == "openai":
        usage = total(OPENAI_ANSWER, OPENAI_EXTRACT)
        assert_usage(row, usage, cost(usage, OPENAI_PRICES))
    else:
        usage = total(ANTHROPIC_ANSWER, ANTHROPIC_EXTRACT)
        assert_usage(row, usage, cost(usage, ANTHROPIC_PRICES))
    assert counts(engine, "entity_mentions") == 2


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_server_error_on_every_attempt_fails_after_max_attempts(
    engine: Engine, keyed: Settings, sqs: Any, fakes: Fakes, provider: str
) -> None:
    server = fakes.of(provider)
    catalogue(engine, [model_entry(fakes, provider)])
    msg = first_message(engine, keyed, sqs)
    attempts = keyed.max_attempts
    assert attempts == 3
    server.push(*[server.server_error() for _ in range(attempts)])
    job_runner = runner(engine, keyed)
    body = msg["Body"]
    for attempt in range(1, attempts):
        with pytest.raises(RetryLater):
            job_runner.handle(body, None)
        row = one_job(engine)
        assert (row["status"], row["attempt_count"], row["error_kind"]) == (
            "queued",
            attempt,
            "server",
        )
        make_due(engine)
    assert job_runner.handle(body, None) == Outcome.FAILED
    row = one_job(engine)
    assert (row["status"], row["attempt_count"], row["error_kind"]) == ("failed", 3, "server")
    assert row["error_message"].startswith("gave up after 3 attempts: ")
    assert "HTTP 500" in row["error_message"]
    assert row["finished_at"] is not None and row["next_attempt_at"] is None
    assert server.request_count == attempts  # one answer call per attempt, no extraction
    assert counts(engine, "responses") == 0
    # A further delivery of the message does nothing.
    assert job_runner.handle(body, None) == Outcome.SKIPPED
    assert server.request_count == attempts


@pytest.mark.parametrize(
    ("provider", "fault", "kind", "words"),
    [
        ("openai", lambda s: s.refusal("I can't help with that."), "refusal", "refused"),
        ("openai", lambda s: s.content_filtered(), "refusal", "content_filter"),
        ("openai", lambda s: s.unauthorized(), "auth", "HTTP 401"),
        ("anthropic", lambda s: s.refusal("No."), "refusal", "refused"),
        ("anthropic", lambda s: s.unauthorized(), "auth", "HTTP 401"),
    ],
    ids=[
        "openai-refusal",
        "openai-content-filter",
        "openai-401",
        "anthropic-refusal",
        "anthropic-401",
    ],
)
def test_permanent_fault_fails_at_the_first_attempt(
    engine: Engine,
    keyed: Settings,
    sqs: Any,
    fakes: Fakes,
    provider: str,
    fault: Callable[[Any], Any],
    kind: str,
    words: str,
) -> None:
    server = fakes.of(provider)
    catalogue(engine, [model_entry(fakes, provider)])
    msg = first_message(engine, keyed, sqs)
    server.push(fault(server))
    assert runner(engine, keyed).handle(msg["Body"], msg["ReceiptHandle"]) == Outcome.FAILED
    row = one_job(engine)
    assert (row["status"], row["attempt_count"], row["error_kind"]) == ("failed", 1, kind)
    assert words in row["error_message"] and not row["error_message"].startswith("gave up")
    assert row["finished_at"] is not None and row["next_attempt_at"] is None
    assert server.request_count == 1
    assert counts(engine, "responses") == 0 and counts(engine, "entity_mentions") == 0
    # A refusal is an answer the provider bills: its tokens count; an HTTP error has none.
    if kind == "refusal":
        assert row["input_tokens"] > 0 and row["cost_usd"] > 0
    else:
        assert (row["input_tokens"], row["output_tokens"]) == (0, 0)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_invalid_extraction_then_valid_on_repair_succeeds(
    engine: Engine, keyed: Settings, sqs: Any, fakes: Fakes, provider: str
) -> None:
    catalogue(engine, [model_entry(fakes, provider)])
    msg = first_message(engine, keyed, sqs)
    if provider == "openai":
        oai = fakes.openai
        oai.push(oai.answer(), oai.invalid_extraction())  # valid JSON, rank 0
        usage = total(OPENAI_ANSWER, OPENAI_EXTRACT, OPENAI_EXTRACT)
        expected = cost(usage, OPENAI_PRICES)
    else:
        ant = fakes.anthropic
        ant.push(ant.message(DEFAULT_ANSWER), ant.invalid_tool_use())
        usage = total(ANTHROPIC_ANSWER, ANTHROPIC_EXTRACT, ANTHROPIC_EXTRACT)
        expected = cost(usage, ANTHROPIC_PRICES)
    server = fakes.of(provider)

    assert runner(engine, keyed).handle(msg["Body"], msg["ReceiptHandle"]) == Outcome.SUCCEEDED
    assert server.request_count == 3  # answer, extraction, repaired extraction
    repair = json.dumps(server.requests[2].body)
    assert "Your previous output was invalid" in repair
    row = one_job(engine)
    assert (row["status"], row["attempt_count"], row["error_kind"]) == ("succeeded", 1, None)
    assert_usage(row, usage, expected)  # the rejected extraction was billed too
    with engine.connect() as conn:
        resp = conn.execute(text("SELECT input_tokens, output_tokens FROM responses")).one()
        names = conn.execute(text("SELECT name FROM entity_mentions ORDER BY rank")).scalars()
        assert tuple(resp) == usage
        assert list(names) == ["acme crm", "globex"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_invalid_extraction_twice_fails_validation_with_the_billed_tokens(
    engine: Engine, keyed: Settings, sqs: Any, fakes: Fakes, provider: str
) -> None:
    catalogue(engine, [model_entry(fakes, provider)])
    msg = first_message(engine, keyed, sqs)
    if provider == "openai":
        oai = fakes.openai
        oai.push(oai.answer(), oai.invalid_extraction(), oai.malformed_extraction())
        # malformed_extraction reports the fake's base usage (20/10), not the metered one.
        usage = total(OPENAI_ANSWER, OPENAI_EXTRACT, (20, 10))
        expected = cost(usage, OPENAI_PRICES)
    else:
        ant = fakes.anthropic
        ant.push(ant.message(DEFAULT_ANSWER), ant.invalid_tool_use(), ant.malformed_tool_use())
        usage = total(ANTHROPIC_ANSWER, ANTHROPIC_EXTRACT, ANTHROPIC_EXTRACT)
        expected = cost(usage, ANTHROPIC_PRICES)
    server = fakes.of(provider)

    assert runner(engine, keyed).handle(msg["Body"], msg["ReceiptHandle"]) == Outcome.FAILED
    assert server.request_count == 3
    row = one_job(engine)
    assert (row["status"], row["attempt_count"], row["error_kind"]) == (
        "failed",
        1,
        "validation",
    )
    assert "invalid structured output after one repair" in row["error_message"]
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0 and row["cost_usd"] > 0
    assert_usage(row, usage, expected)  # every billed call: the answer and both extractions
    assert counts(engine, "responses") == 0 and counts(engine, "entity_mentions") == 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_slow_answer_past_the_call_timeout_is_a_retryable_timeout(
    engine: Engine, keyed: Settings, sqs: Any, fakes: Fakes, provider: str
) -> None:
    server = fakes.of(provider)
    catalogue(engine, [model_entry(fakes, provider, params={"timeout": 0.5})])
    msg = first_message(engine, keyed, sqs)
    server.push(server.slow(5.0))
    job_runner = runner(engine, keyed)
    started = time.monotonic()
    with pytest.raises(RetryLater):
        job_runner.handle(msg["Body"], None)
    assert time.monotonic() - started < 3.0  # the SDK gave up at the call's timeout
    row = one_job(engine)
    assert (row["status"], row["attempt_count"], row["error_kind"]) == ("queued", 1, "timeout")
    assert "timed out" in row["error_message"]
    assert server.request_count == 1

    # Too little Lambda time left for a call: handed back at once, and no request is made.
    make_due(engine)
    with pytest.raises(RetryLater):
        job_runner.handle(body_of(row["id"]), None, remaining_ms=lambda: 11_000)
    row = one_job(engine)
    assert (row["status"], row["attempt_count"], row["error_kind"]) == ("queued", 2, "timeout")
    assert server.request_count == 1

    make_due(engine)  # a fast answer now: the last attempt succeeds
    assert job_runner.handle(body_of(row["id"]), None) == Outcome.SUCCEEDED
    assert one_job(engine)["attempt_count"] == 3 and server.request_count == 3


# --- 3. extraction_model ---------------------------------------------------------------------


def test_extraction_model_sends_extraction_to_the_other_model_at_its_own_prices(
    engine: Engine, keyed: Settings, sqs: Any, fakes: Fakes
) -> None:
    """`extraction_model: ext`: gpt (OpenAI fake) answers, ext (Anthropic fake) extracts;
    each call is priced at its own model's prices, billed failures included."""
    gen_prices = (Decimal("1.0"), Decimal("2.0"))
    catalogue(
        engine,
        [
            model_entry(
                fakes,
                "openai",
                "gpt",
                price_per_mtok={"input": float(gen_prices[0]), "output": float(gen_prices[1])},
            ),
            model_entry(fakes, "anthropic", "ext"),
        ],
        runs=2,
        prompt_models=["gpt"],
        extraction_model="ext",
    )
    fan_out(engine, keyed)
    first, second = job_rows(engine)
    job_runner = runner(engine, keyed)
    oai, ant = fakes.openai, fakes.anthropic

    assert job_runner.handle(body_of(first["id"]), None) == Outcome.SUCCEEDED
    assert calls_by_kind(oai) == {"answer": 1}  # no extraction reached the answering model
    (extract,) = ant.requests
    assert extract.path == "/v1/messages"
    assert presented_key(extract) == ANTHROPIC_KEY
    assert extract.body["model"] == "anthropic-fake-1"
    assert extract.body["tool_choice"] == {"type": "tool", "name": "record_entities"}
    assert DEFAULT_ANSWER in json.dumps(extract.body["messages"])
    row = job_rows(engine)[0]
    assert row["status"] == "succeeded"
    assert_usage(
        row,
        total(OPENAI_ANSWER, ANTHROPIC_EXTRACT),
        cost(OPENAI_ANSWER, gen_prices) + cost(ANTHROPIC_EXTRACT, ANTHROPIC_PRICES),
    )
    assert cost(OPENAI_ANSWER, gen_prices) + cost(ANTHROPIC_EXTRACT, ANTHROPIC_PRICES) == Decimal(
        "0.000525"
    )
    with engine.connect() as conn:
        mentions = conn.execute(
            text("SELECT m.slug FROM entity_mentions e JOIN models m ON m.id = e.model_id")
        ).scalars()
        assert set(mentions) == {"gpt"}  # mentions belong to the answering model

    # The extraction model fails twice: both of its billed calls at its own prices.
    ant.push(ant.invalid_tool_use(), ant.invalid_tool_use())
    assert job_runner.handle(body_of(second["id"]), None) == Outcome.FAILED
    assert calls_by_kind(oai) == {"answer": 2} and ant.request_count == 3
    row = job_rows(engine)[1]
    assert (row["status"], row["error_kind"]) == ("failed", "validation")
    assert_usage(
        row,
        total(OPENAI_ANSWER, ANTHROPIC_EXTRACT, ANTHROPIC_EXTRACT),
        cost(OPENAI_ANSWER, gen_prices) + 2 * cost(ANTHROPIC_EXTRACT, ANTHROPIC_PRICES),
    )


# --- 4. secrets ------------------------------------------------------------------------------


def test_key_from_provider_secret_reaches_the_server_and_never_the_rows_or_logs(
    engine: Engine,
    settings: Settings,
    sqs: Any,
    fakes: Fakes,
    moto_server: MotoServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret_key = f"sk-test-{uuid.uuid4().hex}"
    secrets = boto3.client("secretsmanager", endpoint_url=moto_server.endpoint)
    arn = secrets.create_secret(
        Name=f"promptrun/providers-{uuid.uuid4().hex[:8]}",
        SecretString=json.dumps({"openai": secret_key}),
    )["ARN"]
    # The secret wins over a key from the environment.
    env_key = "sk-test-from-env-0000000000000000"
    keyed = with_settings(settings, provider_secrets_arn=arn, provider_keys={"openai": env_key})
    catalogue(engine, [model_entry(fakes, "openai")], runs=2)
    fan_out(engine, keyed)
    first, second = job_rows(engine)
    job_runner = runner(engine, keyed)
    server = fakes.openai
    # Everything at INFO (the functions' level), the model SDKs and their HTTP clients even at
    # DEBUG. (botocore at DEBUG logs every response body, GetSecretValue's too: never on.)
    caplog.set_level(logging.INFO)
    for name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):
        caplog.set_level(logging.DEBUG, logger=name)

    assert job_runner.handle(body_of(first["id"]), None) == Outcome.SUCCEEDED
    assert server.request_count == 2
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {secret_key}"}

    # A 401 whose body echoes the presented key in full.
    echo = FakeOpenAI.unauthorized(echo_key=True)
    server.push(echo)
    assert job_runner.handle(body_of(second["id"]), None) == Outcome.FAILED
    assert secret_key in echo(server.requests[-1]).body["error"]["message"]  # it did echo
    row = job_rows(engine)[1]
    assert (row["status"], row["error_kind"]) == ("failed", "auth")
    assert "Incorrect API key provided" in row["error_message"]
    assert "[redacted]" in row["error_message"]

    with engine.connect() as conn:
        stored = json.dumps(
            [dict(r) for r in conn.execute(text("SELECT * FROM prompt_jobs")).mappings()],
            default=str,
        )
    assert secret_key not in stored and env_key not in stored
    job = status_api(engine, keyed)(f"/jobs/{row['id']}", "/jobs/{job_id}")
    assert job["error_kind"] == "auth" and secret_key not in json.dumps(job)

    # Logs: the records (extras included) and their Powertools JSON lines.
    failed = [r for r in caplog.records if r.getMessage() == "job failed"]
    assert failed and getattr(failed[0], "error_kind", None) == "auth"
    assert any(r.name.startswith("openai") for r in caplog.records)  # the SDK's DEBUG too
    formatter = powertools_logger.registered_formatter
    for record in caplog.records:
        line = formatter.format(record) if record.name == powertools_logger.name else ""
        for shown in (record.getMessage(), repr(record.__dict__), line):
            assert secret_key not in shown, record.name
    out, err = capsys.readouterr()
    assert secret_key not in out and secret_key not in err


# --- 5. max_concurrency ---------------------------------------------------------------------


def test_max_concurrency_holds_at_a_slow_real_provider(
    engine: Engine, keyed: Settings, sqs: Any, fakes: Fakes
) -> None:
    """More processor threads than slots against a slow server: never more than
    max_concurrency requests in flight at the server, and waiting for a slot uses no attempt."""
    limit, runs, threads = 2, 8, 6
    catalogue(engine, [model_entry(fakes, "openai", max_concurrency=limit)], runs=runs)
    fan_out(engine, keyed)
    bodies = [m["Body"] for m in receive_all(sqs, keyed.jobs_queue_url)]
    assert len(bodies) == runs
    server = fakes.openai
    server.default_delay = 0.15
    job_runner = runner(engine, keyed)
    waits = Counter[str]()

    def processor(body: str) -> Outcome:
        while True:  # as SQS would: a record that found no slot comes back
            try:
                return job_runner.handle(body, None)
            except RetryLater as retry:
                assert "max_concurrency" in retry.reason
                waits["no_slot"] += 1
                time.sleep(0.02)

    with ThreadPoolExecutor(threads) as pool:
        outcomes = Counter(pool.map(processor, bodies))
    assert outcomes == {Outcome.SUCCEEDED: runs}
    assert server.peak_in_flight == limit  # reached, never exceeded
    assert server.request_count == 2 * runs and waits["no_slot"] > 0
    rows = job_rows(engine)
    assert Counter(r["attempt_count"] for r in rows) == {1: runs}  # waiting used no attempt
    assert {r["error_kind"] for r in rows} == {None}
