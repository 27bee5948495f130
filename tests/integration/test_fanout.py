"""Fan-out against real PostgreSQL and moto's SQS."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text

from promptrun.aws import JobQueue, SendResult
from promptrun.errors import InputError
from promptrun.fanout import FanoutRequest, create_jobs, parse_event, run_fanout, send_pending
from promptrun.settings import Settings
from tests.support.sqs import receive_all

AT = datetime(2026, 11, 22, 13, 5, tzinfo=UTC)


def drain(sqs: Any, queue_url: str) -> list[str]:
    """Every job id now on the queue (messages deleted as read)."""
    return [json.loads(m["Body"])["job_id"] for m in receive_all(sqs, queue_url, delete=True)]


def job_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT p.slug, m.slug, j.run_index, j.batch_key, j.status FROM prompt_jobs j "
                    "JOIN prompts p ON p.id = j.prompt_id JOIN models m ON m.id = j.model_id ORDER BY 1, 2, 3"
                )
            )
        ]


def test_scheduled_event_creates_prompt_x_model_x_runs(
    engine: Engine, small_catalog: str, settings: Settings, sqs: Any
) -> None:
    queue = JobQueue(settings.jobs_queue_url or "")
    result = run_fanout(engine, queue, FanoutRequest(at=AT), settings)
    # crm: 2 models x 2 runs (daily); laptops: alpha only x 1 run (hourly)
    assert result.created == 5 and result.existing == 0 and result.sent == 5
    assert result.batches == {
        "2026-11-22": {"created": 4, "existing": 0},
        "2026-11-22T13": {"created": 1, "existing": 0},
    }
    rows = job_rows(engine)
    assert ("laptops", "alpha", 0, "2026-11-22T13", "queued") in rows
    assert sorted(r[:3] for r in rows if r[0] == "crm") == [
        ("crm", "alpha", 0),
        ("crm", "alpha", 1),
        ("crm", "beta", 0),
        ("crm", "beta", 1),
    ]
    sent = drain(sqs, settings.jobs_queue_url)
    with engine.connect() as conn:
        ids = {str(r[0]) for r in conn.execute(text("SELECT id FROM prompt_jobs"))}
        unsent = conn.execute(
            text("SELECT count(*) FROM prompt_jobs WHERE enqueued_at IS NULL")
        ).scalar()
        last_run = conn.execute(
            text("SELECT count(*) FROM prompts WHERE last_run_at = :t"), {"t": AT}
        ).scalar()
    assert sorted(sent) == sorted(ids)
    assert unsent == 0
    assert last_run == 2


def test_fanout_twice_for_one_period_creates_and_sends_nothing_more(
    engine: Engine, small_catalog: str, settings: Settings, sqs: Any
) -> None:
    queue = JobQueue(settings.jobs_queue_url or "")
    run_fanout(engine, queue, FanoutRequest(at=AT), settings)
    first = job_rows(engine)
    assert len(drain(sqs, settings.jobs_queue_url)) == 5
    later_same_hour = datetime(2026, 11, 22, 13, 45, tzinfo=UTC)
    again = run_fanout(engine, queue, FanoutRequest(at=later_same_hour), settings)
    assert (again.created, again.existing, again.sent) == (0, 5, 0)
    assert job_rows(engine) == first
    assert drain(sqs, settings.jobs_queue_url) == []


def test_next_hour_makes_a_new_hourly_batch_only(
    engine: Engine, small_catalog: str, settings: Settings
) -> None:
    queue = JobQueue(settings.jobs_queue_url or "")
    run_fanout(engine, queue, FanoutRequest(at=AT), settings)
    nxt = run_fanout(
        engine, queue, FanoutRequest(at=datetime(2026, 11, 22, 14, 0, tzinfo=UTC)), settings
    )
    assert nxt.batches == {
        "2026-11-22": {"created": 0, "existing": 4},
        "2026-11-22T14": {"created": 1, "existing": 0},
    }


class CrashingQueue(JobQueue):
    """SQS accepts nothing: stands for a crash between insert and send."""

    def send_jobs(self, job_ids: Any) -> SendResult:
        raise RuntimeError("crashed before sending")


def test_crash_between_insert_and_send_is_repaired_by_next_run(
    engine: Engine, small_catalog: str, settings: Settings, sqs: Any
) -> None:
    with pytest.raises(RuntimeError):
        run_fanout(
            engine,
            CrashingQueue(settings.jobs_queue_url or "", sqs=sqs),
            FanoutRequest(at=AT),
            settings,
        )
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM prompt_jobs WHERE enqueued_at IS NULL")
            ).scalar()
            == 5
        )
    assert drain(sqs, settings.jobs_queue_url) == []
    result = run_fanout(
        engine, JobQueue(settings.jobs_queue_url or ""), FanoutRequest(at=AT), settings
    )
    assert (result.created, result.sent) == (0, 5)
    assert len(set(drain(sqs, settings.jobs_queue_url))) == 5


def test_failed_entries_are_retried(
    engine: Engine, small_catalog: str, settings: Settings, sqs: Any
) -> None:
    calls: list[int] = []

    class FlakySqs:
        """Real SQS, but the first SendMessageBatch reports its first two entries as failed."""

        def send_message_batch(
            self, QueueUrl: str, Entries: list[dict[str, Any]]
        ) -> dict[str, Any]:
            calls.append(len(Entries))
            if len(calls) == 1:
                ok = sqs.send_message_batch(QueueUrl=QueueUrl, Entries=Entries[2:])
                ok["Failed"] = [
                    {"Id": e["Id"], "Code": "InternalError", "SenderFault": False}
                    for e in Entries[:2]
                ]
                return ok
            return sqs.send_message_batch(QueueUrl=QueueUrl, Entries=Entries)

    create_jobs(engine, FanoutRequest(at=AT), settings)
    sent, failed, _ = send_pending(
        engine, JobQueue(settings.jobs_queue_url or "", sqs=FlakySqs()), settings
    )
    assert (sent, failed) == (5, 0)
    assert calls == [5, 2]
    assert len(set(drain(sqs, settings.jobs_queue_url))) == 5


def test_manual_event_with_filters(engine: Engine, small_catalog: str, settings: Settings) -> None:
    request = parse_event({"batch_key": "rerun-1", "prompts": ["crm"], "models": ["beta"]})
    result = create_jobs(engine, request, settings)
    assert result.created == 2
    assert {r[:4] for r in job_rows(engine)} == {
        ("crm", "beta", 0, "rerun-1"),
        ("crm", "beta", 1, "rerun-1"),
    }


def test_more_than_ten_jobs_go_in_batches_of_ten(
    engine: Engine, settings: Settings, sqs: Any
) -> None:
    from tests.conftest import sync

    sync(
        engine,
        "models:\n  - {slug: m, provider: offline, model: m}\nprompts:\n  - {slug: p, text: hi, schedule: daily, runs: 23}\n",
    )
    batches: list[int] = []

    class CountingSqs:
        def send_message_batch(self, **kw: Any) -> dict[str, Any]:
            batches.append(len(kw["Entries"]))
            return sqs.send_message_batch(**kw)

    create_jobs(engine, FanoutRequest(at=AT), settings)
    sent, _, _ = send_pending(
        engine, JobQueue(settings.jobs_queue_url or "", sqs=CountingSqs()), settings
    )
    assert sent == 23 and batches == [10, 10, 3]


@pytest.mark.parametrize(
    ("event", "needle"),
    [
        ([], "JSON object"),
        ({}, "'time'"),
        ({"time": "yesterday"}, "time"),
        ({"time": "2026-11-22T13:00:00"}, "time"),
        ({"batch_key": "bad key!"}, "batch_key"),
        ({"batch_key": "ok", "prompts": "crm"}, "prompts"),
        ({"batch_key": "ok", "extra": 1}, "extra"),
    ],
)
def test_bad_events_name_the_field(event: Any, needle: str) -> None:
    with pytest.raises(InputError) as info:
        parse_event(event)
    assert needle in str(info.value)


def test_unknown_prompt_slug_in_manual_event(
    engine: Engine, small_catalog: str, settings: Settings
) -> None:
    with pytest.raises(InputError, match="nope"):
        create_jobs(engine, parse_event({"batch_key": "x", "prompts": ["nope"]}), settings)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM prompt_jobs")).scalar() == 0
