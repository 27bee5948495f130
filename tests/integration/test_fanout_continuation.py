"""A fan-out that runs out of time hands the rest to its continuation queue; the continuation
sends it; two fan-outs at once never send a row twice. Real PostgreSQL, moto's SQS."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text

from promptrun import fanout
from promptrun.aws import CONTINUE_BODY, ContinuationQueue, JobQueue
from promptrun.fanout import FanoutRequest, create_jobs, parse_event, run_fanout, send_until
from promptrun.local.poller import sqs_event
from promptrun.settings import Settings
from tests.conftest import sync
from tests.support.sqs import receive_all

AT = datetime(2026, 11, 22, 13, 5, tzinfo=UTC)
CATALOG = """
models:
  - {slug: m1, provider: offline, model: m1}
  - {slug: m2, provider: offline, model: m2}
  - {slug: m3, provider: offline, model: m3}
prompts:
""" + "".join(f"  - {{slug: p{i}, text: q{i}, schedule: daily, runs: 5}}\n" for i in range(10))
TOTAL = 10 * 3 * 5


def sent_ids(sqs: Any, queue_url: str) -> list[str]:
    return [json.loads(m["Body"])["job_id"] for m in receive_all(sqs, queue_url, delete=True)]


def unsent(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM prompt_jobs WHERE enqueued_at IS NULL")
            ).scalar_one()
        )


def clock(chunks_allowed: int) -> Callable[[], int]:
    """A Lambda clock with time for `chunks_allowed` chunks, then none."""
    calls = [0]

    def remaining_ms() -> int:
        calls[0] += 1
        return 600_000 if calls[0] <= chunks_allowed else fanout.RESERVE_MS - 1

    return remaining_ms


@pytest.fixture
def continue_queue(sqs: Any) -> str:
    return str(sqs.create_queue(QueueName=f"fanout-continue-{time.monotonic_ns()}")["QueueUrl"])


def test_out_of_time_hands_the_rest_to_a_continuation_that_sends_it(
    engine: Engine, settings: Settings, sqs: Any, continue_queue: str, monkeypatch: Any
) -> None:
    sync(engine, CATALOG)
    monkeypatch.setattr(fanout, "SEND_CHUNK", 40)
    queue = JobQueue(settings.jobs_queue_url or "")
    more = ContinuationQueue(continue_queue)

    first = run_fanout(engine, queue, FanoutRequest(at=AT), settings, clock(2), more)
    assert (first.created, first.sent, first.continued) == (TOTAL, 80, True)
    assert unsent(engine) == TOTAL - 80
    messages = receive_all(sqs, continue_queue, delete=True)
    assert [json.loads(m["Body"]) for m in messages] == [CONTINUE_BODY]

    # The continuation arrives as the SQS event of the fan-out's own queue.
    event = sqs_event(messages, "arn:aws:sqs:us-east-1:000000000000:continue", "us-east-1")
    request = parse_event(event)
    assert request.continuation
    second = run_fanout(engine, queue, request, settings, clock(100), more)
    assert (second.created, second.sent, second.continued) == (0, TOTAL - 80, False)
    assert unsent(engine) == 0 and not receive_all(sqs, continue_queue)

    ids = sent_ids(sqs, settings.jobs_queue_url or "")
    assert len(ids) == TOTAL and len(set(ids)) == TOTAL  # each job once, none lost


def test_no_continuation_when_nothing_was_sent(
    engine: Engine, settings: Settings, sqs: Any, continue_queue: str
) -> None:
    sync(engine, CATALOG)
    queue = JobQueue(settings.jobs_queue_url or "")
    result = run_fanout(
        engine, queue, FanoutRequest(at=AT), settings, clock(0), ContinuationQueue(continue_queue)
    )
    # No time at all: nothing sent, so no chain of continuations that send nothing either.
    assert (result.created, result.sent, result.continued) == (TOTAL, 0, False)
    assert not receive_all(sqs, continue_queue)


def test_two_fanouts_at_once_send_each_row_once(
    engine: Engine, settings: Settings, sqs: Any, monkeypatch: Any
) -> None:
    sync(engine, CATALOG)
    monkeypatch.setattr(fanout, "SEND_CHUNK", 7)
    create_jobs(engine, FanoutRequest(at=AT), settings)
    start = threading.Barrier(3)

    def one() -> int:
        start.wait()
        return send_until(engine, JobQueue(settings.jobs_queue_url or ""), settings).sent

    with ThreadPoolExecutor(3) as pool:
        sent = sum(pool.map(lambda _: one(), range(3)))
    ids = sent_ids(sqs, settings.jobs_queue_url or "")
    assert sent == TOTAL and Counter(ids).most_common(1)[0][1] == 1 and len(ids) == TOTAL


def test_rerun_inserts_nothing_and_counts_what_exists(engine: Engine, settings: Settings) -> None:
    sync(engine, CATALOG)
    first = create_jobs(engine, FanoutRequest(at=AT), settings)
    again = create_jobs(engine, FanoutRequest(at=AT.replace(hour=20)), settings)
    assert (first.created, again.created, again.existing) == (TOTAL, 0, TOTAL)
    assert again.batches == {"2026-11-22": {"created": 0, "existing": TOTAL}}


def test_rerun_after_the_catalogue_grew_creates_only_the_new_rows(
    engine: Engine, settings: Settings
) -> None:
    """A model added and a prompt's runs raised since the first run: the re-run creates
    exactly the missing rows and leaves the others as they were."""
    sync(engine, CATALOG)
    create_jobs(engine, FanoutRequest(at=AT), settings)
    with engine.connect() as conn:
        before = dict(conn.execute(text("SELECT id, updated_at FROM prompt_jobs")).all())
    grown = CATALOG.replace(
        "  - {slug: m3, provider: offline, model: m3}\n",
        "  - {slug: m3, provider: offline, model: m3}\n  - {slug: m4, provider: offline, model: m4}\n",
    ).replace(
        "{slug: p0, text: q0, schedule: daily, runs: 5}",
        "{slug: p0, text: q0, schedule: daily, runs: 7}",
    )
    sync(engine, grown)
    again = create_jobs(engine, FanoutRequest(at=AT.replace(hour=20)), settings)
    # m4 for every prompt (10 x 5), plus p0's runs 5 and 6 on all four models (p0's version,
    # its text unchanged, is the same)
    assert (again.created, again.existing) == (10 * 5 + 2 * 4, TOTAL)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT count(*) AS n, count(DISTINCT (prompt_id, model_id, run_index)) AS keys "
                "FROM prompt_jobs"
            )
        ).one()
        kept = dict(
            conn.execute(
                text("SELECT id, updated_at FROM prompt_jobs WHERE id = ANY(:ids)"),
                {"ids": list(before)},
            ).all()
        )
    assert rows.n == rows.keys == TOTAL + 58
    assert kept == before
    # The next day's batch is a batch of its own: every row of it is new.
    next_day = create_jobs(engine, FanoutRequest(at=AT.replace(day=23)), settings)
    assert (next_day.created, next_day.existing) == (TOTAL + 58, 0)


def test_two_fanouts_creating_one_batch_at_once_create_each_row_once(
    engine: Engine, settings: Settings
) -> None:
    """Both find the batch empty; the unique key decides which inserts each row."""
    sync(engine, CATALOG)
    start = threading.Barrier(2)

    def one() -> int:
        start.wait()
        return create_jobs(engine, FanoutRequest(at=AT), settings).created

    with ThreadPoolExecutor(2) as pool:
        created = list(pool.map(lambda _: one(), range(2)))
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM prompt_jobs")).scalar_one()
    assert sum(created) == rows == TOTAL
