"""`make bench`, flow control: 500 jobs through 1 and 4 processor processes against a local
OpenAI-protocol server that enforces an RPM limit (429 with Retry-After past it).

Prints, per run: the request rate sustained as a share of the server's RPM limit (goal at
least 90%), the share of requests answered 429 (goal under 2%), SQS messages sent and
processor invocations per job (goal at most 1.5), and the wall time. Asserts nothing."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import boto3
from sqlalchemy import text

from promptrun import aws
from promptrun.aws import JobQueue
from promptrun.catalog import load_catalog, sync_catalog
from promptrun.db.engine import engine_for_url
from promptrun.fanout import FanoutRequest, run_fanout
from promptrun.settings import Settings
from tests.support import stack
from tests.support.fake_openai import FakeOpenAI
from tests.support.processors import Processors, limited_queue, message_count

JOBS = int(os.environ.get("BENCH_FLOW_JOBS", "500"))
RPM = int(os.environ.get("BENCH_FLOW_RPM", "1200"))  # requests per minute at the server
LATENCY = 0.2  # seconds per model call
PROMPTS = 50


def catalogue(base_url: str) -> str:
    runs = JOBS // PROMPTS
    prompts = "\n".join(
        f'  - {{slug: p{i}, text: "Bench question {i}?", schedule: daily, runs: {runs}}}'
        for i in range(PROMPTS)
    )
    return f"""
models:
  - {{slug: gpt, provider: openai, model: fake-model, base_url: "{base_url}",
      max_concurrency: 40, rpm: {RPM}, params: {{max_tokens: 25}}}}
prompts:
{prompts}
"""


def emf_sum(log_dir: Path, name: str) -> int:
    """Sum of one Powertools metric over the processors' logs (EMF lines)."""
    total = 0.0
    for path in log_dir.glob("processor-*.log"):
        for line in path.read_text(errors="replace").splitlines():
            start = line.find('{"_aws"')
            if start < 0:
                continue
            try:
                record = json.loads(line[start:])
            except ValueError:
                continue
            value = record.get(name)
            if isinstance(value, list):
                total += sum(value)
            elif isinstance(value, int | float):
                total += value
    return int(total)


def invocations(log_dir: Path) -> int:
    """Batches each poller reported (its last progress line)."""
    count = 0
    for path in log_dir.glob("processor-*.log"):
        seen = re.findall(r"poller: (\d+) batches", path.read_text(errors="replace"))
        if seen:
            count += int(seen[-1])
    return count


def run(pg: object, template: str, moto: stack.MotoServer, processes: int) -> None:
    db = stack.create_test_database(pg, template)  # type: ignore[arg-type]
    url = stack.url_for(pg, db)  # type: ignore[arg-type]
    engine = engine_for_url(url, pool_size=5)
    server = FakeOpenAI().start()
    try:
        server.default_delay = LATENCY
        server.limit(rpm=RPM, tpm=None)
        sqs = boto3.client("sqs")
        queue_url, dlq_url = limited_queue(sqs, visibility=60)
        settings = Settings(database_url=url, jobs_queue_url=queue_url, max_attempts=5)
        sync_catalog(engine, load_catalog(catalogue(server.base_url)))
        run_fanout(
            engine,
            JobQueue(queue_url),
            FanoutRequest(at=datetime(2026, 11, 22, 13, tzinfo=UTC)),
            settings,
        )
        with tempfile.TemporaryDirectory() as tmp:
            log_dir = Path(tmp)
            procs = Processors(
                {
                    "DATABASE_URL": url,
                    "JOBS_QUEUE_URL": queue_url,
                    "AWS_ENDPOINT_URL": moto.endpoint,
                    "OPENAI_API_KEY": "sk-bench",
                    "LEASE_SECONDS": "60",
                },
                log_dir,
            )
            procs.start(processes)

            def done() -> bool:
                with engine.connect() as conn:
                    left = conn.execute(
                        text(
                            "SELECT count(*) FROM prompt_jobs "
                            "WHERE status IN ('queued', 'processing')"
                        )
                    ).scalar_one()
                return left == 0

            try:
                wall = procs.wait_until(done, timeout=1800, poll=0.2)
            finally:
                # The last progress lines (at most one a second) and metrics reach the logs.
                time.sleep(3)
                procs.stop()
            resent = emf_sum(log_dir, "JobMessagesSent")
            batches = invocations(log_dir)
        stats = server.rate_stats
        accepted_at = sorted(stats.accepted_at)
        # Sustained rate: requests answered over the span from the first to the last one.
        span = (accepted_at[-1] - accepted_at[0]) if len(accepted_at) > 1 else 1.0
        rate = (len(accepted_at) - 1) / span * 60 if span > 0 else 0.0
        total_requests = stats.accepted + stats.throttled
        with engine.connect() as conn:
            by_status = dict(
                conn.execute(text("SELECT status, count(*) FROM prompt_jobs GROUP BY status")).all()
            )
        print(
            f"flow, {processes} processor(s), {JOBS} jobs, server limit {RPM} RPM, "
            f"{LATENCY * 1000:.0f} ms calls:"
        )
        print(
            f"  sustained {rate:.0f} RPM = {rate / RPM:.1%} of the limit (goal >= 90%); "
            f"429s {stats.throttled}/{total_requests} = "
            f"{stats.throttled / max(1, total_requests):.2%} (goal < 2%)"
        )
        print(
            f"  SQS messages sent per job {(JOBS + resent) / JOBS:.2f} "
            f"({JOBS} by fan-out + {resent} by processors); invocations per job "
            f"{batches / JOBS:.2f} ({batches} batches) (goals <= 1.5)"
        )
        print(
            f"  wall {wall:.1f} s for {JOBS} jobs; jobs {by_status}; "
            f"DLQ {message_count(sqs, dlq_url)} messages"
        )
    finally:
        server.stop()
        engine.dispose()
        stack.drop_database(pg, db)  # type: ignore[arg-type]


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
    try:
        for processes in _counts():
            run(pg, template, moto, processes)
    finally:
        moto.stop()


def _counts() -> Iterator[int]:
    yield from (int(n) for n in os.environ.get("BENCH_FLOW_PROCESSORS", "1,4").split(","))


if __name__ == "__main__":
    main()
