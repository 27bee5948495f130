"""Flow control on the real path: limits shared through PostgreSQL, waiting by fresh delayed
messages on moto's SQS (with the template's redrive policy), processor processes killed
mid-batch, a local OpenAI-protocol server that enforces RPM and TPM, pause/resume, budgets."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from promptrun import jobs, limits
from promptrun.api import build_app
from promptrun.aws import JobQueue
from promptrun.catalog import load_catalog, sync_catalog
from promptrun.errors import InputError
from promptrun.fanout import FanoutRequest, run_fanout
from promptrun.local.events import api_gateway_event, bearer
from promptrun.local.lambda_runtime import LocalContext, load_handler
from promptrun.local.poller import sqs_event
from promptrun.processor import JobRunner, Outcome, RetryLater
from promptrun.settings import Settings, get_settings
from tests.conftest import sync, with_settings
from tests.support.fake_openai import FakeOpenAI
from tests.support.processors import Processors, limited_queue, message_count
from tests.support.sqs import receive_all
from tests.support.stack import MotoServer

AT = datetime(2026, 11, 22, 13, 5, tzinfo=UTC)
TOKEN = "flow-token"


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def catalogue(
    server: FakeOpenAI,
    runs: int,
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrency: int = 10,
    prompts: int = 1,
    extra: str = "",
    model_extra: str = "",
) -> str:
    lines = "\n".join(
        f'  - {{slug: p{i}, text: "Question number {i}?", schedule: daily, runs: {runs}}}'
        for i in range(prompts)
    )
    limits_text = (f", rpm: {rpm}" if rpm else "") + (f", tpm: {tpm}" if tpm else "")
    return f"""
{extra}
models:
  - {{slug: gpt, provider: openai, model: fake-model, base_url: "{server.base_url}",
      max_concurrency: {max_concurrency}{limits_text}, params: {{max_tokens: 25}},
      price_per_mtok: {{input: 1000, output: 1000}}{model_extra}}}
prompts:
{lines}
"""


def fan_out(engine: Engine, settings: Settings) -> None:
    run_fanout(engine, JobQueue(settings.jobs_queue_url or ""), FanoutRequest(at=AT), settings)


def jobs_by(engine: Engine, *columns: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                text(f"SELECT {', '.join(columns)} FROM prompt_jobs ORDER BY run_index")
            ).mappings()
        ]


def statuses(engine: Engine) -> Counter[str]:
    return Counter(r["status"] for r in jobs_by(engine, "status"))


def all_terminal(engine: Engine) -> bool:
    return set(statuses(engine)) <= {"succeeded", "failed", "cancelled", "skipped"}


def processor_env(
    db_url: str, queue_url: str, moto: MotoServer, server: FakeOpenAI, lease: int
) -> dict[str, str]:
    return {
        "DATABASE_URL": db_url,
        "JOBS_QUEUE_URL": queue_url,
        "AWS_ENDPOINT_URL": moto.endpoint,
        "OPENAI_API_KEY": "sk-test",
        "MAX_ATTEMPTS": "5",
        "LEASE_SECONDS": str(lease),
        "BACKOFF_BASE_SECONDS": "1",
        "BACKOFF_CAP_SECONDS": "3",
    }


# --- the real path: processes, limits, kills ---------------------------------------------------


def run_processors(
    engine: Engine,
    settings: Settings,
    sqs: Any,
    moto_server: MotoServer,
    server: FakeOpenAI,
    tmp_path: Path,
    *,
    processes: int,
    kills: int,
    lease: int,
) -> tuple[Processors, str]:
    queue_url, dlq_url = limited_queue(sqs, visibility=lease + 2)
    settings = with_settings(settings, jobs_queue_url=queue_url, max_attempts=5)
    fan_out(engine, settings)
    procs = Processors(
        processor_env(settings.database_url or "", queue_url, moto_server, server, lease),
        tmp_path,
    )
    procs.start(processes)
    try:
        for _ in range(kills):
            time.sleep(2.5)  # mid-way through batches of 0.3 s calls held back by the limits
            procs.kill_one(0)
            procs.start(1)
        procs.wait_until(lambda: all_terminal(engine), timeout=120)
    finally:
        procs.stop()
    return procs, dlq_url


def test_limits_hold_across_processor_processes(
    engine: Engine,
    settings: Settings,
    sqs: Any,
    moto_server: MotoServer,
    openai_server: FakeOpenAI,
    tmp_path: Path,
) -> None:
    """Three processors against a server enforcing 600 RPM and 12,000 TPM (each job: two calls
    of 30 tokens): every job succeeds once, nothing is dead-lettered, the limits are kept."""
    openai_server.default_delay = 0.3
    openai_server.limit(rpm=600, tpm=12_000)
    sync(engine, catalogue(openai_server, runs=10, prompts=4, rpm=600, tpm=12_000))
    _, dlq_url = run_processors(
        engine, settings, sqs, moto_server, openai_server, tmp_path, processes=3, kills=0, lease=60
    )
    rows = jobs_by(engine, "status", "attempt_count", "max_attempts", "error_kind", "error_message")
    assert statuses(engine) == {"succeeded": 40}
    assert message_count(sqs, dlq_url) == 0
    assert all(r["attempt_count"] <= r["max_attempts"] for r in rows)
    # Each prompt answered exactly as often as it has jobs: no duplicate model call.
    assert openai_server.rate_stats.answers == {f"Question number {i}?": 10 for i in range(4)}, (
        [r for r in rows if r["attempt_count"] > 1],
        openai_server.rate_stats.throttled,
    )
    stats = openai_server.rate_stats
    assert stats.accepted == 80  # answer + extraction per job, nothing twice
    assert stats.throttled <= 0.1 * stats.accepted, stats  # the limiter, not 429s, set the pace


def test_processors_killed_mid_batch_lose_nothing_and_dead_letter_nothing(
    engine: Engine,
    settings: Settings,
    sqs: Any,
    moto_server: MotoServer,
    openai_server: FakeOpenAI,
    tmp_path: Path,
) -> None:
    """SIGKILL a processor mid-batch four times (restarting it): every job ends, none stuck,
    no message reaches the DLQ (the redrive allows 5 receives), attempts stay within the
    maximum, and a job's model is called again only for an attempt whose worker was killed."""
    openai_server.default_delay = 0.3
    openai_server.limit(rpm=600, tpm=12_000)
    sync(engine, catalogue(openai_server, runs=10, prompts=4, rpm=600, tpm=12_000))
    procs, dlq_url = run_processors(
        engine, settings, sqs, moto_server, openai_server, tmp_path, processes=3, kills=4, lease=6
    )
    assert procs.killed == 4
    rows = jobs_by(engine, "status", "attempt_count", "max_attempts", "error_kind")
    assert statuses(engine) == {"succeeded": 40}, Counter(r["error_kind"] for r in rows)
    assert message_count(sqs, dlq_url) == 0
    assert all(r["attempt_count"] <= r["max_attempts"] for r in rows)
    # Calls beyond one per job are the attempts whose worker was killed, no more.
    extra_answers = sum(openai_server.rate_stats.answers.values()) - 40
    assert extra_answers <= sum(r["attempt_count"] - 1 for r in rows)
    assert not any(r["error_kind"] == "rate_limit" for r in rows)


# --- waiting: pause and resume, budgets ----------------------------------------------------------


def waiting_on(engine: Engine, prefix: str) -> int:
    """Jobs left queued with no attempt used, waiting for `prefix` (paused, budget)."""
    rows = jobs_by(engine, "status", "attempt_count", "wait_reason")
    return sum(
        1
        for r in rows
        if r["status"] == "queued"
        and r["attempt_count"] == 0
        and (r["wait_reason"] or "").startswith(prefix)
    )


def delayed(sqs: Any, queue_url: str | None) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessagesDelayed"])


def wait_until_held(
    procs: Processors, engine: Engine, sqs: Any, queue_url: str | None, reason: str, n: int
) -> None:
    """Until `n` jobs wait for `reason` (queued, no attempt used), each with a delayed message
    of its own for the next re-check."""
    procs.wait_until(lambda: waiting_on(engine, reason) == n and delayed(sqs, queue_url) == n, 60)


def started_processors(
    engine: Engine,
    settings: Settings,
    sqs: Any,
    moto_server: MotoServer,
    server: FakeOpenAI,
    tmp_path: Path,
    processes: int = 2,
) -> tuple[Processors, Settings, str]:
    """The jobs fanned out onto a queue with the template's redrive policy, and processor
    processes (the batch handler, through the local poller) taking them."""
    queue_url, dlq_url = limited_queue(sqs, visibility=62)
    settings = with_settings(keyed(settings), jobs_queue_url=queue_url, max_attempts=5)
    fan_out(engine, settings)
    procs = Processors(
        processor_env(settings.database_url or "", queue_url, moto_server, server, 60), tmp_path
    )
    procs.start(processes)
    return procs, settings, dlq_url


def test_pause_then_resume_on_the_real_path(
    engine: Engine,
    settings: Settings,
    sqs: Any,
    moto_server: MotoServer,
    openai_server: FakeOpenAI,
    tmp_path: Path,
) -> None:
    """Processor processes on a paused model: every job waits (queued, no attempt, no call,
    nothing dead-lettered); a resume sends them back and every one runs once, in seconds
    rather than at the 15-minute re-check."""
    from promptrun.flow_status import Target, pause, resume

    openai_server.limit(rpm=6000, tpm=1_000_000)  # counts each prompt's answers
    sync(engine, catalogue(openai_server, runs=10))
    pause(engine, Target(model="gpt"), "provider incident")
    procs, settings, dlq_url = started_processors(
        engine, settings, sqs, moto_server, openai_server, tmp_path
    )
    try:
        # Each job waits with the reason on it and a message of its own delayed 15 minutes.
        wait_until_held(
            procs, engine, sqs, settings.jobs_queue_url, "paused: provider incident", 10
        )
        assert openai_server.request_count == 0
        assert message_count(sqs, settings.jobs_queue_url) == 0
        result = resume(engine, Target(model="gpt"), JobQueue(settings.jobs_queue_url or ""))
        assert result.requeued == 10
        procs.wait_until(lambda: all_terminal(engine), timeout=60)
    finally:
        procs.stop()
    rows = jobs_by(engine, "status", "attempt_count", "wait_reason")
    assert rows == [{"status": "succeeded", "attempt_count": 1, "wait_reason": None}] * 10
    assert openai_server.rate_stats.answers == {"Question number 0?": 10}
    assert message_count(sqs, dlq_url) == 0


def test_a_budget_stops_new_calls_and_raising_it_in_the_catalogue_lets_them_finish(
    engine: Engine,
    settings: Settings,
    sqs: Any,
    moto_server: MotoServer,
    openai_server: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Processor processes against a $0.15 batch budget ($0.06 a job): 3 calls start, the
    other 7 jobs wait with the reason `budget`; `promptrun catalog sync` raising the budget
    sends them back, and they finish in seconds rather than at the 15-minute re-check."""
    from promptrun.cli import main

    openai_server.limit(rpm=6000, tpm=1_000_000)  # counts each prompt's answers
    sync(engine, catalogue(openai_server, runs=10, model_extra=", budget_usd: {per_batch: 0.15}"))
    procs, settings, dlq_url = started_processors(
        engine, settings, sqs, moto_server, openai_server, tmp_path
    )
    try:
        wait_until_held(procs, engine, sqs, settings.jobs_queue_url, "budget: model:gpt", 7)
        assert statuses(engine) == {"succeeded": 3, "queued": 7}
        spent = sum(r["cost_usd"] or 0 for r in jobs_by(engine, "cost_usd"))
        assert spent == Decimal("0.18")  # never more than the calls in flight over the cap
        assert openai_server.rate_stats.accepted == 6  # answer + extraction of 3 jobs

        raised = tmp_path / "catalog.yaml"
        raised.write_text(
            catalogue(openai_server, runs=10, model_extra=", budget_usd: {per_batch: 1.0}")
        )
        monkeypatch.setenv("DATABASE_URL", settings.database_url or "")
        monkeypatch.setenv("JOBS_QUEUE_URL", settings.jobs_queue_url or "")
        get_settings.cache_clear()
        try:
            assert main(["catalog", "sync", str(raised)]) == 0
        finally:
            get_settings.cache_clear()
        assert "7 jobs waiting on a budget sent back" in capsys.readouterr().out
        procs.wait_until(lambda: all_terminal(engine), timeout=60)
    finally:
        procs.stop()
    rows = jobs_by(engine, "status", "attempt_count")
    assert rows == [{"status": "succeeded", "attempt_count": 1}] * 10
    assert openai_server.rate_stats.answers == {"Question number 0?": 10}
    assert message_count(sqs, dlq_url) == 0


def push_used_up_quota(server: FakeOpenAI) -> None:
    """The next answer's headers say the request quota is used up (remaining 0, reset in 20 s)."""
    answer = server.completion("Acme CRM is fine.")
    answer.headers.update(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"}
    )
    server.push(answer)


def runner_for(engine: Engine, settings: Settings) -> JobRunner:
    return JobRunner(engine, settings, JobQueue(settings.jobs_queue_url or ""))


def keyed(settings: Settings) -> Settings:
    return with_settings(settings, provider_keys={"openai": "sk-test"})


def test_paused_jobs_wait_without_attempts_and_run_after_resume(
    engine: Engine,
    settings: Settings,
    sqs: Any,
    openai_server: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = keyed(settings)
    monkeypatch.setenv("JOBS_QUEUE_URL", settings.jobs_queue_url or "")  # resume sends from it
    sync(engine, catalogue(openai_server, runs=3))
    app = build_app(lambda: engine, lambda: TOKEN)
    assert post(app, "/models/gpt/pause", {"reason": "provider incident"}, token=None)[0] == 401
    status, body = post(app, "/models/gpt/pause", {"reason": "provider incident"})
    assert (status, body["models"], body["paused"]) == (200, ["gpt"], True)
    assert post(app, "/models/nope/pause")[0] == 404

    fan_out(engine, settings)  # fan-out still creates a paused model's jobs
    runner = runner_for(engine, settings)
    msgs = receive_all(sqs, settings.jobs_queue_url, delete=True)
    assert [runner.handle(m["Body"], m["ReceiptHandle"]) for m in msgs] == [Outcome.WAITING] * 3
    rows = jobs_by(engine, "status", "attempt_count", "wait_reason")
    assert (
        rows
        == [{"status": "queued", "attempt_count": 0, "wait_reason": "paused: provider incident"}]
        * 3
    )
    assert openai_server.request_count == 0
    assert receive_all(sqs, settings.jobs_queue_url) == []  # the new messages wait 15 min

    listed = {m["slug"]: m for m in get(app, "/models")["items"]}
    assert listed["gpt"]["paused"] and listed["gpt"]["paused_reason"] == "provider incident"
    assert listed["gpt"]["waiting"] == 3

    get_settings.cache_clear()
    try:
        status, body = post(app, "/models/gpt/resume")
    finally:
        get_settings.cache_clear()
    assert (status, body["paused"], body["requeued"]) == (200, False, 3)
    # Resume sent the waiting jobs back at once: they run now, not in 15 minutes.
    resumed = limits_resume_messages(sqs, settings)
    assert len(resumed) == 3
    assert [runner.handle(m["Body"], m["ReceiptHandle"]) for m in resumed] == [
        Outcome.SUCCEEDED
    ] * 3
    rows = jobs_by(engine, "status", "attempt_count", "wait_reason")
    assert rows == [{"status": "succeeded", "attempt_count": 1, "wait_reason": None}] * 3


def limits_resume_messages(sqs: Any, settings: Settings) -> list[dict[str, Any]]:
    return receive_all(sqs, settings.jobs_queue_url, delete=True)


def test_pause_by_provider_from_the_cli(
    engine: Engine,
    settings: Settings,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    openai_server: FakeOpenAI,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from promptrun.cli import main

    sync(engine, catalogue(openai_server, runs=1))
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.delenv("JOBS_QUEUE_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["pause", "--provider", "openai"]) == 0
        assert "paused gpt" in capsys.readouterr().out
        assert main(["models"]) == 0
        assert "openai paused by an operator" in capsys.readouterr().out
        assert main(["pause", "--provider", "bedrock"]) == 2
        assert "no provider bedrock" in capsys.readouterr().err
        assert main(["resume", "--model", "gpt"]) == 0
        assert "resumed gpt" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT paused FROM flow_limits WHERE key = 'model:gpt'")).scalar()
            is False
        )


def test_budget_stops_new_calls_and_a_raised_budget_lets_them_finish(
    engine: Engine, settings: Settings, sqs: Any, openai_server: FakeOpenAI
) -> None:
    """Each job costs 60 tokens x $1000/Mtok = $0.06 (estimated about the same before the
    call). A $0.15 batch budget lets 3 calls start (the third crosses it), then jobs wait."""
    settings = keyed(settings)
    sync(engine, catalogue(openai_server, runs=6, model_extra=", budget_usd: {per_batch: 0.15}"))
    fan_out(engine, settings)
    runner = runner_for(engine, settings)
    msgs = receive_all(sqs, settings.jobs_queue_url, delete=True)
    outcomes = [runner.handle(m["Body"], m["ReceiptHandle"]) for m in msgs]
    assert Counter(outcomes) == {Outcome.SUCCEEDED: 3, Outcome.WAITING: 3}
    waiting = [r for r in jobs_by(engine, "status", "wait_reason") if r["status"] == "queued"]
    assert len(waiting) == 3
    assert all(r["wait_reason"].startswith("budget: model:gpt spent $0.18") for r in waiting)
    spent = sum(r["cost_usd"] for r in jobs_by(engine, "cost_usd") if r["cost_usd"])
    assert spent == Decimal("0.18")  # never more than the calls in flight over the cap

    # Raised in the catalogue: the waiting jobs' next look finds room.
    sync(engine, catalogue(openai_server, runs=6, model_extra=", budget_usd: {per_batch: 1.0}"))
    with engine.begin() as conn:
        ids = [
            r[0] for r in conn.execute(text("SELECT id FROM prompt_jobs WHERE status = 'queued'"))
        ]
    for job_id in ids:
        assert runner.handle(json.dumps({"job_id": str(job_id)}), "r") == Outcome.SUCCEEDED
    assert statuses(engine) == {"succeeded": 6}


def test_catalogue_wide_daily_budget(
    engine: Engine, settings: Settings, sqs: Any, openai_server: FakeOpenAI
) -> None:
    settings = keyed(settings)
    sync(engine, catalogue(openai_server, runs=3, extra="budget_usd: {per_day: 0.05}"))
    fan_out(engine, settings)
    runner = runner_for(engine, settings)
    msgs = receive_all(sqs, settings.jobs_queue_url, delete=True)
    outcomes = Counter(runner.handle(m["Body"], m["ReceiptHandle"]) for m in msgs)
    assert outcomes == {Outcome.SUCCEEDED: 1, Outcome.WAITING: 2}
    reasons = {r["wait_reason"] for r in jobs_by(engine, "wait_reason") if r["wait_reason"]}
    assert reasons == {"budget: catalogue spent $0.06 of its $0.05 per day"}

    # Raised: the catalogue-wide budget covers every model, so both waiting jobs go back now.
    from promptrun.flow_status import requeue_budget_waits

    report = sync_catalog(
        engine, load_catalog(catalogue(openai_server, runs=3, extra="budget_usd: {per_day: 1}"))
    )
    assert report.budgets_changed == ["catalog"]
    assert requeue_budget_waits(engine, report.budgets_changed, None) is None  # no queue
    queue = JobQueue(settings.jobs_queue_url or "")
    assert requeue_budget_waits(engine, report.budgets_changed, queue) == 2
    msgs = receive_all(sqs, settings.jobs_queue_url, delete=True)
    assert [runner.handle(m["Body"], m["ReceiptHandle"]) for m in msgs] == [Outcome.SUCCEEDED] * 2
    assert statuses(engine) == {"succeeded": 3}


# --- concurrency and the batch -----------------------------------------------------------------


def test_a_batch_of_ten_runs_all_at_once(
    engine: Engine,
    settings: Settings,
    sqs: Any,
    openai_server: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    db_url: str,
) -> None:
    """Ten records: the handler has all ten model calls in flight at once, so an invocation
    lasts about its slowest call. The server holds each answer until ten calls are in flight
    (or 15 s pass), so the figure does not depend on how busy the machine is."""
    openai_server.default_delay = 15.0
    sync(engine, catalogue(openai_server, runs=10, max_concurrency=10))
    fan_out(engine, settings)
    msgs = receive_all(sqs, settings.jobs_queue_url)
    assert len(msgs) == 10
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("JOBS_QUEUE_URL", settings.jobs_queue_url or "")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    get_settings.cache_clear()
    try:
        handler = load_handler("processor", fresh=True)
        openai_server.reset()
        openai_server.gather = 10
        started = time.monotonic()
        result = handler.lambda_handler(
            sqs_event(msgs, "arn:aws:sqs:us-east-1:123456789012:jobs", "us-east-1"),
            LocalContext("processor", 60),
        )
        elapsed = time.monotonic() - started
    finally:
        openai_server.gather = 0
        get_settings.cache_clear()
    assert result["batchItemFailures"] == []
    assert statuses(engine) == {"succeeded": 10}
    assert openai_server.peak_in_flight == 10, f"{elapsed:.1f}s"


def test_max_concurrency_is_shared_by_a_limit_group(engine: Engine, settings: Settings) -> None:
    sync(
        engine,
        """
limit_groups:
  - {name: org, max_concurrency: 2, rpm: 6000}
models:
  - {slug: a, provider: offline, model: a-1, limit_group: org}
  - {slug: b, provider: offline, model: b-1, limit_group: org}
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: 2}
""",
    )
    fan_out(engine, settings)
    demand = limits.Demand(requests=1, tokens=10)
    with engine.connect() as conn:
        by_model = {
            slug: [r[0] for r in conn.execute(text(
                "SELECT j.id FROM prompt_jobs j JOIN models m ON m.id = j.model_id "
                "WHERE m.slug = :s"), {"s": slug})]
            for slug in ("a", "b")
        }  # fmt: skip

    def claim_and_admit(slug: str, index: int) -> limits.Admission:
        with engine.begin() as conn:
            assert jobs.claim_job(conn, by_model[slug][index], 60) is not None
            return limits.admit(conn, slug, "k", 1, demand, claimed=True)

    assert claim_and_admit("a", 0).granted == 1
    assert claim_and_admit("b", 0).granted == 1  # the group's second slot
    # Full: the recount (two live leases besides this claim) agrees with the counter.
    with engine.begin() as conn:
        conn.execute(text("UPDATE flow_limits SET recounted_at = 0"))
    refused = claim_and_admit("a", 1)
    assert refused.granted == 0 and refused.reason is not None
    assert refused.reason.startswith("max_concurrency: group:org")
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT in_flight FROM flow_limits WHERE key = 'group:org'")).scalar()
            == 2
        )


def test_a_429_lowers_the_rate_for_everyone_and_success_raises_it(
    engine: Engine, settings: Settings
) -> None:
    sync(
        engine,
        """
models:
  - {slug: a, provider: offline, model: a-1, rpm: 600}
prompts: []
""",
    )
    demand = limits.Demand(requests=1)
    with engine.begin() as conn:
        admitted = limits.admit(conn, "a", "k", 1, demand)
        lease = limits.Lease.of(admitted, demand)
        limits.release(
            conn, lease, tokens_used=0, cost_usd=Decimal(0), succeeded=False, throttled_for=1.5
        )
        factor, tat, now = conn.execute(
            text(
                "SELECT rate_factor, request_tat, EXTRACT(EPOCH FROM clock_timestamp()) "
                "FROM flow_limits WHERE key = 'model:a'"
            )
        ).one()
        assert factor == pytest.approx(0.7)  # multiplicative decrease
        assert tat >= float(now) + 1.0  # Retry-After holds every processor back
        held = limits.admit(conn, "a", "k", 1, demand)
        assert held.granted == 0 and held.wait_seconds > 1.0
        conn.execute(text("UPDATE flow_limits SET request_tat = 0"))
        again = limits.admit(conn, "a", "k", 1, demand)
        limits.release(
            conn, limits.Lease.of(again, demand), tokens_used=0, cost_usd=Decimal(0), succeeded=True
        )
        factor = conn.execute(
            text("SELECT rate_factor FROM flow_limits WHERE key = 'model:a'")
        ).scalar()
    assert factor == pytest.approx(0.7 + 1 / 75)  # additive increase: one step per success


def test_rate_limit_headers_of_an_answer_hold_the_model_back(
    engine: Engine, settings: Settings, sqs: Any, openai_server: FakeOpenAI
) -> None:
    """An answer whose headers say the request quota is used up (remaining 0, reset in 20 s)
    holds every processor's next call of that model back until the reset, without a 429."""
    settings = keyed(settings)
    sync(engine, catalogue(openai_server, runs=2))
    push_used_up_quota(openai_server)
    fan_out(engine, settings)
    first, second = receive_all(sqs, settings.jobs_queue_url, delete=True)
    runner = runner_for(engine, settings)
    assert runner.handle(first["Body"], first["ReceiptHandle"]) == Outcome.SUCCEEDED
    with pytest.raises(RetryLater, match="Retry-After") as held:
        runner.handle(second["Body"], None)
    assert 15 < held.value.delay <= 20
    assert openai_server.request_count == 2  # the first job's answer and extraction only
    rows = [r for r in jobs_by(engine, "status", "wait_reason") if r["status"] == "queued"]
    assert len(rows) == 1 and "Retry-After" in rows[0]["wait_reason"]


def test_a_record_received_again_and_again_is_refreshed(
    engine: Engine, settings: Settings, sqs: Any
) -> None:
    """A record that processors died holding (its third receive) gets a fresh copy with its
    hints, delayed past the lease, before it runs: its receive count never walks it into the
    DLQ, and its count of waits for a slot is not lost."""
    sync(
        engine,
        "models:\n  - {slug: a, provider: offline, model: a-1}\nprompts:\n  - {slug: p, text: x, schedule: daily}\n",
    )
    fan_out(engine, settings)
    (msg,) = receive_all(sqs, settings.jobs_queue_url, delete=True)
    settings = with_settings(settings, lease_seconds=5)
    runner = runner_for(engine, settings)
    hinted = {**json.loads(msg["Body"]), "slot_waits": 2}
    outcome = runner.handle(json.dumps(hinted), msg["ReceiptHandle"], receive_count=3)
    assert outcome == Outcome.SUCCEEDED
    assert receive_all(sqs, settings.jobs_queue_url) == []
    time.sleep(6.2)
    (fresh,) = receive_all(sqs, settings.jobs_queue_url, delete=True)
    assert fresh["Attributes"]["ApproximateReceiveCount"] == "1"
    assert json.loads(fresh["Body"]) == hinted
    assert runner.handle(fresh["Body"], fresh["ReceiptHandle"]) == Outcome.SKIPPED  # done


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("rpm: 0", "models[0] (m).rpm: Input should be greater than or equal to 1"),
        ("tpm: -5", "models[0] (m).tpm: Input should be greater than or equal to 1"),
        ("limit_group: nope", "models[0] (m).limit_group: 'nope' is not in limit_groups"),
        (
            "budget_usd: {per_day: 0}",
            "models[0] (m).budget_usd.per_day: Input should be greater than 0",
        ),
        (
            "budget_usd: {weekly: 3}",
            "models[0] (m).budget_usd.weekly: Extra inputs are not permitted",
        ),
    ],
)
def test_limits_are_validated_with_the_entry_named(entry: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        load_catalog(f"models:\n  - {{slug: m, provider: offline, model: m, {entry}}}\n")
    assert message in str(info.value)


def test_limit_group_names_are_checked() -> None:
    with pytest.raises(InputError, match=r"limit_groups\[0\] \(g\).rpm"):
        load_catalog("limit_groups:\n  - {name: g, rpm: 0}\nmodels: []\n")
    with pytest.raises(InputError, match=r"limit_groups\[1\] \(g\).name: duplicate name"):
        load_catalog("limit_groups:\n  - {name: g}\n  - {name: g}\nmodels: []\n")


# --- API helpers --------------------------------------------------------------------------------


def post(
    app: Any, path: str, query: dict[str, str] | None = None, token: str | None = TOKEN
) -> tuple[int, Any]:
    event = api_gateway_event(path, query=query, headers=bearer(token) if token else {})
    event["httpMethod"] = event["requestContext"]["httpMethod"] = "POST"
    response = app.resolve(event, LocalContext("StatusFunction", 29))
    return response["statusCode"], json.loads(response["body"])


def get(app: Any, path: str) -> Any:
    response = app.resolve(
        api_gateway_event(path, headers=bearer(TOKEN)), LocalContext("StatusFunction", 29)
    )
    assert response["statusCode"] == 200, response["body"]
    return json.loads(response["body"])
