"""The processor against real PostgreSQL and moto's SQS: claims, retries, failures, exactly once."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from promptrun import jobs
from promptrun.aws import JobQueue
from promptrun.errors import InputError
from promptrun.fanout import FanoutRequest, run_fanout
from promptrun.local.poller import LocalPoller, sqs_event
from promptrun.processor import JobRunner, Outcome, RetryLater
from promptrun.providers.base import Completion, ModelCall
from promptrun.providers.offline import OfflineProvider
from promptrun.settings import Settings
from tests.conftest import sync
from tests.support.sqs import receive_all

AT = datetime(2026, 11, 22, 13, 5, tzinfo=UTC)


class CountingProvider(OfflineProvider):
    """The offline model, counting the answers it gives per job (prompt, model, run)."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str, str]] = Counter()
        self.lock = threading.Lock()

    def answer(self, call: ModelCall, prompt: str, system: str | None) -> Completion:
        with self.lock:
            self.calls[(prompt, call.provider_model, call.seed)] += 1
        return super().answer(call, prompt, system)


def fan_out(engine: Engine, settings: Settings, at: datetime = AT) -> None:
    run_fanout(engine, JobQueue(settings.jobs_queue_url or ""), FanoutRequest(at=at), settings)


def statuses(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(r[0] for r in conn.execute(text("SELECT status FROM prompt_jobs")))


def one_job(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM prompt_jobs")).mappings().one())


def single_job_catalog(engine: Engine, params: str = "{}", runs: int = 1) -> None:
    sync(
        engine,
        f"""
models:
  - {{slug: m, provider: offline, model: m-1, params: {params}, price_per_mtok: {{input: 2.0, output: 4.0}}}}
prompts:
  - {{slug: p, text: "Best CRM?", schedule: daily, runs: {runs}}}
""",
    )


def test_claim_by_many_threads_exactly_one_wins(engine: Engine, settings: Settings) -> None:
    single_job_catalog(engine)
    fan_out(engine, settings)
    job_id = one_job(engine)["id"]
    barrier = threading.Barrier(16)

    def claim(_: int) -> bool:
        barrier.wait()
        with engine.begin() as conn:
            return jobs.claim_job(conn, job_id, 60) is not None

    with ThreadPoolExecutor(16) as pool:
        wins = list(pool.map(claim, range(16)))
    assert wins.count(True) == 1
    row = one_job(engine)
    assert (
        row["status"] == "processing"
        and row["attempt_count"] == 1
        and row["lease_expires_at"] is not None
    )


def test_success_stores_answer_mentions_usage_and_cost(
    engine: Engine, settings: Settings, sqs: Any
) -> None:
    single_job_catalog(engine)
    fan_out(engine, settings)
    (msg,) = receive_all(sqs, settings.jobs_queue_url)
    runner = JobRunner(engine, settings, JobQueue(settings.jobs_queue_url or ""))
    assert runner.handle(msg["Body"], msg["ReceiptHandle"]) == Outcome.SUCCEEDED
    row = one_job(engine)
    assert row["status"] == "succeeded" and row["attempt_count"] == 1
    assert row["finished_at"] >= row["started_at"] and row["duration_ms"] is not None
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    expected = (row["input_tokens"] * 2 + row["output_tokens"] * 4) / 1_000_000
    assert float(row["cost_usd"]) == pytest.approx(expected)
    with engine.connect() as conn:
        resp = conn.execute(text("SELECT * FROM responses")).mappings().one()
        mentions = conn.execute(
            text("SELECT name, display_name, rank FROM entity_mentions ORDER BY rank")
        ).all()
    assert resp["answer_text"].startswith("[offline synthetic answer]")
    assert len(mentions) >= 3 and [m.rank for m in mentions] == list(range(1, len(mentions) + 1))
    assert all(
        m.display_name in resp["answer_text"] and m.name == m.display_name.casefold()
        for m in mentions
    )
    # A second delivery of the same message does nothing.
    assert runner.handle(msg["Body"], None) == Outcome.SKIPPED
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM responses")).scalar() == 1


def test_handler_partial_batch_response_with_malformed_records(
    engine: Engine, settings: Settings, sqs: Any, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    from promptrun.local.lambda_runtime import LocalContext, load_handler
    from promptrun.settings import get_settings

    single_job_catalog(engine, runs=3)
    fan_out(engine, settings)
    msgs = receive_all(sqs, settings.jobs_queue_url)
    assert len(msgs) == 3
    event = sqs_event(msgs, "arn:aws:sqs:us-east-1:123456789012:jobs", "us-east-1")
    bad = [
        ("bad-json", "not json"),
        ("bad-uuid", json.dumps({"job_id": "nope"})),
        ("no-job-id", json.dumps({"id": str(uuid.uuid4())})),
    ]
    for message_id, body in bad:
        record = dict(event["Records"][0], messageId=message_id, body=body, receiptHandle="x")
        event["Records"].insert(1, record)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("JOBS_QUEUE_URL", settings.jobs_queue_url or "")
    get_settings.cache_clear()
    handler = load_handler("processor", fresh=True)
    result = handler.lambda_handler(event, LocalContext("processor", 60))
    get_settings.cache_clear()
    assert sorted(f["itemIdentifier"] for f in result["batchItemFailures"]) == [
        "bad-json",
        "bad-uuid",
        "no-job-id",
    ]
    assert statuses(engine) == {"succeeded": 3}


def test_parse_message_names_the_problem() -> None:
    with pytest.raises(InputError, match="not JSON"):
        JobRunner.handle(None, "{", None)  # type: ignore[arg-type]
    from promptrun.processor import parse_message

    with pytest.raises(InputError, match="job_id"):
        parse_message(json.dumps({"job_id": 5}))
    assert str(
        parse_message(json.dumps({"job_id": "0b6f8b1e-8f7a-4a53-9a0f-3d1c2b7e6a10", "x": 1})).job_id
    ).startswith("0b6f")


def test_retryable_error_then_success(engine: Engine, settings: Settings, sqs: Any) -> None:
    single_job_catalog(
        engine, params="{simulate_error: rate_limit, simulate_error_attempts: 1, retry_after: 3}"
    )
    fan_out(engine, settings)
    (msg,) = receive_all(sqs, settings.jobs_queue_url)
    runner = JobRunner(engine, settings, JobQueue(settings.jobs_queue_url or ""))
    # The record is acknowledged and a fresh message sent, delayed: no receive counted.
    assert runner.handle(msg["Body"], msg["ReceiptHandle"]) == Outcome.RETRYING
    row = one_job(engine)
    assert (row["status"], row["attempt_count"], row["error_kind"]) == ("queued", 1, "rate_limit")
    assert row["next_attempt_at"] > datetime.now(UTC) + timedelta(seconds=2)  # Retry-After 3
    assert receive_all(sqs, settings.jobs_queue_url) == []  # the new message is delayed
    time.sleep(3.2)
    (again,) = receive_all(sqs, settings.jobs_queue_url)
    assert json.loads(again["Body"]) == {"job_id": str(row["id"])}
    assert again["Attributes"]["ApproximateReceiveCount"] == "1"
    # Without a way to send (no receipt handle), the caller is told to bring it back.
    with engine.begin() as conn:
        conn.execute(text("UPDATE prompt_jobs SET next_attempt_at = now() + interval '5 s'"))
    # Before it is due, a copy is held back, not dropped.
    with pytest.raises(RetryLater, match="not due"):
        runner.handle(msg["Body"], None)
    with engine.begin() as conn:
        conn.execute(text("UPDATE prompt_jobs SET next_attempt_at = now()"))
    assert runner.handle(msg["Body"], None) == Outcome.SUCCEEDED
    row = one_job(engine)
    assert (row["status"], row["attempt_count"], row["error_kind"]) == ("succeeded", 2, None)


def test_permanent_error_fails_at_once(engine: Engine, settings: Settings) -> None:
    single_job_catalog(engine, params="{simulate_error: bad_request}")
    fan_out(engine, settings)
    runner = JobRunner(engine, settings, None)
    job_id = one_job(engine)["id"]
    assert runner.handle(json.dumps({"job_id": str(job_id)}), None) == Outcome.FAILED
    row = one_job(engine)
    assert (row["status"], row["attempt_count"], row["error_kind"]) == ("failed", 1, "bad_request")
    assert "simulated" in row["error_message"] and row["finished_at"] is not None


def test_attempts_exhausted(engine: Engine, settings: Settings) -> None:
    single_job_catalog(engine, params="{simulate_error: server}")
    fan_out(engine, settings)
    runner = JobRunner(engine, settings, None)
    body = json.dumps({"job_id": str(one_job(engine)["id"])})
    for _ in range(settings.max_attempts - 1):
        with pytest.raises(RetryLater):
            runner.handle(body, None)
        with engine.begin() as conn:
            conn.execute(text("UPDATE prompt_jobs SET next_attempt_at = now()"))
    assert runner.handle(body, None) == Outcome.FAILED
    row = one_job(engine)
    assert (row["status"], row["attempt_count"], row["error_kind"]) == (
        "failed",
        settings.max_attempts,
        "server",
    )
    assert row["error_message"].startswith(f"gave up after {settings.max_attempts} attempts")


def test_stale_worker_cannot_overwrite_a_newer_attempt(engine: Engine, settings: Settings) -> None:
    single_job_catalog(engine)
    fan_out(engine, settings)
    job_id = one_job(engine)["id"]
    with engine.begin() as conn:
        first = jobs.claim_job(conn, job_id, 60)
        assert jobs.claim_job(conn, job_id, 60) is None  # lease held
        conn.execute(text("UPDATE prompt_jobs SET lease_expires_at = now() - interval '1 second'"))
        second = jobs.claim_job(conn, job_id, 60)
    assert first and second and second.attempt == first.attempt + 1
    with engine.begin() as conn:
        from decimal import Decimal

        assert not jobs.complete_job(conn, first, jobs.Usage(1, 1, Decimal(0)))
        assert not jobs.fail_job(conn, first, error_kind="server", error_message="late")
        assert jobs.complete_job(conn, second, jobs.Usage(1, 1, Decimal(0)))
    assert one_job(engine)["status"] == "succeeded"


def test_expired_lease_after_last_attempt_fails_as_exhausted(
    engine: Engine, settings: Settings
) -> None:
    single_job_catalog(engine)
    fan_out(engine, settings)
    job_id = one_job(engine)["id"]
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE prompt_jobs SET status = 'processing', attempt_count = max_attempts, "
                "lease_expires_at = now() - interval '1 minute'"
            )
        )
    assert (
        JobRunner(engine, settings, None).handle(json.dumps({"job_id": str(job_id)}), None)
        == Outcome.FAILED
    )
    row = one_job(engine)
    assert row["error_kind"] == "attempts_exhausted"


def test_expired_lease_is_resent_by_fanout(engine: Engine, settings: Settings, sqs: Any) -> None:
    single_job_catalog(engine)
    fan_out(engine, settings)
    receive_all(sqs, settings.jobs_queue_url)  # the message is lost with its worker
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE prompt_jobs SET status = 'processing', attempt_count = 1, "
                "enqueued_at = now() - interval '20 minutes', "
                "lease_expires_at = now() - interval '1 minute'"
            )
        )
    result = run_fanout(
        engine, JobQueue(settings.jobs_queue_url or ""), FanoutRequest(at=AT), settings
    )
    assert (result.created, result.sent, result.rescued) == (0, 1, 1)
    (msg,) = receive_all(sqs, settings.jobs_queue_url)
    assert JobRunner(engine, settings, None).handle(msg["Body"], None) == Outcome.SUCCEEDED


def test_duplicate_deliveries_across_concurrent_processors_run_each_job_once(
    engine: Engine, settings: Settings, sqs: Any
) -> None:
    sync(
        engine,
        """
models:
  - {slug: a, provider: offline, model: a-1, max_concurrency: 50}
  - {slug: b, provider: offline, model: b-1, params: {latency_ms: 5}, max_concurrency: 50}
prompts:
  - {slug: p1, text: "one", schedule: daily, runs: 10}
  - {slug: p2, text: "two", schedule: daily, runs: 10}
""",
    )
    fan_out(engine, settings)
    bodies = [m["Body"] for m in receive_all(sqs, settings.jobs_queue_url)]
    assert len(bodies) == 40
    deliveries = [b for b in bodies for _ in range(random.Random(7).choice([2, 3]))] + bodies
    random.Random(11).shuffle(deliveries)
    provider = CountingProvider()
    runner = JobRunner(engine, settings, None, providers=lambda name, s: provider)
    with ThreadPoolExecutor(8) as pool:
        outcomes = Counter(pool.map(lambda b: runner.handle(b, None), deliveries))
    assert outcomes[Outcome.SUCCEEDED] == 40
    assert outcomes[Outcome.SKIPPED] == len(deliveries) - 40
    assert len(provider.calls) == 40 and set(provider.calls.values()) == {1}
    assert statuses(engine) == {"succeeded": 40}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM responses")).scalar() == 40


def test_pipeline_through_the_local_poller(engine: Engine, settings: Settings, sqs: Any) -> None:
    """Fan-out, then the poller feeds SQS batches to the processor until all is finished;
    one model fails once (retried), one always (failed), and the queue ends empty."""
    sync(
        engine,
        """
models:
  - {slug: ok, provider: offline, model: ok-1}
  - {slug: flaky, provider: offline, model: flaky-1, params: {simulate_error: timeout, simulate_error_attempts: 1}}
  - {slug: broken, provider: offline, model: broken-1, params: {simulate_error: auth}}
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: 4}
""",
    )
    fan_out(engine, settings)
    provider = CountingProvider()
    runner = JobRunner(
        engine, settings, JobQueue(settings.jobs_queue_url or ""), providers=lambda n, s: provider
    )

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        failures = []
        for record in event["Records"]:
            try:
                runner.handle(record["body"], record["receiptHandle"])
            except Exception:
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    def finished() -> bool:
        return statuses(engine).keys() <= {"succeeded", "failed"}

    poller = LocalPoller(sqs, settings.jobs_queue_url or "", invoke, wait_seconds=0)
    stats = poller.run_until(finished, timeout=60)
    assert statuses(engine) == {"succeeded": 8, "failed": 4}
    # The flaky model's first attempts came back once each, as fresh messages: no record failed.
    assert stats.failed == 0 and stats.received == 16
    with engine.connect() as conn:
        kinds = Counter(
            r[0]
            for r in conn.execute(
                text("SELECT error_kind FROM prompt_jobs WHERE status = 'failed'")
            )
        )
    assert kinds == {"auth": 4}
    # Everything acknowledged: nothing left on the queue.
    attrs = sqs.get_queue_attributes(QueueUrl=settings.jobs_queue_url, AttributeNames=["All"])[
        "Attributes"
    ]
    assert (
        attrs["ApproximateNumberOfMessages"] == "0"
        and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
    )


class ConcurrencyProbe(OfflineProvider):
    """The offline model with a wait, recording how many calls run at once. The first calls
    wait (at most 10 s) until `gather` of them run together, so reaching a limit does not
    depend on how busy the machine is."""

    def __init__(self, gather: int = 0) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.answers = 0
        self.gather = gather
        self.gathered = threading.Event()

    def answer(self, call: ModelCall, prompt: str, system: str | None) -> Completion:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.answers += 1
            if self.now >= self.gather:
                self.gathered.set()
        try:
            self.gathered.wait(10)
            time.sleep(0.05)
            return super().answer(call, prompt, system)
        finally:
            with self.lock:
                self.now -= 1


def test_max_concurrency_holds_across_more_processors_than_slots(
    engine: Engine, settings: Settings, sqs: Any
) -> None:
    sync(
        engine,
        """
models:
  - {slug: narrow, provider: offline, model: n-1, max_concurrency: 3}
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: 24}
""",
    )
    fan_out(engine, settings)
    bodies = [m["Body"] for m in receive_all(sqs, settings.jobs_queue_url)]
    probe = ConcurrencyProbe(gather=3)
    runner = JobRunner(engine, settings, None, providers=lambda n, s: probe)
    waits = Counter[str]()

    def processor(body: str) -> None:
        while True:  # as SQS would: a record that found no slot comes back
            try:
                runner.handle(body, None)
                return
            except RetryLater as retry:
                assert "max_concurrency" in retry.reason
                waits["no_slot"] += 1
                time.sleep(0.01)

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(processor, bodies))
    assert probe.peak == 3  # reached, never exceeded
    assert probe.answers == 24 and waits["no_slot"] > 0
    with engine.connect() as conn:
        attempts = Counter(
            r[0] for r in conn.execute(text("SELECT attempt_count FROM prompt_jobs"))
        )
    assert attempts == {1: 24}  # waiting for a slot used no attempt
    assert statuses(engine) == {"succeeded": 24}


def test_call_timeout_leaves_room_before_the_lambda_deadline(
    engine: Engine, settings: Settings
) -> None:
    single_job_catalog(engine, params="{timeout: 300}")
    fan_out(engine, settings)
    seen: list[float] = []

    class Recording(OfflineProvider):
        def answer(self, call: ModelCall, prompt: str, system: str | None) -> Completion:
            seen.append(call.timeout_seconds)
            return super().answer(call, prompt, system)

    runner = JobRunner(engine, settings, None, providers=lambda n, s: Recording())
    body = json.dumps({"job_id": str(one_job(engine)["id"])})
    assert runner.handle(body, None, remaining_ms=lambda: 40_000) == Outcome.SUCCEEDED
    assert seen == [pytest.approx(30.0)]  # 40 s left less the 10 s margin, not the model's 300 s
    with engine.begin() as conn:
        conn.execute(text("UPDATE prompt_jobs SET status = 'queued'"))
    with pytest.raises(RetryLater):
        runner.handle(body, None, remaining_ms=lambda: 11_000)  # 1 s: a retryable timeout
    assert one_job(engine)["error_kind"] == "timeout"


def test_job_of_a_model_disabled_after_fanout_is_skipped(
    engine: Engine, settings: Settings
) -> None:
    single_job_catalog(engine)
    fan_out(engine, settings)
    with engine.begin() as conn:
        conn.execute(text("UPDATE models SET enabled = false"))
    body = json.dumps({"job_id": str(one_job(engine)["id"])})
    assert JobRunner(engine, settings, None).handle(body, None) == Outcome.SKIPPED
    row = one_job(engine)
    assert (row["status"], row["error_kind"]) == ("skipped", "config")
    assert "disabled" in row["error_message"] and row["finished_at"] is not None


def test_cancelled_jobs_are_never_run(
    engine: Engine,
    settings: Settings,
    sqs: Any,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from promptrun.cli import main
    from promptrun.settings import get_settings

    single_job_catalog(engine, runs=3)
    fan_out(engine, settings)
    msgs = receive_all(sqs, settings.jobs_queue_url)
    runner = JobRunner(engine, settings, None)
    assert runner.handle(msgs[0]["Body"], None) == Outcome.SUCCEEDED
    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        assert main(["cancel", "2026-11-22"]) == 0
    finally:
        get_settings.cache_clear()
    assert "2 queued jobs cancelled;" in capsys.readouterr().out
    assert [runner.handle(m["Body"], None) for m in msgs[1:]] == [Outcome.SKIPPED, Outcome.SKIPPED]
    assert statuses(engine) == {"succeeded": 1, "cancelled": 2}
