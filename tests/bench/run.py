"""`make bench`: figures for fan-out, processing and claiming, on the real local PostgreSQL and moto.

Prints numbers; asserts nothing about speed (timings vary by machine)."""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import boto3
from sqlalchemy import text

from promptrun import aws, jobs
from promptrun.aws import JobQueue
from promptrun.catalog import load_catalog, sync_catalog
from promptrun.db.engine import engine_for_url
from promptrun.fanout import FanoutRequest, create_jobs, send_pending
from promptrun.local.lambda_runtime import LocalContext, load_handler
from promptrun.local.poller import sqs_event
from promptrun.processor import JobRunner
from promptrun.settings import Settings, get_settings
from tests.bench import operator_bench
from tests.support import stack
from tests.support.sqs import receive_all

PROMPTS, MODELS, RUNS = 50, 4, 5


def catalog(latency_ms: int = 0) -> str:
    models = "\n".join(
        f"  - {{slug: m{i}, provider: offline, model: m{i}, max_concurrency: 100, params: {{latency_ms: {latency_ms}}}}}"
        for i in range(MODELS)
    )
    prompts = "\n".join(
        f'  - {{slug: p{i}, text: "Question {i}?", schedule: daily, runs: {RUNS}}}'
        for i in range(PROMPTS)
    )
    return f"models:\n{models}\nprompts:\n{prompts}\n"


def main() -> None:
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        POWERTOOLS_LOG_LEVEL="ERROR",
    )
    pg = stack.start_postgres()
    template = stack.template_database(pg)
    moto = stack.MotoServer()
    os.environ["AWS_ENDPOINT_URL"] = moto.endpoint
    aws.client.cache_clear()
    db = stack.create_test_database(pg, template)
    try:
        url = stack.url_for(pg, db)
        engine = engine_for_url(url, pool_size=20)
        sqs = boto3.client("sqs")
        queue_url = sqs.create_queue(QueueName=f"bench-{uuid.uuid4().hex[:6]}")["QueueUrl"]
        settings = Settings(
            database_url=url, jobs_queue_url=queue_url, max_attempts=3, lease_seconds=60
        )
        sync_catalog(engine, load_catalog(catalog()))
        total = PROMPTS * MODELS * RUNS
        print(f"catalogue: {PROMPTS} prompts x {MODELS} models x {RUNS} runs = {total} jobs")

        t0 = time.perf_counter()
        created = create_jobs(
            engine, FanoutRequest(at=datetime(2026, 11, 22, 13, tzinfo=UTC)), settings
        ).created
        t1 = time.perf_counter()
        sent, failed, _ = send_pending(engine, JobQueue(queue_url), settings)
        t2 = time.perf_counter()
        print(
            f"fan-out insert: {created} rows in {t1 - t0:.2f} s ({created / (t1 - t0):.0f} rows/s)"
        )
        print(
            f"fan-out send:   {sent} messages in {t2 - t1:.2f} s ({sent / (t2 - t1):.0f} msg/s, moto), {failed} failed"
        )
        t0 = time.perf_counter()
        again = create_jobs(
            engine, FanoutRequest(at=datetime(2026, 11, 22, 14, tzinfo=UTC)), settings
        )
        print(
            f"fan-out re-run for the same period: {again.created} created, {again.existing} existing, {time.perf_counter() - t0:.2f} s"
        )

        bodies = [m["Body"] for m in receive_all(sqs, queue_url, delete=True)]
        runner = JobRunner(engine, settings, None)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(lambda b: runner.handle(b, None), bodies))
        dt = time.perf_counter() - t0
        print(
            f"processor (offline model, 10 threads): {len(bodies)} jobs in {dt:.2f} s ({len(bodies) / dt:.0f} jobs/s)"
        )

        # Claim latency on fresh jobs.
        with engine.begin() as conn:
            conn.execute(text("UPDATE prompt_jobs SET status = 'queued', attempt_count = 0"))
            ids = [r[0] for r in conn.execute(text("SELECT id FROM prompt_jobs LIMIT 300"))]
        lat = []
        for job_id in ids:
            s = time.perf_counter()
            with engine.begin() as conn:
                jobs.claim_job(conn, job_id, 60)
            lat.append((time.perf_counter() - s) * 1000)
        q = statistics.quantiles(lat, n=20)
        print(
            f"claim_job latency: p50 {statistics.median(lat):.2f} ms, p95 {q[18]:.2f} ms over {len(lat)} claims"
        )

        # One SQS batch of 10 through the real handler, model waiting 300 ms per call.
        sync_catalog(engine, load_catalog(catalog(latency_ms=300)))
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM entity_mentions"))
            conn.execute(text("DELETE FROM responses"))
            conn.execute(
                text(
                    "UPDATE prompt_jobs SET status = 'queued', attempt_count = 0, lease_expires_at = NULL"
                )
            )
            batch_ids = [
                str(r[0]) for r in conn.execute(text("SELECT id FROM prompt_jobs LIMIT 10"))
            ]
        for job_id in batch_ids:
            sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"job_id": job_id}))
        msgs = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
        os.environ.update(DATABASE_URL=url, JOBS_QUEUE_URL=queue_url)
        get_settings.cache_clear()
        handler = load_handler("processor", fresh=True)
        event = sqs_event(msgs, "arn:aws:sqs:us-east-1:000000000000:bench", "us-east-1")
        t0 = time.perf_counter()
        out = handler.lambda_handler(event, LocalContext("processor", 60))
        dt = time.perf_counter() - t0
        print(
            f"processor handler, batch of {len(msgs)} with 300 ms model calls: {dt:.2f} s wall "
            f"(sequential would be >= {0.3 * len(msgs):.1f} s), failures {len(out['batchItemFailures'])}"
        )
        operator_bench.run(engine)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of the bench process: {peak_mb:.0f} MiB")
        engine.dispose()
    finally:
        stack.drop_database(pg, db)
        moto.stop()


if __name__ == "__main__":
    main()
