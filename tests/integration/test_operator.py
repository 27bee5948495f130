"""Operators in control: retry, cancel, prompt versions and re-runs, through the status API
(real resolver, real PostgreSQL, moto's SQS) and the operator module; a crafted cursor and a
broken connection never make a 500."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from promptrun import jobs, operator
from promptrun.api import app_from_settings
from promptrun.aws import JobQueue
from promptrun.db.engine import get_engine
from promptrun.db.pool import Pool
from promptrun.fanout import FanoutRequest, run_fanout
from promptrun.local.events import api_gateway_event, bearer
from promptrun.local.lambda_runtime import LocalContext
from promptrun.processor import JobRunner, Outcome
from promptrun.settings import Settings
from tests.conftest import sync
from tests.support.sqs import receive_all

AT = datetime(2026, 11, 22, 13, 5, tzinfo=UTC)
DAILY = "2026-11-22"

CATALOG = """
models:
  - {slug: alpha, provider: offline, model: alpha-1}
  - {slug: beta, provider: offline, model: beta-1}
prompts:
  - {slug: crm, text: "What are the best CRM tools?", schedule: daily, runs: 2}
"""


def call(
    app: Any, method: str, path: str, body: Any = None, query: dict[str, str] | None = None
) -> tuple[int, Any]:
    event = api_gateway_event(
        path,
        method=method,
        query=query,
        headers={**bearer("test-token-not-secret"), "Content-Type": "application/json"},
        body=None if body is None else json.dumps(body),
    )
    resp = app.resolve(event, LocalContext("StatusFunction", timeout_seconds=29))
    return resp["statusCode"], json.loads(resp["body"])


@pytest.fixture
def api(settings: Settings) -> Any:
    return app_from_settings(settings)


def fanned_out(engine: Engine, settings: Settings, sqs: Any) -> dict[str, uuid.UUID]:
    """CATALOG fanned out at AT, its messages taken off the queue: job ids by model slug and
    run index ("alpha0", "beta1", ...)."""
    sync(engine, CATALOG)
    run_fanout(engine, JobQueue(settings.jobs_queue_url or ""), FanoutRequest(at=AT), settings)
    receive_all(sqs, settings.jobs_queue_url, delete=True)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT m.slug || run_index, j.id FROM prompt_jobs j JOIN models m ON m.id = j.model_id"
            )
        ).all()
    return {k: v for k, v in rows}


@pytest.fixture
def batch(engine: Engine, settings: Settings, sqs: Any) -> dict[str, uuid.UUID]:
    """Four jobs of one daily batch (crm x alpha, beta x 2 runs), sent, queue then emptied."""
    return fanned_out(engine, settings, sqs)


def set_status(engine: Engine, job_id: uuid.UUID, status: str, **extra: Any) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in extra)
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE prompt_jobs SET status = :s{', ' + sets if sets else ''} WHERE id = :id"),
            {"s": status, "id": job_id, **extra},
        )


def job(engine: Engine, job_id: uuid.UUID) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(
            conn.execute(text("SELECT * FROM prompt_jobs WHERE id = :id"), {"id": job_id})
            .mappings()
            .one()
        )


def message_ids(sqs: Any, queue_url: str | None) -> set[str]:
    return {json.loads(m["Body"])["job_id"] for m in receive_all(sqs, queue_url, delete=True)}


# --- cursors and connections: never a 500 ------------------------------------------------------


def _crafted(kind: str, key: str) -> str:
    raw = f"{kind}|0001-01-01T00:00:00+14:00|{key}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_crafted_cursor_is_a_422_and_the_next_request_on_the_same_app_works(
    api: Any, batch: dict[str, uuid.UUID]
) -> None:
    for path, cursor in (
        ("/jobs", _crafted("job", str(uuid.uuid4()))),
        ("/batches", _crafted("batch", DAILY)),
        ("/jobs", _crafted("job", str(uuid.uuid4())).replace("0001", "9999")),
    ):
        status, body = call(api, "GET", path, query={"cursor": cursor})
        assert status == 422, body
        assert body["detail"][0]["loc"] == ["query", "cursor"]
        # The same warm app and engine answer the next, plain request.
        status, body = call(api, "GET", path)
        assert status == 200, body
        assert body["items"]


def test_a_connection_that_failed_mid_statement_is_not_returned_to_the_pool(
    settings: Settings,
) -> None:
    engine = get_engine(settings, pool_size=1)
    year_one = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))
    with pytest.raises(OverflowError), engine.connect() as conn:
        # pg8000 fails halfway through sending this: the connection is unusable afterwards.
        conn.execute(text("SELECT CAST(:d AS timestamptz)"), {"d": year_one})
    for _ in range(3):  # the pool holds one connection: it must be a fresh one
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    # A server-side error leaves the connection usable and in the pool.
    with pytest.raises(DBAPIError), engine.connect() as conn:
        conn.execute(text("SELECT 1/0"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 2")).scalar_one() == 2
    engine.dispose()


# --- retry ---------------------------------------------------------------------------------


def test_retry_a_batch_through_the_api_requeues_with_fresh_attempts_and_sends(
    api: Any, engine: Engine, settings: Settings, sqs: Any, batch: dict[str, uuid.UUID]
) -> None:
    set_status(engine, batch["alpha0"], "failed", attempt_count=3, error_kind="server")
    set_status(engine, batch["alpha1"], "cancelled")
    set_status(engine, batch["beta0"], "skipped")
    set_status(engine, batch["beta1"], "succeeded")

    status, body = call(api, "POST", f"/batches/{DAILY}/retry", {"status": ["failed"]})
    assert status == 200, body
    assert body["retried"] == 1 and body["sent"] == 1
    assert body["job_ids"] == [str(batch["alpha0"])]
    row = job(engine, batch["alpha0"])
    assert row["status"] == "queued" and row["error_kind"] is None
    # The attempt counter keeps counting (a late worker of attempt 3 cannot finish attempt 4);
    # MAX_ATTEMPTS more attempts (3 in these settings), as the CLI gives.
    assert row["attempt_count"] == 3 and row["max_attempts"] == 3 + settings.max_attempts == 6
    assert row["enqueued_at"] is not None
    assert message_ids(sqs, settings.jobs_queue_url) == {str(batch["alpha0"])}

    # A filter by model; no body means every retryable status.
    status, body = call(api, "POST", f"/batches/{DAILY}/retry", {"model": "beta"})
    assert status == 200 and body["retried"] == 1, body
    assert body["job_ids"] == [str(batch["beta0"])]
    status, body = call(api, "POST", f"/batches/{DAILY}/retry")
    assert status == 200 and body["job_ids"] == [str(batch["alpha1"])], body
    assert job(engine, batch["beta1"])["status"] == "succeeded"  # never retried
    assert message_ids(sqs, settings.jobs_queue_url) == {str(batch["beta0"]), str(batch["alpha1"])}

    # The retried job runs again and succeeds.
    runner = JobRunner(engine, settings)
    assert runner.handle(json.dumps({"job_id": str(batch["alpha0"])}), None) == Outcome.SUCCEEDED


def test_retry_answers_what_was_wrong(api: Any, batch: dict[str, uuid.UUID]) -> None:
    assert call(api, "POST", "/batches/1999-01-01/retry")[0] == 404
    status, body = call(api, "POST", f"/batches/{DAILY}/retry", {"model": "nope"})
    assert status == 404 and "nope" in body["message"]
    status, body = call(api, "POST", f"/batches/{DAILY}/retry", {"status": ["succeeded"]})
    assert status == 422 and body["detail"][0]["loc"][:2] == ["body", "status"], body
    status, body = call(api, "POST", f"/batches/{DAILY}/retry", {"colour": "red"})
    assert status == 422, body
    status, body = call(api, "POST", f"/jobs/{batch['alpha0']}/retry")
    assert status == 409 and "queued" in body["message"]
    assert call(api, "POST", f"/jobs/{uuid.uuid4()}/retry")[0] == 404


def test_retry_one_job_through_the_api(
    api: Any, engine: Engine, settings: Settings, sqs: Any, batch: dict[str, uuid.UUID]
) -> None:
    set_status(engine, batch["beta1"], "failed", attempt_count=5, error_kind="attempts_exhausted")
    status, body = call(api, "POST", f"/jobs/{batch['beta1']}/retry")
    assert status == 200 and body == {"retried": 1, "sent": 1, "job_ids": [str(batch["beta1"])]}
    assert job(engine, batch["beta1"])["max_attempts"] == 5 + settings.max_attempts == 8
    assert message_ids(sqs, settings.jobs_queue_url) == {str(batch["beta1"])}


def test_a_retry_whose_messages_were_not_sent_loses_nothing(
    engine: Engine, settings: Settings, sqs: Any, batch: dict[str, uuid.UUID]
) -> None:
    """SQS refusing some messages (or a crash after the commit): the jobs stay queued, unmarked,
    and the next fan-out sends them; the retry says how many it left."""
    from promptrun.aws import SendResult

    for key in ("alpha0", "alpha1", "beta0"):
        set_status(engine, batch[key], "failed", error_kind="server")

    def half_refused(ids: list[str]) -> SendResult:
        sent = sorted(ids)[:1]
        queue.send_jobs(sent)
        return SendResult(sent=sent, failed={i: "throttled" for i in ids if i not in sent})

    queue = JobQueue(settings.jobs_queue_url or "")
    result = operator.retry_batch(engine, half_refused, DAILY, fresh_attempts=3)
    assert (result.retried, result.sent) == (3, 1)
    first = message_ids(sqs, settings.jobs_queue_url)
    assert len(first) == 1
    # The next scheduled fan-out (any period) sends the two left over, and only them.
    later = FanoutRequest(at=AT + timedelta(days=1))
    run_fanout(engine, queue, later, settings)
    with engine.connect() as conn:
        new_batch = set(
            str(i)
            for i in conn.execute(
                text("SELECT id FROM prompt_jobs WHERE batch_key <> :k"), {"k": DAILY}
            ).scalars()
        )
    resent = message_ids(sqs, settings.jobs_queue_url) - new_batch
    assert resent == {str(batch[k]) for k in ("alpha0", "alpha1", "beta0")} - first
    assert all(
        job(engine, batch[k])["enqueued_at"] is not None for k in ("alpha0", "alpha1", "beta0")
    )


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_a_batch_through_the_api_lets_running_jobs_finish_and_keep_what_they_paid_for(
    api: Any, engine: Engine, settings: Settings, batch: dict[str, uuid.UUID]
) -> None:
    # alpha0 is running (claimed by a worker); beta1 has finished.
    with engine.begin() as conn:
        running = jobs.claim_job(conn, batch["alpha0"], 60)
    assert running is not None
    set_status(engine, batch["beta1"], "succeeded")

    status, body = call(api, "POST", f"/batches/{DAILY}/cancel")
    assert status == 200, body
    assert body == {"cancelled": 2, "cancel_requested": 1, "already_finished": 1}
    assert job(engine, batch["alpha1"])["status"] == "cancelled"
    assert job(engine, batch["alpha0"])["status"] == "processing"

    # The running job's call ends and is stored: the answer was paid for.
    with engine.begin() as conn:
        assert jobs.complete_job(conn, running, jobs.Usage(10, 20))
    row = job(engine, batch["alpha0"])
    assert row["status"] == "succeeded" and row["output_tokens"] == 20

    # Cancelling again changes nothing and says so.
    status, body = call(api, "POST", f"/batches/{DAILY}/cancel")
    assert body == {"cancelled": 0, "cancel_requested": 0, "already_finished": 4}


def test_a_running_job_cancelled_is_not_retried_after_a_retryable_error(
    api: Any, engine: Engine, settings: Settings, batch: dict[str, uuid.UUID]
) -> None:
    with engine.begin() as conn:
        running = jobs.claim_job(conn, batch["beta0"], 60)
    assert running is not None
    status, body = call(api, "POST", f"/jobs/{batch['beta0']}/cancel")
    assert status == 200 and body["cancel_requested"] == 1, body
    with engine.begin() as conn:
        jobs.retry_job(
            conn,
            running,
            delay_seconds=0,
            error_kind="server",
            error_message="503",
            usage=jobs.Usage(5, 0),
        )
    row = job(engine, batch["beta0"])
    assert row["status"] == "cancelled" and row["input_tokens"] == 5
    # Its message comes back and is acknowledged without running.
    runner = JobRunner(engine, settings)
    assert runner.handle(json.dumps({"job_id": str(batch["beta0"])}), None) == Outcome.SKIPPED
    assert call(api, "POST", f"/jobs/{batch['beta0']}/cancel")[0] == 409


def test_a_cancelled_running_job_whose_worker_died_ends_cancelled(
    engine: Engine, batch: dict[str, uuid.UUID]
) -> None:
    with engine.begin() as conn:
        assert jobs.claim_job(conn, batch["beta1"], 60) is not None
    operator.cancel_job(engine, batch["beta1"])
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE prompt_jobs SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": batch["beta1"]},
        )
        # The rescue claim refuses it: it was cancelled.
        assert jobs.claim_job(conn, batch["beta1"], 60) is None
        assert operator.finish_cancelled(conn) == 1
    assert job(engine, batch["beta1"])["status"] == "cancelled"


def test_cancel_answers_what_was_wrong(api: Any, batch: dict[str, uuid.UUID]) -> None:
    assert call(api, "POST", "/batches/1999-01-01/cancel")[0] == 404
    status, body = call(api, "POST", f"/batches/{DAILY}/cancel", {"model": "gamma"})
    assert status == 404 and "gamma" in body["message"]
    assert call(api, "POST", f"/jobs/{uuid.uuid4()}/cancel")[0] == 404
    assert call(api, "POST", "/jobs/not-a-uuid/cancel")[0] == 422


def test_operator_routes_need_the_token_and_are_documented(api: Any) -> None:
    event = api_gateway_event(f"/batches/{DAILY}/cancel", method="POST")
    resp = api.resolve(event, LocalContext("StatusFunction", timeout_seconds=29))
    assert resp["statusCode"] == 401
    assert call(api, "GET", "/openapi.json")[0] == 200
    doc = call(api, "GET", "/openapi.json")[1]
    paths = doc["paths"]
    for path in ("/batches/{batch_key}/retry", "/batches/{batch_key}/cancel",
                 "/jobs/{job_id}/retry", "/jobs/{job_id}/cancel"):  # fmt: skip
        assert "post" in paths[path], path
        assert "401" in paths[path]["post"]["responses"]
    assert "get" in paths["/prompts"]


# --- prompt versions ----------------------------------------------------------------------------


def test_a_job_runs_the_prompt_version_it_records_even_after_the_text_changed(
    engine: Engine, settings: Settings, batch: dict[str, uuid.UUID]
) -> None:
    recorded = job(engine, batch["alpha0"])["prompt_version"]
    # The catalogue changes the prompt's text while the job waits in the queue.
    sync(engine, CATALOG.replace("best CRM tools?", "best CRM tools for a bakery?"))
    with engine.connect() as conn:
        current = conn.execute(text("SELECT version FROM prompts WHERE slug = 'crm'")).scalar_one()
        stored = conn.execute(text("SELECT count(*) FROM prompt_versions")).scalar_one()
    assert current != recorded and stored == 2

    runner = JobRunner(engine, settings)
    assert runner.handle(json.dumps({"job_id": str(batch["alpha0"])}), None) == Outcome.SUCCEEDED
    with engine.connect() as conn:
        answer = conn.execute(
            text("SELECT answer_text FROM responses WHERE job_id = :id"), {"id": batch["alpha0"]}
        ).scalar_one()
    assert "What are the best CRM tools?" in answer and "bakery" not in answer
    assert job(engine, batch["alpha0"])["prompt_version"] == recorded


def test_the_batch_path_runs_the_recorded_version_too(
    engine: Engine, pool: Pool, settings: Settings, sqs: Any
) -> None:
    """The processor's handler claims whole SQS batches (batch_runner): same race, same answer."""
    from promptrun.batch_runner import BatchRunner, Record

    sync(engine, CATALOG)
    queue = JobQueue(settings.jobs_queue_url or "")
    run_fanout(engine, queue, FanoutRequest(at=AT), settings)
    messages = receive_all(sqs, settings.jobs_queue_url)
    with engine.connect() as conn:
        recorded = set(conn.execute(text("SELECT prompt_version FROM prompt_jobs")).scalars())
    sync(engine, CATALOG.replace("best CRM tools?", "best CRM tools for a bakery?"))

    result = BatchRunner(pool, settings, queue).run(
        [Record(m["MessageId"], m["Body"], m["ReceiptHandle"]) for m in messages]
    )
    assert list(result.outcomes.values()) == [Outcome.SUCCEEDED] * 4, result
    with engine.connect() as conn:
        answers = conn.execute(text("SELECT answer_text FROM responses")).scalars().all()
        ran = set(conn.execute(text("SELECT prompt_version FROM prompt_jobs")).scalars())
    assert len(answers) == 4 and ran == recorded
    assert all("best CRM tools?" in a and "bakery" not in a for a in answers)


def test_prompt_versions_are_immutable(engine: Engine, batch: dict[str, uuid.UUID]) -> None:
    with pytest.raises(DBAPIError, match="immutable"), engine.begin() as conn:
        conn.execute(text("UPDATE prompt_versions SET text = 'something else'"))


def test_rerun_changed_creates_jobs_only_for_prompts_whose_latest_batch_ran_an_older_version(
    api: Any, engine: Engine, settings: Settings, sqs: Any, batch: dict[str, uuid.UUID]
) -> None:
    queue = JobQueue(settings.jobs_queue_url or "")
    status, body = call(api, "GET", "/prompts", query={"needs_rerun": "true"})
    assert status == 200 and body == []
    assert operator.rerun_changed(engine, queue, settings).created == 0

    sync(engine, CATALOG.replace("best CRM tools?", "best CRM tools in 2027?"))
    status, body = call(api, "GET", "/prompts")
    assert status == 200 and len(body) == 1 and body[0]["needs_rerun"] is True, body
    assert (
        body[0]["latest_batch_key"] == DAILY
        and body[0]["version"] not in body[0]["latest_batch_versions"]
    )

    done = operator.rerun_changed(engine, queue, settings)
    assert done.prompts == ["crm"] and done.created == 4
    [key] = done.batches
    assert key.startswith(f"{DAILY}.v")
    with engine.connect() as conn:
        versions = (
            conn.execute(
                text(
                    "SELECT DISTINCT j.prompt_version = p.version FROM prompt_jobs j "
                    "JOIN prompts p ON p.id = j.prompt_id WHERE batch_key = :k"
                ),
                {"k": key},
            )
            .scalars()
            .all()
        )
    assert versions == [True]
    assert call(api, "GET", "/prompts", query={"needs_rerun": "true"})[1] == []
    assert operator.rerun_changed(engine, queue, settings).created == 0  # repeating: nothing new


def test_prompt_states_follow_the_newest_batch_that_still_has_the_prompts_jobs(
    engine: Engine, settings: Settings, sqs: Any, batch: dict[str, uuid.UUID]
) -> None:
    """Read from the batches' list and the per-prompt counts (not every job of every prompt):
    the newest batch with the prompt's jobs, the versions they ran, a named batch, a prompt
    with no jobs, and a newest batch whose jobs were deleted (as prune does)."""

    def states(batch_key: str | None = None) -> dict[str, tuple[Any, ...]]:
        return {
            s.slug: (s.latest_batch_key, s.latest_batch_versions, s.needs_rerun)
            for s in operator.prompt_states(engine, batch_key)
        }

    v1 = states()["crm"][1]
    changed = CATALOG.replace("best CRM tools?", "best CRM tools in 2027?")
    sync(engine, changed + '  - {slug: new, text: "Which ERP?", schedule: weekly, runs: 1}\n')
    assert states()["new"] == (None, [], False)  # no jobs yet
    later = FanoutRequest(at=AT + timedelta(days=1))
    run_fanout(engine, JobQueue(settings.jobs_queue_url or ""), later, settings)
    with engine.connect() as conn:
        v2 = conn.execute(text("SELECT version FROM prompts WHERE slug = 'crm'")).scalar_one()
    assert v2 not in v1
    assert states()["crm"] == ("2026-11-23", [v2], False)
    assert states(DAILY)["crm"] == (DAILY, v1, True)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM prompt_jobs WHERE batch_key = '2026-11-23'"))
        conn.execute(text("SELECT promptrun_compact_summaries()"))
    assert states()["crm"] == (DAILY, v1, True)


def test_rerun_of_a_named_batch_that_does_not_exist_is_refused(
    engine: Engine, settings: Settings
) -> None:
    with pytest.raises(operator.NotFound):
        operator.rerun_changed(
            engine, JobQueue(settings.jobs_queue_url or ""), settings, "1999-01-01"
        )


def test_retry_later_is_still_raised_for_an_uncancelled_job(
    engine: Engine, settings: Settings, batch: dict[str, uuid.UUID]
) -> None:
    """The cancel check in retry_job leaves ordinary retries as they were."""
    with engine.begin() as conn:
        running = jobs.claim_job(conn, batch["alpha1"], 60)
        assert running is not None
        assert jobs.retry_job(
            conn, running, delay_seconds=0, error_kind="server", error_message="x"
        )
    assert job(engine, batch["alpha1"])["status"] == "queued"


def test_a_body_that_is_not_json_is_a_415_not_a_500(api: Any, batch: dict[str, uuid.UUID]) -> None:
    for content_type in ("text/plain", "multipart/form-data"):
        event = api_gateway_event(
            f"/batches/{DAILY}/retry",
            method="POST",
            headers={**bearer("test-token-not-secret"), "Content-Type": content_type},
            body="status=failed",
        )
        resp = api.resolve(event, LocalContext("StatusFunction", timeout_seconds=29))
        assert resp["statusCode"] == 415, resp
        assert "JSON" in json.loads(resp["body"])["message"]
