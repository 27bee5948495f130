"""The built application in real Lambda containers (sam local), against real PostgreSQL and
moto: fan-out and processor through `sam local invoke`, the status API through
`sam local start-api` with an HTTP client and schemathesis."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from sqlalchemy import Engine, text

from promptrun.aws import JobQueue
from promptrun.db.engine import engine_for_url
from promptrun.fanout import FanoutRequest, run_fanout
from promptrun.processor import JobRunner
from promptrun.settings import Settings
from tests.conftest import SMALL_CATALOG, sync
from tests.sam.conftest import (
    API_TOKEN,
    EVENTS,
    REPO,
    ContainerEngine,
    LocalApi,
    Sam,
    tail,
    write_env_vars,
)
from tests.support import stack

pytestmark = pytest.mark.sam


def receive_all(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while msgs := sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    ).get("Messages", []):
        out.extend(msgs)
    return out


def queue_depth(sqs: Any, queue_url: str) -> int:
    """Messages on the queue, visible or in flight."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


# --- fan-out and processor: sam local invoke ------------------------------------------------


def test_fanout_in_a_lambda_container_creates_jobs_once(
    sam: Sam, lambda_env: Path, engine: Engine, small_catalog: str, sqs: Any, queue_url: str
) -> None:
    # events/scheduled_event.json fires at 2026-11-22T13:00:00Z.
    first = sam.invoke("FanoutFunction", EVENTS / "scheduled_event.json", lambda_env)
    # crm: 2 models x 2 runs (daily); laptops: alpha x 1 run (hourly)
    assert first == {
        "created": 5, "existing": 0, "sent": 5, "send_failed": 0, "rescued": 0,
        "continued": False,  # all sent within the invocation: no continuation message
        "batches": {
            "2026-11-22": {"created": 4, "existing": 0},
            "2026-11-22T13": {"created": 1, "existing": 0},
        },
    }  # fmt: skip
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, status, batch_key, enqueued_at FROM prompt_jobs")
        ).all()
    assert len(rows) == 5
    assert {r.status for r in rows} == {"queued"} and all(r.enqueued_at for r in rows)
    assert queue_depth(sqs, queue_url) == 5

    # The same scheduled event again (a retry, a replay): nothing new, nothing sent twice.
    second = sam.invoke("FanoutFunction", EVENTS / "scheduled_event.json", lambda_env)
    assert (second["created"], second["existing"], second["sent"]) == (0, 5, 0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM prompt_jobs")).scalar_one() == 5
    sent_ids = [json.loads(m["Body"])["job_id"] for m in receive_all(sqs, queue_url)]
    assert sorted(sent_ids) == sorted(str(r.id) for r in rows)


def test_processor_in_a_lambda_container_reports_only_the_bad_record(
    sam: Sam,
    lambda_env: Path,
    engine: Engine,
    settings: Settings,
    sqs: Any,
    queue_url: str,
    tmp_path: Path,
) -> None:
    sync(
        engine,
        """
models:
  - {slug: solo, provider: offline, model: solo-1, price_per_mtok: {input: 1.0, output: 2.0}}
prompts:
  - {slug: crm, text: "What are the best CRM tools?", schedule: daily, runs: 2}
""",
    )
    at = datetime(2026, 11, 22, 9, tzinfo=UTC)
    run_fanout(engine, JobQueue(queue_url, sqs=sqs), FanoutRequest(at=at), settings)
    messages = receive_all(sqs, queue_url)
    assert len(messages) == 2

    # events/sqs_jobs_batch.json, its two records carrying the real messages, plus a bad one.
    event = json.loads((EVENTS / "sqs_jobs_batch.json").read_text())
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    for record, message in zip(event["Records"], messages, strict=True):
        record.update(
            messageId=message["MessageId"],
            receiptHandle=message["ReceiptHandle"],
            body=message["Body"],
            md5OfBody=message["MD5OfBody"],
            eventSourceARN=queue_arn,
        )
    malformed = copy.deepcopy(event["Records"][0])
    malformed.update(messageId="malformed-1", body="{not json", receiptHandle="malformed-receipt")
    malformed["md5OfBody"] = hashlib.md5(malformed["body"].encode()).hexdigest()
    event["Records"].insert(1, malformed)
    event_file = tmp_path / "sqs_event.json"
    event_file.write_text(json.dumps(event))

    result = sam.invoke("ProcessorFunction", event_file, lambda_env)

    assert result == {"batchItemFailures": [{"itemIdentifier": "malformed-1"}]}
    job_ids = {json.loads(m["Body"])["job_id"] for m in messages}
    with engine.connect() as conn:
        jobs = conn.execute(
            text(
                "SELECT id, status, attempt_count, input_tokens, output_tokens, cost_usd "
                "FROM prompt_jobs"
            )
        ).all()
        answers = conn.execute(text("SELECT job_id, answer_text FROM responses")).all()
        mentions = conn.execute(text("SELECT count(*) FROM entity_mentions")).scalar_one()
    assert {str(j.id) for j in jobs} == job_ids
    assert all(
        j.status == "succeeded" and j.attempt_count == 1 and j.input_tokens and j.cost_usd > 0
        for j in jobs
    ), jobs
    assert {str(a.job_id) for a in answers} == job_ids
    assert all(a.answer_text.startswith("[offline synthetic answer]") for a in answers)
    assert mentions >= 2


# --- the status API: sam local start-api ------------------------------------------------------

API_CATALOG = SMALL_CATALOG
DAILY, HOURLY = "2026-11-22", "2026-11-22T13"


@dataclass
class ApiData:
    """What the module's database holds: two batches, the daily one with a job still queued."""

    succeeded: list[str]
    queued: list[str]


@pytest.fixture(scope="module")
def api_database(pg: Any, template_db: str) -> Iterator[str]:
    name = stack.create_test_database(pg, template_db)
    yield name
    stack.drop_database(pg, name)


@pytest.fixture(scope="module")
def api_queue_url(moto_server: stack.MotoServer) -> str:
    sqs = boto3.client("sqs", endpoint_url=moto_server.endpoint)
    return str(sqs.create_queue(QueueName=f"api-{uuid.uuid4().hex[:10]}")["QueueUrl"])


@pytest.fixture(scope="module")
def api_data(
    pg: Any, api_database: str, api_queue_url: str, moto_server: stack.MotoServer
) -> ApiData:
    """Fan-out and processing in this process: the API under test only reads."""
    url = stack.url_for(pg, api_database)
    engine = engine_for_url(url)
    try:
        sync(engine, API_CATALOG)
        sqs = boto3.client("sqs", endpoint_url=moto_server.endpoint)
        settings = Settings(database_url=url, jobs_queue_url=api_queue_url)
        queue = JobQueue(api_queue_url, sqs=sqs)
        run_fanout(
            engine, queue, FanoutRequest(at=datetime(2026, 11, 22, 13, 5, tzinfo=UTC)), settings
        )
        with engine.connect() as conn:
            daily = {
                str(i)
                for i in conn.execute(
                    text("SELECT id FROM prompt_jobs WHERE batch_key = :k"), {"k": DAILY}
                ).scalars()
            }
        runner = JobRunner(engine, settings, queue)
        left = sorted(daily)[0]
        succeeded = []
        for message in receive_all(sqs, api_queue_url):
            job_id = json.loads(message["Body"])["job_id"]
            if job_id != left:
                runner.handle(message["Body"], message["ReceiptHandle"])
                succeeded.append(job_id)
        return ApiData(succeeded=succeeded, queued=[left])
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def api_server(
    sam: Sam,
    container_engine: ContainerEngine,
    pg: Any,
    api_database: str,
    api_queue_url: str,
    api_data: ApiData,
    moto_server: stack.MotoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalApi]:
    folder = tmp_path_factory.mktemp("start-api")
    env_vars = write_env_vars(
        folder / "env.json",
        container_engine,
        pg=pg,
        database=api_database,
        moto_endpoint=moto_server.endpoint,
        queue_url=api_queue_url,
    )
    server = LocalApi.start(sam, env_vars, folder)
    yield server
    server.stop(container_engine)


@pytest.fixture(scope="module", autouse=True)
def _start_api_first(api_server: LocalApi) -> None:
    """start-api from the module's first test on. SAM rebuilds the Lambda image (a template
    layer) for every container it starts, one build at a time, and a process that finds the
    same build under way waits for it instead: so start-api's three builds (EAGER: every
    function) also serve the `sam local invoke` tests, which roughly halves the module's time."""


@pytest.fixture(scope="module")
def api(api_server: LocalApi) -> LocalApi:
    api_server.wait_until_listening(timeout=300)
    api_server.warm_every_function(timeout=300)
    return api_server


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def get(
    api: LocalApi, path: str, token: str | None = API_TOKEN, **params: Any
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(f"{api.base_url}{path}", params=params, headers=headers, timeout=60)


def ok(api: LocalApi, path: str, **params: Any) -> Any:
    resp = get(api, path, **params)
    assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text}\n{api.log_tail()}"
    assert resp.headers["Content-Type"].startswith("application/json")
    return resp.json()


def test_openapi_document_lists_every_route(api: LocalApi) -> None:
    doc = ok(api, "/openapi.json")
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) >= {
        "/jobs",
        "/jobs/{job_id}",
        "/batches",
        "/batches/{batch_key}",
        "/entities",
    }


@pytest.mark.parametrize(
    "path",
    [
        "/jobs",
        f"/batches/{DAILY}",
        "/batches",
        "/entities",
        "/openapi.json",
        f"/jobs/{uuid.UUID(int=1)}",
    ],
)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", f"Basic {API_TOKEN}", "Bearer "]
)
def test_every_route_needs_the_bearer_token(
    api: LocalApi, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    resp = requests.get(f"{api.base_url}{path}", headers=headers, timeout=60)
    assert resp.status_code == 401, resp.text
    assert resp.json()["message"] == "missing or invalid bearer token"
    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")


def test_jobs_list_filters_pages_and_counts(api: LocalApi, api_data: ApiData) -> None:
    page = ok(api, "/jobs", batch_key=DAILY)
    assert len(page["items"]) == 4 and page["next_cursor"] is None
    assert nonzero(page["summary"]) == {"succeeded": 3, "queued": 1}
    first = ok(api, "/jobs", batch_key=DAILY, limit=3)
    assert len(first["items"]) == 3 and first["next_cursor"]
    rest = ok(api, "/jobs", batch_key=DAILY, limit=3, cursor=first["next_cursor"])
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    paged = [j["id"] for j in first["items"] + rest["items"]]
    assert sorted(paged) == sorted(j["id"] for j in page["items"])
    only_queued = ok(api, "/jobs", status="queued")
    assert [j["id"] for j in only_queued["items"]] == api_data.queued
    assert {j["model"] for j in ok(api, "/jobs", model="beta")["items"]} == {"beta"}
    assert {j["prompt"] for j in ok(api, "/jobs", prompt="laptops")["items"]} == {"laptops"}


def test_one_job_with_its_answer_and_mentions(api: LocalApi, api_data: ApiData) -> None:
    job = ok(api, f"/jobs/{api_data.succeeded[0]}")
    assert job["id"] == api_data.succeeded[0] and job["status"] == "succeeded"
    assert job["response"]["answer_text"].startswith("[offline synthetic answer]")
    assert job["mentions"] and [m["rank"] for m in job["mentions"]] == list(
        range(1, len(job["mentions"]) + 1)
    )
    queued = ok(api, f"/jobs/{api_data.queued[0]}")
    assert queued["status"] == "queued" and queued["response"] is None
    missing = get(api, f"/jobs/{uuid.uuid4()}")
    assert missing.status_code == 404 and "not found" in missing.json()["message"]


def test_batches_and_a_batch_summary(api: LocalApi) -> None:
    batches = ok(api, "/batches")
    assert {b["batch_key"] for b in batches["items"]} == {DAILY, HOURLY}
    summary = ok(api, f"/batches/{DAILY}")
    assert summary["batch_key"] == DAILY and summary["total"] == 4
    assert nonzero(summary["counts"]) == {"succeeded": 3, "queued": 1}
    assert summary["progress"] == pytest.approx(0.75) and summary["ended_at"] is None
    assert {m["model"] for m in summary["by_model"]} == {"alpha", "beta"}
    assert summary["input_tokens"] > 0 and summary["cost_usd"] > 0
    hourly = ok(api, f"/batches/{HOURLY}")
    assert hourly["progress"] == 1 and hourly["ended_at"]
    assert get(api, "/batches/2001-01-01").status_code == 404


def test_entity_counts(api: LocalApi) -> None:
    report = ok(api, "/entities", batch_key=DAILY)
    assert report["answers"] == 3 and report["items"]
    top = report["items"][0]
    assert 1 <= top["jobs"] <= 3 and top["mentions"] >= top["jobs"]
    assert ok(api, "/entities", batch_key=DAILY, model="beta")["answers"] <= 2


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/jobs", {"limit": "0"}, "limit"),
        ("/jobs", {"limit": "many"}, "limit"),
        ("/jobs", {"status": "lost"}, "status"),
        ("/jobs", {"cursor": "not-a-cursor"}, "cursor"),
        ("/jobs", {"batch_key": "bad key!"}, "batch_key"),
        ("/jobs", {"prompt": "Not A Slug"}, "prompt"),
        ("/jobs/not-a-uuid", {}, "job_id"),
        ("/batches", {"limit": "101"}, "limit"),
        ("/batches/bad key!", {}, "batch_key"),
        ("/entities", {"limit": "1001"}, "limit"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    api: LocalApi, path: str, params: dict[str, str], field: str
) -> None:
    resp = get(api, path, **params)
    assert 400 <= resp.status_code < 500, f"{resp.status_code} {resp.text}"
    assert field in {str(part) for d in resp.json()["detail"] for part in d["loc"]}, resp.text


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    api: LocalApi, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "schemathesis"), "run", f"{api.base_url}/openapi.json",
            "--url", api.base_url,
            "--header", f"Authorization: Bearer {API_TOKEN}",
            "--checks", "not_a_server_error,response_schema_conformance",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", "15",
            "--workers", "1",
            "--seed", "20261122",
            "--generation-database", "none",
            "--request-timeout", "30",
            "--no-color",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"{tail(proc.stdout, 400)}\n{tail(proc.stderr)}"
