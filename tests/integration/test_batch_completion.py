"""promptrun.batch.completed once per batch, promptrun.visibility.changed for significant
drops of own brands, failure-rate metrics: real processor handler, PostgreSQL and moto's
EventBridge delivering to a queue."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text

from promptrun import batch_completion, events
from promptrun.aws import JobQueue
from promptrun.catalog import load_catalog, sync_catalog
from promptrun.db.engine import engine_for_url
from promptrun.db.pool import Pool
from promptrun.errors import PromptrunError
from promptrun.fanout import FanoutRequest, run_fanout
from promptrun.local.lambda_runtime import LocalContext, load_handler
from promptrun.local.poller import sqs_event
from promptrun.settings import Settings, get_settings
from tests.support.eventbus import EventCapture, capture_events
from tests.support.results import BRANDS_CATALOG, Answers, day
from tests.support.sqs import receive_all
from tests.support.stack import MotoServer

AT = datetime(2026, 11, 22, 13, 5, tzinfo=UTC)
CATALOG = """
models:
  - {slug: good, provider: offline, model: good-1, price_per_mtok: {input: 1.0, output: 2.0}}
  - {slug: bad, provider: offline, model: bad-1, params: {simulate_error: auth}}
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: 3}
"""


@pytest.fixture
def bus(moto_server: MotoServer) -> Iterator[EventCapture]:
    with capture_events(moto_server.endpoint) as capture:
        yield capture


@pytest.fixture
def processor(settings: Settings, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("JOBS_QUEUE_URL", settings.jobs_queue_url or "")
    get_settings.cache_clear()
    yield load_handler("processor", fresh=True).lambda_handler
    get_settings.cache_clear()


def test_a_batch_completes_once_through_the_processor_handler(
    engine: Engine,
    settings: Settings,
    sqs: Any,
    bus: EventCapture,
    processor: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sync_catalog(engine, load_catalog(CATALOG))
    run_fanout(engine, JobQueue(settings.jobs_queue_url or ""), FanoutRequest(at=AT), settings)
    msgs = receive_all(sqs, settings.jobs_queue_url)
    assert len(msgs) == 6
    arn = "arn:aws:sqs:us-east-1:123456789012:jobs"
    # Five jobs first: the batch is not finished, nothing is sent.
    processor(sqs_event(msgs[:5], arn, "us-east-1"), LocalContext("processor", 60))
    assert bus.events() == []
    # The last one, delivered twice at once (SQS is at least once), and once more later.
    with ThreadPoolExecutor(2) as pool:
        list(
            pool.map(
                lambda _: processor(
                    sqs_event(msgs[5:], arn, "us-east-1"), LocalContext("processor", 60)
                ),
                range(2),
            )
        )
    processor(sqs_event(msgs, arn, "us-east-1"), LocalContext("processor", 60))
    sent = bus.events(events.BATCH_COMPLETED)
    assert len(sent) == 1
    detail = sent[0]["detail"]
    assert sent[0]["source"] == "promptrun"
    assert detail["batch_key"] == "2026-11-22" and detail["counts"] == {"succeeded": 3, "failed": 3}
    assert detail["failure_rate"] == 0.5 and detail["cost_usd"] > 0
    assert detail["duration_seconds"] is not None and detail["duration_seconds"] >= 0
    by_model = {m["model"]: m for m in detail["by_model"]}
    assert by_model["bad"]["failure_rate"] == 1.0 and by_model["good"]["failure_rate"] == 0.0
    # The failure-rate metric, per model and for all (the alarm's), as EMF lines.
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    rates = {m["model"]: m["BatchFailureRate"] for m in emf if "BatchFailureRate" in m}
    assert rates == {"good": [0.0], "bad": [100.0], "all": [50.0]}
    # A sweep finds nothing more to send.
    assert batch_completion.sweep(engine) == []
    assert len(bus.events(events.BATCH_COMPLETED)) == 1


def test_many_concurrent_completers_send_one_event(engine: Engine, bus: EventCapture) -> None:
    sync_catalog(engine, load_catalog(BRANDS_CATALOG))
    a = Answers(engine)
    for run in range(3):
        a.add("2026-01-01", day(0), "alpha", "crm", run, ["Acme"])
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda _: batch_completion.complete(engine, ["2026-01-01"]), range(8))
        )
    assert sum(len(r) for r in results) == 1
    assert len(bus.events(events.BATCH_COMPLETED)) == 1


def test_after_an_invocation_the_engine_is_made_only_for_a_finished_batch_and_alone(
    engine: Engine, pool: Pool, db_url: str, bus: EventCapture
) -> None:
    """The processor's completion check runs on its pool; the SQLAlchemy engine the visibility
    comparison needs is made only for a finished batch, once the pool holds no connection
    (an instance never holds more than 2), and closed after."""
    sync_catalog(engine, load_catalog(BRANDS_CATALOG))
    a = Answers(engine)
    a.add("2026-01-01", day(0), "alpha", "crm", 0, ["Acme"])
    a.add("2026-01-01", day(0), "alpha", "crm", 1, [], status="queued")
    with engine.connect() as conn:
        ids = [str(i) for i in conn.execute(text("SELECT id FROM prompt_jobs")).scalars()]
    made: list[int] = []
    completer = engine_for_url(db_url, pool_size=1)

    def engine_factory() -> Engine:
        made.append(pool.open_connections)
        return completer

    handler = batch_completion.after_invocation(lambda: pool, engine_factory)(lambda e, c: "ok")
    event = {"Records": [{"body": json.dumps({"job_id": i})} for i in ids]}
    assert handler(event, None) == "ok"
    assert made == [] and bus.events() == []  # one job still queued: no engine
    with engine.begin() as conn:
        conn.execute(text("UPDATE prompt_jobs SET status = 'succeeded'"))
    handler(event, None)
    assert made == [0]  # the pool's idle connection closed before the engine connected
    assert len(bus.events(events.BATCH_COMPLETED)) == 1
    assert completer.pool.checkedin() == 0  # and the engine's own closed after


def test_the_completion_check_reads_the_ids_of_well_formed_records_only() -> None:
    """What after_invocation checks: a record whose body is not a job message is left out,
    never an error (its record has failed already, or was a duplicate)."""
    good = str(uuid.uuid4())
    bodies = [json.dumps({"job_id": good}), "not json", json.dumps({"job_id": 5}), "[1]"]
    records: list[dict[str, Any]] = [{"body": b} for b in bodies]
    records += [{}, {"body": json.dumps({"job_id": "short"})}]
    assert batch_completion.job_ids({"Records": records}) == [good]
    assert batch_completion.job_ids({}) == []


def test_the_check_finds_the_batches_prompt_jobs_has_nothing_live_in(
    engine: Engine, settings: Settings
) -> None:
    """The check counts live jobs from the summaries: through claims, finishes, a retry and
    compaction, it names exactly the batches that prompt_jobs itself has nothing live in."""
    from promptrun.fanout import create_jobs

    sync_catalog(engine, load_catalog(CATALOG))
    for at in (AT, datetime(2026, 11, 23, 13, tzinfo=UTC)):
        create_jobs(engine, FanoutRequest(at=at), settings)
    with engine.connect() as conn:
        ids = [str(r[0]) for r in conn.execute(text("SELECT id FROM prompt_jobs"))]
        second = [
            str(r[0])
            for r in conn.execute(text("SELECT id FROM prompt_jobs WHERE batch_key = '2026-11-23'"))
        ]

    def step(sql: str) -> None:
        with engine.begin() as conn:
            conn.execute(text(sql))

    def truth() -> list[str]:
        with engine.connect() as conn:
            return sorted(
                r[0]
                for r in conn.execute(
                    text(
                        "SELECT batch_key FROM prompt_jobs GROUP BY batch_key HAVING count(*) "
                        "FILTER (WHERE status IN ('queued', 'processing')) = 0"
                    )
                )
            )

    first = "batch_key = '2026-11-22'"
    states = [
        (f"UPDATE prompt_jobs SET status = 'processing' WHERE {first}", []),
        (f"UPDATE prompt_jobs SET status = 'succeeded' WHERE {first} AND run_index = 0", []),
        (f"UPDATE prompt_jobs SET status = 'failed' WHERE {first}", ["2026-11-22"]),
        ("SELECT promptrun_compact_summaries()", ["2026-11-22"]),
        (f"UPDATE prompt_jobs SET status = 'queued' WHERE {first} AND run_index = 1", []),
        ("UPDATE prompt_jobs SET status = 'cancelled'", ["2026-11-22", "2026-11-23"]),
        ("SELECT promptrun_compact_summaries()", ["2026-11-22", "2026-11-23"]),
        ("UPDATE prompt_jobs SET status = 'processing' WHERE run_index = 2", []),
    ]
    assert batch_completion.finished_batches(engine, ids) == truth() == []
    for sql, finished in states:
        step(sql)
        assert batch_completion.finished_batches(engine, ids) == truth() == finished, sql
        # only the batches of the jobs it is given
        only_second = [b for b in finished if b == "2026-11-23"]
        assert batch_completion.finished_batches(engine, second) == only_second, sql


def test_an_unfinished_batch_is_not_completed(engine: Engine, bus: EventCapture) -> None:
    sync_catalog(engine, load_catalog(BRANDS_CATALOG))
    a = Answers(engine)
    a.add("2026-01-01", day(0), "alpha", "crm", 0, ["Acme"])
    a.add("2026-01-01", day(0), "alpha", "crm", 1, [], status="queued")
    assert batch_completion.complete(engine, ["2026-01-01"]) == []
    assert batch_completion.sweep(engine) == []
    assert bus.events() == []


def test_a_significant_drop_of_an_own_brand_emits_visibility_changed(
    engine: Engine, bus: EventCapture
) -> None:
    sync_catalog(engine, load_catalog(BRANDS_CATALOG))
    a = Answers(engine)
    for run in range(12):
        a.add("2026-01-01", day(0), "alpha", "crm", run, ["Acme"] if run < 10 else ["Globex"])
    batch_completion.complete(engine, ["2026-01-01"])
    # Globex (a competitor) also drops; only the own brand's drop is an event.
    for run in range(12):
        a.add(
            "2026-01-02",
            day(1),
            "alpha",
            "crm",
            run,
            ["Acme", "Globex"] if run < 2 else ["Initech"],
        )
    batch_completion.complete(engine, ["2026-01-02"])
    changed = bus.events(events.VISIBILITY_CHANGED)
    assert {(e["detail"]["brand"], e["detail"]["model"]) for e in changed} == {
        ("acme", "alpha"),
        ("acme", None),
    }
    d = changed[0]["detail"]
    assert d["batch_key"] == "2026-01-02" and d["previous_batch_key"] == "2026-01-01"
    assert (d["previous_mention_rate"], d["mention_rate"]) == (0.8333, 0.1667)
    assert d["p_value"] < 0.05 and d["test"].startswith("Fisher")
    assert len(bus.events(events.BATCH_COMPLETED)) == 2


def test_a_refused_put_events_is_sent_by_a_later_sweep(
    engine: Engine, bus: EventCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync_catalog(engine, load_catalog(BRANDS_CATALOG))
    Answers(engine).add("2026-01-01", day(0), "alpha", "crm", 0, ["Acme"])
    monkeypatch.setenv("EVENT_BUS_NAME", "no-such-bus")
    with pytest.raises(Exception) as err:
        batch_completion.complete(engine, ["2026-01-01"])
    assert isinstance(err.value, PromptrunError) or "no-such-bus" in str(err.value)
    monkeypatch.delenv("EVENT_BUS_NAME")
    # Claimed by the failed sender: nobody else sends until the claim lapses.
    assert batch_completion.sweep(engine) == []
    with engine.begin() as conn:
        conn.execute(text("UPDATE batch_completions SET claimed_until = now() - interval '1 s'"))
    assert batch_completion.sweep(engine) == ["2026-01-01"]
    assert len(bus.events(events.BATCH_COMPLETED)) == 1
