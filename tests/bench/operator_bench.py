"""Figures for operators' actions: retry and cancel of a large batch, prompt-version states,
retention (prune) throughput. Printed, never asserted."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import Engine, text

from promptrun import operator, retention
from promptrun.catalog import load_catalog, sync_catalog

OLD_JOBS = 50_000


def _catalog() -> str:
    # The 50 prompts and 4 models the seed spreads its jobs over (a fresh database has none).
    models = "\n".join(f"  - {{slug: m{i}, provider: offline, model: m{i}}}" for i in range(4))
    prompts = "\n".join(
        f'  - {{slug: p{i}, text: "Question {i}?", schedule: daily}}' for i in range(50)
    )
    return f"models:\n{models}\nprompts:\n{prompts}\n"


def _seed(engine: Engine) -> None:
    # Finished jobs 100 days old, one answer each, over the catalogue's prompts and models.
    sync_catalog(engine, load_catalog(_catalog()))
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO prompt_jobs (id, prompt_id, model_id, run_index, batch_key, prompt_version,
                    status, attempt_count, max_attempts, scheduled_for, finished_at)
                SELECT gen_random_uuid(), p.id, m.id, g, 'bench-old-' || mod(g, 50), p.version,
                       CASE WHEN mod(g, 4) = 0 THEN 'failed' ELSE 'succeeded' END, 1, 3,
                       now() - interval '100 days', now() - interval '100 days'
                FROM generate_series(1, :n) g
                JOIN LATERAL (SELECT id, version FROM prompts ORDER BY id OFFSET mod(g, 50) LIMIT 1) p ON true
                JOIN LATERAL (SELECT id FROM models ORDER BY id OFFSET mod(g, 4) LIMIT 1) m ON true
                """
            ),
            {"n": OLD_JOBS},
        )
        conn.execute(
            text(
                "INSERT INTO responses (job_id, answer_text, structured) SELECT id, 'x', '{}' "
                "FROM prompt_jobs WHERE batch_key LIKE 'bench-old-%' AND status = 'succeeded'"
            )
        )


def run(engine: Engine) -> None:
    _seed(engine)
    t0 = time.perf_counter()
    states = operator.prompt_states(engine)
    print(
        f"prompt versions: {len(states)} prompts' re-run state in {(time.perf_counter() - t0) * 1000:.0f} ms"
    )
    t0 = time.perf_counter()
    retried = operator.retry_batch(engine, None, "bench-old-0", statuses=["failed"])
    dt = time.perf_counter() - t0
    print(f"retry: {retried.retried} failed jobs of a batch back to queued in {dt * 1000:.0f} ms")
    t0 = time.perf_counter()
    cancelled = operator.cancel_batch(engine, "bench-old-0")
    print(
        f"cancel: {cancelled.cancelled} queued jobs in {(time.perf_counter() - t0) * 1000:.0f} ms"
    )
    t0 = time.perf_counter()
    report = retention.prune(engine, timedelta(days=90))
    dt = time.perf_counter() - t0
    print(
        f"prune: {report.jobs} finished jobs and {report.responses} answers in {dt:.2f} s "
        f"({report.jobs / dt:.0f} jobs/s, chunks of {retention.CHUNK})"
    )
