"""The processor's batch path (promptrun.batch_runner) against real PostgreSQL and moto's SQS:
a whole SQS batch claimed and finished in a few statements, with every guarantee of the
per-record path (tests/integration/test_processor.py)."""

from __future__ import annotations

import itertools
import json
import random
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text

from promptrun import jobs
from promptrun.aws import JobQueue
from promptrun.batch_runner import MAX_BATCH, BatchRunner, Record
from promptrun.db import pg8000_fast
from promptrun.db.pool import Pool
from promptrun.processor import Outcome
from promptrun.providers.base import Completion, ModelCall
from promptrun.providers.offline import OfflineProvider
from promptrun.settings import Settings
from tests.conftest import sync
from tests.integration.test_processor import (
    CountingProvider,
    fan_out,
    single_job_catalog,
    statuses,
)
from tests.support.sqs import receive_all


def records_of(messages: list[dict[str, Any]]) -> list[Record]:
    return [Record(m["MessageId"], m["Body"], m["ReceiptHandle"]) for m in messages]


def body(job_id: Any) -> str:
    return json.dumps({"job_id": str(job_id)})


def job_ids(engine: Engine, where: str = "true") -> list[uuid.UUID]:
    with engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                text(
                    "SELECT j.id FROM prompt_jobs j JOIN models m ON m.id = j.model_id "
                    f"WHERE {where} ORDER BY j.run_index, m.slug"
                )
            )
        ]


def delayed(sqs: Any, queue_url: str | None) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessagesDelayed"])


def test_a_batch_stores_what_one_job_would_and_a_second_delivery_does_nothing(
    engine: Engine, pool: Pool, settings: Settings, sqs: Any
) -> None:
    single_job_catalog(engine, runs=3)
    fan_out(engine, settings)
    msgs = receive_all(sqs, settings.jobs_queue_url)
    runner = BatchRunner(pool, settings, JobQueue(settings.jobs_queue_url or ""))
    result = runner.run(records_of(msgs))
    assert result.failed == [] and result.response() == {"batchItemFailures": []}
    assert Counter(result.outcomes.values()) == {Outcome.SUCCEEDED: 3}
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM prompt_jobs")).mappings().all()
        per_job: dict[uuid.UUID, int] = dict(
            conn.execute(
                text(
                    "SELECT r.job_id, count(m.id) FROM responses r "
                    "LEFT JOIN entity_mentions m ON m.job_id = r.job_id GROUP BY r.job_id"
                )
            ).all()
        )
        resp = conn.execute(text("SELECT * FROM responses LIMIT 1")).mappings().one()
    for row in rows:
        assert row["status"] == "succeeded" and row["attempt_count"] == 1
        assert row["duration_ms"] is not None and row["finished_at"] >= row["started_at"]
        assert row["lease_expires_at"] is None and row["input_tokens"] > 0
        expected = (row["input_tokens"] * 2 + row["output_tokens"] * 4) / 1_000_000
        assert float(row["cost_usd"]) == pytest.approx(expected)
        assert per_job[row["id"]] >= 3  # mentions of that job, stored with it
    assert resp["answer_text"].startswith("[offline synthetic answer]")
    assert resp["structured"]["entities"] and resp["latency_ms"] is not None
    with engine.connect() as conn:
        ranks = conn.execute(
            text(
                "SELECT job_id, array_agg(rank ORDER BY rank) FROM entity_mentions GROUP BY job_id"
            )
        ).all()
    assert all(r[1] == list(range(1, len(r[1]) + 1)) for r in ranks)
    # The same batch delivered again: nothing runs, nothing is written twice.
    again = runner.run(records_of(msgs))
    assert again.failed == [] and set(again.outcomes.values()) == {Outcome.SKIPPED}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM responses")).scalar() == 3


MIXED = """
models:
  - {slug: ok, provider: offline, model: ok-1}
  - {slug: gone, provider: offline, model: gone-1}
  - {slug: narrow, provider: offline, model: n-1, max_concurrency: 2}
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: 4}
"""


def mixed_batch(engine: Engine) -> tuple[list[Record], dict[str, uuid.UUID]]:
    """One record of each kind: the ids of the jobs they name, by message id."""
    ok = job_ids(engine, "m.slug = 'ok'")
    narrow = job_ids(engine, "m.slug = 'narrow'")
    off = job_ids(engine, "m.slug = 'gone'")
    with engine.begin() as conn:
        conn.execute(text("UPDATE models SET enabled = false WHERE slug = 'gone'"))
        conn.execute(
            text("UPDATE prompt_jobs SET status = 'succeeded', finished_at = now() WHERE id = :i"),
            {"i": ok[1]},
        )
        conn.execute(
            text(
                "UPDATE prompt_jobs SET next_attempt_at = now() + interval '1 hour' WHERE id = :i"
            ),
            {"i": ok[2]},
        )
        conn.execute(
            text(
                "UPDATE prompt_jobs SET status = 'processing', attempt_count = 1, "
                "lease_expires_at = now() + interval '30 seconds' WHERE id = :i"
            ),
            {"i": ok[3]},
        )
    named = {
        "good": ok[0],
        "dup-1": narrow[0],
        "dup-2": narrow[0],
        "narrow-1": narrow[1],
        "narrow-2": narrow[2],
        "finished": ok[1],
        "not-due": ok[2],
        "live": ok[3],
        "disabled": off[0],
        "missing": uuid.uuid4(),
    }
    records = [Record(m, body(j), f"rh-{m}") for m, j in named.items()]
    records.insert(3, Record("bad-json", "not json", "rh-x"))
    records.insert(5, Record("bad-uuid", json.dumps({"job_id": "nope"}), "rh-y"))
    return records, named


def test_a_mixed_batch_with_a_queue(
    engine: Engine, pool: Pool, settings: Settings, sqs: Any
) -> None:
    sync(engine, MIXED)
    fan_out(engine, settings)
    receive_all(sqs, settings.jobs_queue_url, delete=True)
    records, named = mixed_batch(engine)
    provider = CountingProvider()
    runner = BatchRunner(
        pool,
        settings,
        JobQueue(settings.jobs_queue_url or ""),
        providers=lambda n, s: provider,
        threads=ThreadPoolExecutor(4),
    )
    result = runner.run(records)
    assert sorted(result.failed) == ["bad-json", "bad-uuid"]  # bad bodies fail alone
    out = result.outcomes
    assert out["good"] == Outcome.SUCCEEDED
    assert (out["dup-1"], out["dup-2"]) == (Outcome.SUCCEEDED, Outcome.SKIPPED)
    # narrow (max_concurrency 2) admitted two of its three: the third waits, no attempt used.
    narrow = [out["dup-1"], out["narrow-1"], out["narrow-2"]]
    assert sorted(narrow) == sorted([Outcome.SUCCEEDED, Outcome.SUCCEEDED, Outcome.WAITING])
    assert out["finished"] == Outcome.SKIPPED and out["missing"] == Outcome.SKIPPED
    assert out["not-due"] == Outcome.WAITING  # a delayed message, the record acknowledged
    assert out["live"] == Outcome.WAITING  # back when the lease ends, in case the worker died
    assert out["disabled"] == Outcome.SKIPPED
    with engine.connect() as conn:
        rows = {
            r["id"]: r
            for r in conn.execute(
                text("SELECT id, status, attempt_count, wait_reason, error_kind FROM prompt_jobs")
            ).mappings()
        }
    waiting = next(named[m] for m in ("narrow-1", "narrow-2") if out[m] == Outcome.WAITING)
    assert rows[waiting]["status"] == "queued" and rows[waiting]["attempt_count"] == 0
    assert rows[waiting]["wait_reason"].startswith("max_concurrency: model:narrow")
    assert (rows[named["disabled"]]["status"], rows[named["disabled"]]["error_kind"]) == (
        "skipped",
        "config",
    )
    assert rows[named["not-due"]]["status"] == "queued"
    assert rows[named["live"]]["status"] == "processing"  # untouched
    # Three jobs answered (good and two narrow), each once; three messages sent back.
    assert sum(provider.calls.values()) == 3 and set(provider.calls.values()) == {1}
    assert delayed(sqs, settings.jobs_queue_url) == 3
    with engine.connect() as conn:
        in_flight = conn.execute(
            text("SELECT in_flight FROM flow_limits WHERE key = 'model:narrow'")
        ).scalar()
    assert in_flight == 0  # both admitted calls released their slots


def test_a_mixed_batch_without_a_queue_fails_the_records_that_must_come_back(
    engine: Engine, pool: Pool, settings: Settings
) -> None:
    sync(engine, MIXED)
    fan_out(engine, settings)
    records, _ = mixed_batch(engine)
    result = BatchRunner(pool, settings, None).run(records)
    failed = set(result.failed)
    assert {"bad-json", "bad-uuid", "not-due"} <= failed
    # One of narrow's three waits: its record is the job's way back.
    assert len(failed & {"dup-1", "narrow-1", "narrow-2"}) == 1 and len(failed) == 4
    assert result.outcomes["live"] == Outcome.SKIPPED  # coming back was optional
    assert result.outcomes["good"] == Outcome.SUCCEEDED


def test_a_short_wait_is_waited_out_in_the_invocation(
    engine: Engine, pool: Pool, settings: Settings
) -> None:
    single_job_catalog(engine, runs=2)
    fan_out(engine, settings)
    first, second = job_ids(engine)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE prompt_jobs SET next_attempt_at = now() + interval '0.3 s' WHERE id = :i"),
            {"i": second},
        )
    result = BatchRunner(pool, settings, None).run(
        [Record("a", body(first)), Record("b", body(second))], remaining_ms=lambda: 60_000
    )
    assert result.failed == [] and set(result.outcomes.values()) == {Outcome.SUCCEEDED}
    assert statuses(engine) == {"succeeded": 2}


def test_paused_and_limited_models_take_no_attempt(
    engine: Engine, pool: Pool, settings: Settings, sqs: Any
) -> None:
    sync(engine, MIXED)
    fan_out(engine, settings)
    receive_all(sqs, settings.jobs_queue_url, delete=True)
    with engine.begin() as conn:
        conn.execute(text("UPDATE flow_limits SET paused = true WHERE key = 'model:ok'"))
    ids = job_ids(engine, "m.slug IN ('ok', 'narrow')")
    runner = BatchRunner(pool, settings, JobQueue(settings.jobs_queue_url or ""))
    result = runner.run([Record(f"r{i}", body(j), "rh") for i, j in enumerate(ids)])
    assert Counter(result.outcomes.values()) == {Outcome.SUCCEEDED: 2, Outcome.WAITING: 6}
    with engine.connect() as conn:
        waits = Counter(
            (r[0], r[1], (r[2] or "").split(":")[0])
            for r in conn.execute(
                text(
                    "SELECT status, attempt_count, wait_reason FROM prompt_jobs WHERE id = ANY(:ids)"
                ),
                {"ids": ids},
            )
        )
    assert waits == {
        ("succeeded", 1, ""): 2,
        ("queued", 0, "paused"): 4,
        ("queued", 0, "max_concurrency"): 2,
    }


class RefusingSqs:
    """The real (moto) SQS client, counting the send calls; SendMessageBatch entries for the
    jobs in `refuse` are reported failed (SenderFault), as SQS reports an entry it refuses."""

    def __init__(self, sqs: Any, refuse: set[str]) -> None:
        self.sqs = sqs
        self.refuse = refuse
        self.calls: Counter[str] = Counter()

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls["SendMessageBatch"] += 1
        refused = [e for e in Entries if json.loads(e["MessageBody"])["job_id"] in self.refuse]
        taken = [e for e in Entries if e not in refused]
        answer = self.sqs.send_message_batch(QueueUrl=QueueUrl, Entries=taken) if taken else {}
        failed = [
            {"Id": e["Id"], "SenderFault": True, "Code": "InvalidParameterValue", "Message": "no"}
            for e in refused
        ]
        return {"Successful": answer.get("Successful", []), "Failed": failed}

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls["SendMessage"] += 1
        return dict(self.sqs.send_message(**kwargs))


def test_the_jobs_of_a_batch_that_must_come_back_go_ten_to_a_call(
    engine: Engine, pool: Pool, settings: Settings, sqs: Any
) -> None:
    """30 jobs of a model that runs 2 at a time: 28 come back, sent in 3 SendMessageBatch
    calls, each message delayed; a message SQS refuses fails its record (the
    record is then the job's way back), the others' records are acknowledged."""
    sync(
        engine,
        """
models:
  - {slug: narrow, provider: offline, model: n-1, max_concurrency: 2}
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: 30}
""",
    )
    fan_out(engine, settings)
    receive_all(sqs, settings.jobs_queue_url, delete=True)
    ids = job_ids(engine)
    refused = {str(ids[-1])}  # admission takes the jobs in order: the last one waits
    client = RefusingSqs(sqs, refused)
    runner = BatchRunner(pool, settings, JobQueue(settings.jobs_queue_url or "", sqs=client))
    result = runner.run([Record(f"r{i}", body(j), "rh") for i, j in enumerate(ids)])
    assert Counter(result.outcomes.values()) == {Outcome.SUCCEEDED: 2, Outcome.WAITING: 27}
    assert result.failed == [f"r{len(ids) - 1}"]
    assert client.calls == {"SendMessageBatch": 3}
    assert delayed(sqs, settings.jobs_queue_url) == 27
    assert statuses(engine) == {"succeeded": 2, "queued": 28}


def test_concurrent_batches_with_overlapping_ids_run_each_job_once(
    engine: Engine, pool: Pool, settings: Settings
) -> None:
    sync(
        engine,
        """
models:
  - {slug: a, provider: offline, model: a-1, max_concurrency: 100}
  - {slug: b, provider: offline, model: b-1, params: {latency_ms: 5}, max_concurrency: 100}
prompts:
  - {slug: p1, text: "one", schedule: daily, runs: 10}
  - {slug: p2, text: "two", schedule: daily, runs: 10}
""",
    )
    fan_out(engine, settings)
    ids = job_ids(engine)
    assert len(ids) == 40
    deliveries = [j for j in ids for _ in range(3)]
    random.Random(5).shuffle(deliveries)
    batches = [deliveries[i : i + 10] for i in range(0, len(deliveries), 10)]
    provider = CountingProvider()
    runner = BatchRunner(
        pool, settings, None, providers=lambda n, s: provider, threads=ThreadPoolExecutor(4)
    )
    counter = itertools.count()
    barrier = threading.Barrier(6)

    def run(batch: list[uuid.UUID]) -> Counter[Outcome]:
        if next(counter) < 6:
            barrier.wait(10)  # the first batches start together
        records = [Record(f"m{next(counter)}", body(j)) for j in batch]
        result = runner.run(records)
        assert result.failed == []
        return Counter(result.outcomes.values())

    with ThreadPoolExecutor(6) as threads:
        outcomes = sum(threads.map(run, batches), Counter[Outcome]())
    assert outcomes[Outcome.SUCCEEDED] == 40
    assert outcomes[Outcome.SKIPPED] == len(deliveries) - 40
    assert len(provider.calls) == 40 and set(provider.calls.values()) == {1}
    assert statuses(engine) == {"succeeded": 40}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM responses")).scalar() == 40
        assert conn.execute(text("SELECT sum(in_flight) FROM flow_limits")).scalar() == 0


class Overtaken(OfflineProvider):
    """Answers; meanwhile the lease of `victim` expires and a newer attempt claims it."""

    def __init__(self, engine: Engine, victim: uuid.UUID) -> None:
        self.engine = engine
        self.victim = victim
        self.newer: jobs.ClaimedJob | None = None
        self.lock = threading.Lock()

    def answer(self, call: ModelCall, prompt: str, system: str | None) -> Completion:
        with self.lock:
            if self.newer is None:
                with self.engine.begin() as conn:
                    conn.execute(
                        text(
                            "UPDATE prompt_jobs SET lease_expires_at = now() - interval '1 s' "
                            "WHERE id = :i"
                        ),
                        {"i": self.victim},
                    )
                    self.newer = jobs.claim_job(conn, self.victim, 60)
        return super().answer(call, prompt, system)


def test_a_stale_attempt_loses_and_the_rest_of_its_batch_is_stored(
    engine: Engine, pool: Pool, settings: Settings
) -> None:
    single_job_catalog(engine, runs=3)
    fan_out(engine, settings)
    ids = job_ids(engine)
    provider = Overtaken(engine, ids[0])
    runner = BatchRunner(pool, settings, None, providers=lambda n, s: provider)
    result = runner.run([Record(str(i), body(j)) for i, j in enumerate(ids)])
    assert result.outcomes == {"0": Outcome.STALE, "1": Outcome.SUCCEEDED, "2": Outcome.SUCCEEDED}
    with engine.connect() as conn:
        stored = {r[0] for r in conn.execute(text("SELECT job_id FROM responses"))}
        mentioned = {r[0] for r in conn.execute(text("SELECT job_id FROM entity_mentions"))}
    assert stored == mentioned == {ids[1], ids[2]}  # nothing of the stale attempt
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, attempt_count FROM prompt_jobs WHERE id = :i"), {"i": ids[0]}
        ).one()
    assert tuple(row) == ("processing", 2)  # the newer attempt still owns it
    assert provider.newer is not None
    with engine.begin() as conn:
        assert jobs.complete_job(conn, provider.newer, jobs.Usage(1, 1, Decimal(0)))


def count_trips() -> tuple[itertools.count[int], Any]:
    trips = itertools.count()
    flush = pg8000_fast._flush

    def counted(sock: Any) -> None:
        next(trips)
        flush(sock)

    return trips, counted


def test_round_trips_per_batch(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of the largest size the template deploys, one limited model's jobs: claimed in
    one statement (lock, admit, claim) and finished in one (store, complete, release)."""
    from promptrun.db.pool import dispose_pools, get_pool

    sync(
        engine,
        f"""
models:
  - {{slug: m, provider: offline, model: m-1, max_concurrency: {MAX_BATCH}}}
prompts:
  - {{slug: first, text: "Which ERP?", schedule: daily, runs: 1}}
  - {{slug: p, text: "Which CRM?", schedule: daily, runs: {MAX_BATCH}}}
""",
    )
    fan_out(engine, settings)
    fast = get_pool(settings)  # the processor's: pg8000_fast, 2 connections
    try:
        runner = BatchRunner(fast, settings, None)
        of_p = "j.prompt_id = (SELECT id FROM prompts WHERE slug = 'p')"
        records = [Record(str(i), body(j)) for i, j in enumerate(job_ids(engine, of_p))]
        (first,) = job_ids(engine, f"NOT {of_p}")
        runner.run([Record("first", body(first))])  # connections opened, statements prepared
        trips, counted = count_trips()
        monkeypatch.setattr(pg8000_fast, "_flush", counted)
        result = runner.run(records)
        ran = next(trips)
        assert Counter(result.outcomes.values()) == {Outcome.SUCCEEDED: MAX_BATCH}
        # Two statements, each its own transaction (no BEGIN, no COMMIT): one locks the jobs
        # and their limits rows, takes the slots and claims; one stores every answer,
        # completes the jobs and releases the slots.
        assert ran == 2, ran
        trips, counted = count_trips()
        monkeypatch.setattr(pg8000_fast, "_flush", counted)
        result = runner.run(records)  # all done already: nothing to claim
        assert set(result.outcomes.values()) == {Outcome.SKIPPED}
        assert next(trips) == 1  # one statement
    finally:
        dispose_pools()


class AllAtOnce(OfflineProvider):
    """The offline model, answering only once `calls` calls are in flight together."""

    def __init__(self, calls: int) -> None:
        self.together = threading.Barrier(calls)

    def answer(self, call: ModelCall, prompt: str, system: str | None) -> Completion:
        self.together.wait(10)  # broken (and every call failed) when fewer ever overlap
        return super().answer(call, prompt, system)


def test_the_handler_makes_every_call_of_the_largest_batch_side_by_side(
    engine: Engine,
    pool: Pool,
    settings: Settings,
    sqs: Any,
    monkeypatch: pytest.MonkeyPatch,
    db_url: str,
) -> None:
    """A batch of template.yaml's largest ProcessorBatchSize: the handler's call threads and
    the invocation's own make all its model calls at once."""
    from promptrun.local.lambda_runtime import load_handler
    from promptrun.settings import get_settings

    sync(
        engine,
        f"""
models:
  - {{slug: m, provider: offline, model: m-1, params: {{latency_ms: 1}}, max_concurrency: 1000}}
prompts:
  - {{slug: p, text: "Which CRM?", schedule: daily, runs: {MAX_BATCH}}}
""",
    )
    fan_out(engine, settings)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("JOBS_QUEUE_URL", settings.jobs_queue_url or "")
    get_settings.cache_clear()
    try:
        handler = load_handler("processor", fresh=True)
    finally:
        get_settings.cache_clear()
    provider = AllAtOnce(MAX_BATCH)
    runner = BatchRunner(
        pool, settings, None, providers=lambda n, s: provider, threads=handler.threads
    )
    result = runner.run([Record(str(i), body(j)) for i, j in enumerate(job_ids(engine))])
    assert Counter(result.outcomes.values()) == {Outcome.SUCCEEDED: MAX_BATCH}
    assert statuses(engine) == {"succeeded": MAX_BATCH}


def test_one_job_that_cannot_be_stored_costs_only_itself(
    engine: Engine, pool: Pool, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the batch's store fail, each job is stored on its own: the one that fails
    again is retried as an unexpected error, the others succeed."""
    from promptrun import batch_jobs

    single_job_catalog(engine, runs=3)
    fan_out(engine, settings)
    ids = job_ids(engine)

    def broken(conn: Any, finished: Any) -> Any:
        raise RuntimeError("statement failed")

    monkeypatch.setattr(batch_jobs, "complete_batch", broken)
    runner = BatchRunner(pool, settings, None)
    original = runner.caller.finish

    def finish(job: Any, *args: Any) -> None:
        if job.id == ids[1]:
            raise RuntimeError("this job's row is bad")
        original(job, *args)

    monkeypatch.setattr(runner.caller, "finish", finish)
    result = runner.run([Record(str(i), body(j)) for i, j in enumerate(ids)])
    assert result.outcomes == {"0": Outcome.SUCCEEDED, "2": Outcome.SUCCEEDED}
    assert result.failed == ["1"]  # retried later: without a queue, its record comes back
    row = {r["id"]: r for r in _rows(engine)}[ids[1]]
    assert (row["status"], row["error_kind"]) == ("queued", "internal")


def _rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT * FROM prompt_jobs")).mappings())


def test_handler_answers_a_batch_with_its_failures(
    engine: Engine,
    settings: Settings,
    sqs: Any,
    monkeypatch: pytest.MonkeyPatch,
    db_url: str,
) -> None:
    from promptrun.local.lambda_runtime import LocalContext, load_handler
    from promptrun.local.poller import sqs_event
    from promptrun.settings import get_settings

    single_job_catalog(engine, runs=2)
    fan_out(engine, settings)
    msgs = receive_all(sqs, settings.jobs_queue_url)
    event = sqs_event(msgs + msgs[:1], "arn:aws:sqs:us-east-1:123456789012:jobs", "us-east-1")
    event["Records"][2] = dict(event["Records"][2], messageId="copy")
    event["Records"].append(dict(event["Records"][0], messageId="bad", body="{}"))
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("JOBS_QUEUE_URL", settings.jobs_queue_url or "")
    get_settings.cache_clear()
    try:
        handler = load_handler("processor", fresh=True)
        result = handler.lambda_handler(event, LocalContext("processor", 60))
    finally:
        get_settings.cache_clear()
    assert result == {"batchItemFailures": [{"itemIdentifier": "bad"}]}
    assert statuses(engine) == {"succeeded": 2}
    # Nothing had to go back to the queue: no SQS client was made (boto3's cost is spared).
    assert handler.queue._sqs is None


def test_admitting_several_groups_at_once_never_exceeds_a_limit(
    engine: Engine, settings: Settings
) -> None:
    """Two groups of one model in one transaction: the second's recount (the count looked
    full) still sees the jobs the first was granted and has not yet claimed."""
    from promptrun import limits

    sync(engine, MIXED)
    with engine.begin() as conn:
        # A count leaked by dead workers (2 of 3 slots), not recounted for long.
        conn.execute(
            text(
                "UPDATE flow_limits SET max_concurrency = 3, in_flight = 2, recounted_at = 0 "
                "WHERE key = 'model:narrow'"
            )
        )
    demand = limits.Demand(requests=2, tokens=100)
    with engine.begin() as conn:
        grants = limits.admit_many(
            conn,
            [
                limits.Request("narrow", "batch-a", 1, demand),
                limits.Request("narrow", "batch-b", 3, demand),
                limits.Request("ok", "batch-a", 4, demand),
            ],
        )
        assert [a.granted for a in grants] == [1, 2, 4]
        in_flight = conn.execute(
            text("SELECT in_flight FROM flow_limits WHERE key = 'model:narrow'")
        ).scalar()
    assert in_flight == 3
    assert grants[1].reason is not None and grants[1].reason.startswith("max_concurrency")


def test_errors_in_a_batch_take_the_per_job_path(
    engine: Engine, pool: Pool, settings: Settings, sqs: Any
) -> None:
    """A 429 retried (a delayed message, the record acknowledged), a permanent error failed, a
    job whose last attempt's worker died failed as exhausted; the rest of the batch stored;
    every slot released."""
    sync(
        engine,
        """
models:
  - {slug: ok, provider: offline, model: ok-1, max_concurrency: 5}
  - {slug: flaky, provider: offline, model: f-1, max_concurrency: 5,
     params: {simulate_error: rate_limit, simulate_error_attempts: 1, retry_after: 2}}
  - {slug: broken, provider: offline, model: b-1, max_concurrency: 5, params: {simulate_error: auth}}
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: 2}
""",
    )
    fan_out(engine, settings)
    receive_all(sqs, settings.jobs_queue_url, delete=True)
    ok = job_ids(engine, "m.slug = 'ok'")
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE prompt_jobs SET status = 'processing', attempt_count = max_attempts, "
                "lease_expires_at = now() - interval '1 minute' WHERE id = :i"
            ),
            {"i": ok[1]},
        )
    named = {
        "ok": ok[0],
        "dead": ok[1],
        "flaky": job_ids(engine, "m.slug = 'flaky'")[0],
        "broken": job_ids(engine, "m.slug = 'broken'")[0],
    }
    runner = BatchRunner(pool, settings, JobQueue(settings.jobs_queue_url or ""))
    result = runner.run([Record(m, body(j), f"rh-{m}") for m, j in named.items()])
    assert result.failed == []
    assert result.outcomes == {
        "ok": Outcome.SUCCEEDED,
        "dead": Outcome.FAILED,
        "flaky": Outcome.RETRYING,
        "broken": Outcome.FAILED,
    }
    rows = {r["id"]: r for r in _rows(engine)}
    assert rows[named["dead"]]["error_kind"] == "attempts_exhausted"
    assert (rows[named["broken"]]["status"], rows[named["broken"]]["error_kind"]) == (
        "failed",
        "auth",
    )
    flaky = rows[named["flaky"]]
    assert (flaky["status"], flaky["attempt_count"], flaky["error_kind"]) == (
        "queued",
        1,
        "rate_limit",
    )
    assert delayed(sqs, settings.jobs_queue_url) == 1  # the retry's own message
    with engine.connect() as conn:
        limits_rows = {
            r[0]: r[1]
            for r in conn.execute(
                text("SELECT key, in_flight FROM flow_limits WHERE key LIKE 'model:%'")
            )
        }
        throttled = conn.execute(
            text("SELECT throttled FROM flow_limits WHERE key = 'model:flaky'")
        ).scalar()
    assert limits_rows == {"model:ok": 0, "model:flaky": 0, "model:broken": 0}
    assert throttled == 1  # the 429 slowed the model down for every processor


def test_a_claim_reads_each_job_context_as_the_catalogue_has_it_now(
    engine: Engine, pool: Pool, settings: Settings
) -> None:
    """The prompt version and models travel as one text per job, parsed once per instance:
    a model the catalogue changed between two claims is a new text, never a cached old one."""
    from promptrun import batch_jobs

    catalogue = """
models:
  - {slug: m, provider: offline, model: m-1, base_url: "http://m.example/v1",
     params: {temperature: 0.25, max_tokens: 99}, price_per_mtok: {input: 1.1, output: 2.7}}
  - {slug: x, provider: offline, model: x-1, price_per_mtok: {input: 0.05, output: 0.1}}
%s
prompts:
  - {slug: p, text: "Which CRM?", system: "Answer briefly.", schedule: daily, runs: 2,
     models: [m]}
"""
    sync(engine, catalogue % "extraction_model: x")
    fan_out(engine, settings)
    first_id, second_id = job_ids(engine)
    with batch_jobs.autocommit(pool) as conn:
        claim = batch_jobs.claim_quick(conn, [first_id], 60)
    assert claim is not None and claim.claimed == {first_id}
    first = claim.jobs[first_id].job
    assert first is not None
    assert (first.prompt_slug, first.prompt_text, first.system_text) == (
        "p",
        "Which CRM?",
        "Answer briefly.",
    )
    assert first.model.params == {"temperature": 0.25, "max_tokens": 99}
    assert first.model.base_url == "http://m.example/v1"
    assert first.model.price_input_per_mtok == Decimal("1.1")
    assert first.model.price_output_per_mtok == Decimal("2.7")
    assert (first.extraction_model.slug, first.extraction_model.price_input_per_mtok) == (
        "x",
        Decimal("0.05"),
    )

    changed = catalogue.replace("temperature: 0.25", "temperature: 0.75") % ""
    sync(engine, changed)  # no extraction model any more: the model extracts its own
    with batch_jobs.autocommit(pool) as conn:
        claim = batch_jobs.claim_quick(conn, [second_id], 60)
    assert claim is not None and claim.claimed == {second_id}
    second = claim.jobs[second_id].job
    assert second is not None
    assert second.model.params == {"temperature": 0.75, "max_tokens": 99}
    assert second.extraction_model == second.model
    assert first.model.params == {"temperature": 0.25, "max_tokens": 99}  # untouched
    # the per-job path reads the same columns
    with engine.begin() as conn:
        conn.execute(text("UPDATE prompt_jobs SET status = 'queued', attempt_count = 0"))
        again = jobs.claim_job(conn, second_id, 60)
    assert again is not None and (again.model, again.extraction_model) == (
        second.model,
        second.extraction_model,
    )
