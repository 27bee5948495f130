"""The dead-letter queue checked against the database (moto's SQS, real PostgreSQL), retention
in chunks, and the scheduled maintenance that runs both."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from promptrun import dlq, retention
from promptrun.aws import JobQueue
from promptrun.errors import InputError
from promptrun.maintenance import run_maintenance
from promptrun.processor import JobRunner, Outcome
from promptrun.settings import Settings
from tests.conftest import with_settings
from tests.integration.test_operator import fanned_out, job, set_status
from tests.support.sqs import receive_all

AT = datetime(2026, 11, 22, 13, 5, tzinfo=UTC)


def dlq_url_of(sqs: Any, queue_url: str) -> str:
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    arn = json.loads(attrs["Attributes"]["RedrivePolicy"])["deadLetterTargetArn"]
    return str(sqs.get_queue_url(QueueName=arn.rsplit(":", 1)[1])["QueueUrl"])


@pytest.fixture
def jobs4(engine: Engine, settings: Settings, sqs: Any) -> dict[str, uuid.UUID]:
    return fanned_out(engine, settings, sqs)


def dead_letter(sqs: Any, dlq_url: str, bodies: list[str]) -> None:
    for body in bodies:
        sqs.send_message(QueueUrl=dlq_url, MessageBody=body)


def test_dlq_show_judges_each_message_and_changes_nothing_then_redrive_acts(
    engine: Engine, settings: Settings, sqs: Any, jobs4: dict[str, uuid.UUID]
) -> None:
    dlq_url = dlq_url_of(sqs, settings.jobs_queue_url or "")
    set_status(engine, jobs4["alpha1"], "succeeded")
    with engine.begin() as conn:  # beta0 is running, its worker alive
        conn.execute(
            text(
                "UPDATE prompt_jobs SET status = 'processing', lease_expires_at = now() + interval '1 min' WHERE id = :id"
            ),
            {"id": jobs4["beta0"]},
        )
    gone = uuid.uuid4()
    dead_letter(
        sqs,
        dlq_url,
        [json.dumps({"job_id": str(jobs4["alpha0"])}), json.dumps({"job_id": str(jobs4["alpha1"])}),
         json.dumps({"job_id": str(jobs4["beta0"])}), json.dumps({"job_id": str(gone)}), "not json"],
    )  # fmt: skip
    queue = JobQueue(settings.jobs_queue_url or "")

    shown = dlq.check_dead_letters(engine, sqs, dlq_url, queue, redrive=False)
    verdicts = {d.job_id: d.verdict for d in shown.letters}
    assert verdicts == {
        str(jobs4["alpha0"]): "runnable",
        str(jobs4["alpha1"]): "finished",
        str(jobs4["beta0"]): "running",
        str(gone): "unknown_job",
        None: "malformed",
    }
    assert "nothing changed" in shown.lines()[-1]
    # Showing leaves every message where it was, visible at once, and sends nothing.
    assert len(receive_all(sqs, dlq_url)) == 5
    assert receive_all(sqs, settings.jobs_queue_url) == []
    sqs.purge_queue(QueueUrl=dlq_url)
    dead_letter(
        sqs,
        dlq_url,
        [json.dumps({"job_id": str(jobs4["alpha0"])}), json.dumps({"job_id": str(jobs4["alpha1"])}),
         json.dumps({"job_id": str(jobs4["beta0"])}), json.dumps({"job_id": str(gone)}), "not json"],
    )  # fmt: skip

    done = dlq.check_dead_letters(engine, sqs, dlq_url, queue, redrive=True)
    assert (done.resent, done.dropped, done.kept) == (1, 3, 1)
    assert "1 re-sent, 3 dropped, 1 kept" in done.lines()[-1]
    resent = [
        json.loads(m["Body"])["job_id"]
        for m in receive_all(sqs, settings.jobs_queue_url, delete=True)
    ]
    assert resent == [str(jobs4["alpha0"])]
    left = receive_all(sqs, dlq_url)
    assert [m["Body"] for m in left] == ["not json"]  # only what needs a person

    # The re-sent job runs.
    runner = JobRunner(engine, settings)
    assert runner.handle(json.dumps({"job_id": str(jobs4["alpha0"])}), None) == Outcome.SUCCEEDED


def test_prune_deletes_old_finished_jobs_with_answers_and_mentions_in_chunks(
    engine: Engine, settings: Settings, jobs4: dict[str, uuid.UUID]
) -> None:
    runner = JobRunner(engine, settings)
    for key in ("alpha0", "alpha1", "beta0"):
        assert runner.handle(json.dumps({"job_id": str(jobs4[key])}), None) == Outcome.SUCCEEDED
    with engine.begin() as conn:
        mentions_old = conn.execute(
            text("SELECT count(*) FROM entity_mentions WHERE job_id IN (:a, :b)"),
            {"a": jobs4["alpha0"], "b": jobs4["alpha1"]},
        ).scalar_one()
        # alpha0, alpha1 finished 100 days ago; beta0 yesterday; beta1 is queued and old.
        conn.execute(
            text(
                "UPDATE prompt_jobs SET finished_at = now() - interval '100 days' WHERE id IN (:a, :b)"
            ),
            {"a": jobs4["alpha0"], "b": jobs4["alpha1"]},
        )
        conn.execute(
            text("UPDATE prompt_jobs SET created_at = now() - interval '400 days' WHERE id = :id"),
            {"id": jobs4["beta1"]},
        )
    assert mentions_old > 0
    age = retention.parse_age("90d")

    dry = retention.prune(engine, age, dry_run=True)
    assert (dry.jobs, dry.responses, dry.mentions) == (2, 2, mentions_old)
    assert dry.line().startswith("would delete 2 finished jobs")
    assert job(engine, jobs4["alpha0"])["status"] == "succeeded"  # nothing deleted

    progress: list[int] = []
    done = retention.prune(engine, age, chunk=1, on_progress=lambda r: progress.append(r.jobs))
    assert (done.jobs, done.responses, done.mentions) == (2, 2, mentions_old)
    assert progress == [1, 2]  # one job per chunk
    with engine.connect() as conn:
        left = set(conn.execute(text("SELECT id FROM prompt_jobs")).scalars())
        answers = conn.execute(text("SELECT count(*) FROM responses")).scalar_one()
        versions = conn.execute(text("SELECT count(*) FROM prompt_versions")).scalar_one()
    assert left == {jobs4["beta0"], jobs4["beta1"]}  # recent, and queued however old
    assert answers == 1 and versions == 1
    assert retention.prune(engine, age).jobs == 0
    # Running with an old finished_at (left by an earlier attempt, then retried): kept too.
    set_status(
        engine, jobs4["beta1"], "processing", finished_at=datetime.now(UTC) - timedelta(days=100)
    )
    assert retention.prune(engine, age, dry_run=True).jobs == 0
    assert retention.prune(engine, age).jobs == 0
    assert job(engine, jobs4["beta1"])["status"] == "processing"


@pytest.mark.parametrize("bad", ["90", "ninety days", "0d", "-5d", "30m"])
def test_prune_age_must_be_clear(bad: str) -> None:
    with pytest.raises(InputError, match="older-than"):
        retention.parse_age(bad)


def test_scheduled_maintenance_redrives_and_prunes(
    engine: Engine, settings: Settings, sqs: Any, jobs4: dict[str, uuid.UUID]
) -> None:
    dlq_url = dlq_url_of(sqs, settings.jobs_queue_url or "")
    set_status(engine, jobs4["beta1"], "failed")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE prompt_jobs SET finished_at = now() - interval '40 days' WHERE id = :id"),
            {"id": jobs4["beta1"]},
        )
    dead_letter(sqs, dlq_url, [json.dumps({"job_id": str(jobs4["alpha0"])})])
    out = run_maintenance(
        engine, with_settings(settings, jobs_dlq_url=dlq_url, retention_days=30), lambda: 60_000
    )
    assert out["dead_letters"]["resent"] == 1
    assert out["pruned"]["jobs"] == 1 and out["pruned"]["complete"] is True
    assert receive_all(sqs, dlq_url) == []
    assert [json.loads(m["Body"])["job_id"] for m in receive_all(sqs, settings.jobs_queue_url)] == [
        str(jobs4["alpha0"])
    ]
    # Nothing configured: the sweep only ends cancelled jobs whose worker died.
    assert run_maintenance(engine, settings) == {"cancelled_after_worker_died": 0}


def test_prune_stops_at_its_time_budget(engine: Engine, jobs4: dict[str, uuid.UUID]) -> None:
    for key in jobs4:
        set_status(engine, jobs4[key], "failed", finished_at=datetime.now(UTC) - timedelta(days=9))
    report = retention.prune(engine, timedelta(days=1), chunk=1, time_budget=0)
    assert report.complete is False and report.jobs == 0
    assert "run again" in report.line()


def test_the_scan_long_polls_so_sqs_never_answers_a_false_empty(
    engine: Engine, settings: Settings, sqs: Any, jobs4: dict[str, uuid.UUID]
) -> None:
    """A short poll (WaitTimeSeconds=0) samples some SQS servers and may answer empty while
    messages wait; the scan stops at the first empty answer, so it must long-poll."""
    dlq_url = dlq_url_of(sqs, settings.jobs_queue_url or "")
    dead_letter(sqs, dlq_url, [json.dumps({"job_id": str(jobs4["alpha0"])})])
    waits: list[int] = []

    class Recording:
        def __getattr__(self, name: str) -> Any:
            return getattr(sqs, name)

        def receive_message(self, **kwargs: Any) -> Any:
            waits.append(kwargs.get("WaitTimeSeconds", 0))
            return sqs.receive_message(**kwargs)

    report = dlq.check_dead_letters(engine, Recording(), dlq_url, None, redrive=False)
    assert [d.verdict for d in report.letters] == ["runnable"]
    assert waits and min(waits) >= 1, waits
