"""Flow control on the processor's batch path (promptrun.batch_runner, what the processor
handler runs): budgets, a provider's 429 and rate-limit headers, and a batch killed after its
claim, against real PostgreSQL, moto's SQS and a local OpenAI-protocol server."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text

from promptrun.api import build_app
from promptrun.aws import JobQueue
from promptrun.batch_runner import BatchRunner, Record
from promptrun.db.pool import Pool
from promptrun.processor import Outcome
from promptrun.settings import Settings
from tests.conftest import sync
from tests.integration.test_flow_control import (
    TOKEN,
    catalogue,
    fan_out,
    get,
    jobs_by,
    keyed,
    push_used_up_quota,
)
from tests.support.fake_openai import FakeOpenAI
from tests.support.sqs import receive_all


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def records(sqs: Any, settings: Settings) -> list[Record]:
    return [
        Record(m["MessageId"], m["Body"], m["ReceiptHandle"])
        for m in receive_all(sqs, settings.jobs_queue_url, delete=True)
    ]


def delayed(sqs: Any, queue_url: str | None) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessagesDelayed"])


def flow_row(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                text(
                    "SELECT in_flight, rate_factor, throttled, request_tat, "
                    "EXTRACT(EPOCH FROM clock_timestamp())::float8 AS now_s "
                    "FROM flow_limits WHERE key = 'model:gpt'"
                )
            )
            .mappings()
            .one()
        )


def spent(engine: Engine) -> Decimal:
    with engine.connect() as conn:
        return Decimal(
            conn.execute(text("SELECT COALESCE(sum(spent_usd), 0) FROM budget_spend")).scalar_one()
        )


def test_a_budget_holds_back_the_rest_of_a_batch(
    engine: Engine, pool: Pool, settings: Settings, sqs: Any, openai_server: FakeOpenAI
) -> None:
    """Six jobs at $0.06 in one batch against a $0.15 batch budget: three start (the third
    crosses the cap), three wait (queued, no attempt, reason `budget`, a delayed message
    each); what is reserved is reconciled to what was spent."""
    settings = keyed(settings)
    sync(engine, catalogue(openai_server, runs=6, model_extra=", budget_usd: {per_batch: 0.15}"))
    fan_out(engine, settings)
    runner = BatchRunner(pool, settings, JobQueue(settings.jobs_queue_url or ""))
    result = runner.run(records(sqs, settings))
    assert result.failed == []
    assert Counter(result.outcomes.values()) == {Outcome.SUCCEEDED: 3, Outcome.WAITING: 3}
    rows = jobs_by(engine, "status", "attempt_count", "wait_reason", "cost_usd")
    waiting = [r for r in rows if r["status"] == "queued"]
    assert len(waiting) == 3
    assert all(r["attempt_count"] == 0 for r in waiting)
    assert all(r["wait_reason"].startswith("budget: model:gpt near its $0.15 cap") for r in waiting)
    assert sum(r["cost_usd"] or 0 for r in rows) == Decimal("0.18")
    assert spent(engine) == Decimal("0.18")  # reservations reconciled with the real cost
    assert delayed(sqs, settings.jobs_queue_url) == 3
    assert flow_row(engine)["in_flight"] == 0

    # Their next look (their delayed messages) finds the budget spent: no call starts.
    ids = [str(r[0]) for r in _ids(engine, "status = 'queued'")]
    later = runner.run([Record(j, json.dumps({"job_id": j}), "rh") for j in ids])
    assert Counter(later.outcomes.values()) == {Outcome.WAITING: 3}
    reasons = {r["wait_reason"] for r in jobs_by(engine, "wait_reason") if r["wait_reason"]}
    assert reasons == {"budget: model:gpt spent $0.18 of its $0.15 per batch"}
    assert openai_server.request_count == 6  # answer + extraction of the three that ran


def _ids(engine: Engine, where: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(f"SELECT id FROM prompt_jobs WHERE {where} ORDER BY id")))


class Killed(BaseException):
    """The processor dying mid-call: nothing after it in the invocation runs."""


def test_a_batch_killed_after_its_claim_keeps_its_budget_reserved(
    engine: Engine, pool: Pool, settings: Settings, sqs: Any, openai_server: FakeOpenAI
) -> None:
    """A killed attempt is billed but never reports its usage: the estimate reserved at its
    admission stays spent, so the budget still counts it and holds the other jobs back."""
    settings = keyed(settings)
    sync(engine, catalogue(openai_server, runs=4, model_extra=", budget_usd: {per_batch: 0.1}"))
    fan_out(engine, settings)
    runner = BatchRunner(pool, settings, JobQueue(settings.jobs_queue_url or ""))

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise Killed

    runner.caller.call = killed  # type: ignore[method-assign]
    batch = records(sqs, settings)
    with pytest.raises(Killed):
        runner.run(batch)
    rows = jobs_by(engine, "status", "attempt_count")
    assert Counter((r["status"], r["attempt_count"]) for r in rows) == {
        ("processing", 1): 2,  # ceil($0.10 / $0.06): admitted and claimed, then killed
        ("queued", 0): 2,
    }
    assert spent(engine) == Decimal("0.12")  # the two killed calls' estimates
    fresh = BatchRunner(pool, settings, JobQueue(settings.jobs_queue_url or ""))
    queued = [str(r[0]) for r in _ids(engine, "status = 'queued'")]
    result = fresh.run([Record(j, json.dumps({"job_id": j}), "rh") for j in queued])
    assert set(result.outcomes.values()) == {Outcome.WAITING}
    assert openai_server.request_count == 0


def test_a_429_in_a_batch_slows_the_model_for_every_processor(
    engine: Engine, pool: Pool, settings: Settings, sqs: Any, openai_server: FakeOpenAI
) -> None:
    """A 429 with Retry-After: the job is retried by a delayed message (an attempt used, as
    error retries do), the model's rate is cut by 30% and its calls held back for the
    Retry-After, so the next batch's job waits without a call or an attempt."""
    settings = keyed(settings)
    sync(engine, catalogue(openai_server, runs=2, rpm=600))
    fan_out(engine, settings)
    first, second = records(sqs, settings)
    openai_server.push(openai_server.rate_limited(retry_after="10"))
    runner = BatchRunner(pool, settings, JobQueue(settings.jobs_queue_url or ""))
    assert runner.run([first]).outcomes == {first.message_id: Outcome.RETRYING}
    row = flow_row(engine)
    assert row["rate_factor"] == pytest.approx(0.7)  # multiplicative decrease
    assert row["throttled"] == 1 and row["in_flight"] == 0
    assert row["request_tat"] >= row["now_s"] + 9  # the provider's Retry-After, for everyone
    held = runner.run([second], remaining_ms=lambda: 5_000)
    assert held.outcomes == {second.message_id: Outcome.WAITING}
    assert openai_server.request_count == 1
    rows = {(r["status"], r["attempt_count"], r["error_kind"]) for r in _jobs(engine)}
    assert rows == {("queued", 1, "rate_limit"), ("queued", 0, None)}
    # The status API shows the configured and the lowered rate.
    (model,) = get(build_app(lambda: engine, lambda: TOKEN), "/models")["items"]
    assert model["limits"] == {"max_concurrency": 10, "rpm": 600, "tpm": None}
    assert model["effective"] == {"rpm": pytest.approx(600 * 0.95 * 0.7), "tpm": None,
                                  "rate_factor": pytest.approx(0.7)}  # fmt: skip
    assert (model["in_flight"], model["throttled"], model["paused"]) == (0, 1, False)
    assert model["waiting"] == 1  # the job held back, not the one retried after its error


def _jobs(engine: Engine) -> list[dict[str, Any]]:
    return jobs_by(engine, "status", "attempt_count", "error_kind")


def test_rate_limit_headers_of_an_answer_hold_the_next_batch_back(
    engine: Engine, pool: Pool, settings: Settings, sqs: Any, openai_server: FakeOpenAI
) -> None:
    """An answer whose headers say the request quota is used up (remaining 0, reset in 20 s):
    the batch's release holds the model back until the reset, without a 429."""
    settings = keyed(settings)
    sync(engine, catalogue(openai_server, runs=2))
    push_used_up_quota(openai_server)
    fan_out(engine, settings)
    first, second = records(sqs, settings)
    runner = BatchRunner(pool, settings, JobQueue(settings.jobs_queue_url or ""))
    assert runner.run([first]).outcomes == {first.message_id: Outcome.SUCCEEDED}
    row = flow_row(engine)
    assert row["rate_factor"] == 1.0 and row["throttled"] == 0  # a hold, not a 429
    assert row["request_tat"] >= row["now_s"] + 15
    assert runner.run([second]).outcomes == {second.message_id: Outcome.WAITING}
    assert openai_server.request_count == 2  # the first job's answer and extraction only
    waiting = [r for r in jobs_by(engine, "status", "wait_reason") if r["status"] == "queued"]
    assert len(waiting) == 1 and "Retry-After" in waiting[0]["wait_reason"]


def test_jobs_a_rate_holds_for_a_turn_start_while_the_batch_calls_run(
    engine: Engine, pool: Pool, settings: Settings
) -> None:
    """A batch larger than the rate's burst: 4 of its 6 jobs start at once, the other two get
    turns a fraction of a second later and start then, while the first calls still run (one
    processor keeps the model's rate busy), not after the first round has ended."""
    sync(
        engine,
        """
models:
  - {slug: m, provider: offline, model: m-1, rpm: 600, max_concurrency: 10,
     params: {latency_ms: 400}}
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: 6}
""",
    )
    fan_out(engine, settings)
    calls: list[tuple[float, float]] = []
    with ThreadPoolExecutor(9) as threads:
        runner = BatchRunner(pool, settings, None, threads=threads)
        call = runner.caller.call

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return call(*args, **kwargs)
            finally:
                calls.append((started, time.monotonic()))

        runner.caller.call = timed  # type: ignore[method-assign]
        ids = [str(r[0]) for r in _ids(engine, "true")]
        result = runner.run(
            [Record(j, json.dumps({"job_id": j})) for j in ids], remaining_ms=lambda: 60_000
        )
    assert result.failed == [] and set(result.outcomes.values()) == {Outcome.SUCCEEDED}
    assert len(calls) == 6
    # A job counts 2 requests (answer + extraction) of the 570 RPM admitted: 4 fit the burst,
    # the next two start at their turns, while the first four (400 ms each) are in flight.
    first_end = min(end for _, end in calls)
    assert sum(1 for start, _ in calls if start < first_end) == 6, calls


def test_records_received_again_and_again_are_refreshed_in_a_batch(
    engine: Engine, pool: Pool, settings: Settings, sqs: Any
) -> None:
    """Records that processors died holding (their third receive) get a fresh copy each,
    with the record's hints, delayed past the lease, before they run: their receive counts
    never walk them into the DLQ, and a job's count of waits for a slot is not lost. A record
    received less often is not copied."""
    sync(
        engine,
        "models:\n  - {slug: a, provider: offline, model: a-1}\n"
        "prompts:\n  - {slug: p, text: x, schedule: daily, runs: 3}\n",
    )
    fan_out(engine, settings)
    messages = receive_all(sqs, settings.jobs_queue_url, delete=True)
    hints: list[dict[str, Any]] = [{"slot_waits": 4}, {"turn": 1.5}, {}]
    bodies = [{**json.loads(m["Body"]), **h} for m, h in zip(messages, hints, strict=True)]
    batch = [
        Record(m["MessageId"], json.dumps(b), m["ReceiptHandle"], receive_count=count)
        for m, b, count in zip(messages, bodies, (3, 4, 2), strict=True)
    ]
    queue = JobQueue(settings.jobs_queue_url or "")
    sent: list[dict[str, Any]] = []
    queue.sqs.meta.events.register(
        "provide-client-params.sqs.SendMessageBatch",
        lambda params, **_: sent.extend(params["Entries"]),
    )
    runner = BatchRunner(pool, settings, queue)
    result = runner.run(batch)
    assert set(result.outcomes.values()) == {Outcome.SUCCEEDED}
    assert delayed(sqs, settings.jobs_queue_url) == 2  # the copies, for after the lease
    assert [json.loads(e["MessageBody"]) for e in sent] == bodies[:2]
    assert {e["DelaySeconds"] for e in sent} == {settings.lease_seconds + 1}
    assert receive_all(sqs, settings.jobs_queue_url) == []
