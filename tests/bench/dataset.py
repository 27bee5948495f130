"""The status-read data set: 1,000,000 jobs and about 4,000,000 mentions, built with
generate_series once per set of migrations and kept as a database of its own (reused by later
runs: a second `make bench` skips the minutes it takes to build)."""

from __future__ import annotations

import hashlib
import time

from sqlalchemy import create_engine, text

from promptrun.db import migrate
from promptrun.local.postgres import LocalPostgres
from tests.support import stack

BATCHES, PROMPTS, MODELS = 100, 1000, 10  # 1,000,000 jobs, one run each

_BUILD = [
    f"INSERT INTO models (slug, provider, provider_model, params, price_input_per_mtok, "
    f"price_output_per_mtok, max_concurrency, enabled) SELECT 'model-' || i, 'offline', "
    f"'m' || i, '{{}}', 1, 2, 100, true FROM generate_series(1, {MODELS}) i",
    f"INSERT INTO prompts (slug, text, schedule, runs_per_batch, enabled, version) "
    f"SELECT 'prompt-' || i, 'Question ' || i || '?', 'daily', 1, true, 'v1' "
    f"FROM generate_series(1, {PROMPTS}) i",
    # Statuses, durations, tokens and errors spread by a hash of the row's coordinates.
    f"""
    INSERT INTO prompt_jobs (id, prompt_id, model_id, run_index, batch_key, prompt_version,
        status, attempt_count, max_attempts, scheduled_for, started_at, finished_at,
        created_at, updated_at, duration_ms, input_tokens, output_tokens, cost_usd,
        error_kind, error_message)
    SELECT gen_random_uuid(), p.id, m.id, 0, to_char(day, 'YYYY-MM-DD'), 'v1',
        CASE WHEN h < 90 THEN 'succeeded' WHEN h < 95 THEN 'failed'
             WHEN h < 97 THEN 'queued' ELSE 'cancelled' END,
        1, 5, day, day + interval '1 minute', day + interval '2 minutes',
        day + (p.id * interval '1 ms'), day + interval '2 minutes',
        CASE WHEN h < 95 THEN 500 + (h * 397 + p.id) % 20000 END,
        CASE WHEN h < 90 THEN 200 + h END, CASE WHEN h < 90 THEN 400 + h END,
        CASE WHEN h < 90 THEN 0.0012 END,
        CASE WHEN h >= 90 AND h < 95 THEN (ARRAY['rate_limit', 'timeout', 'server',
            'bad_request', 'validation'])[1 + h % 5] END,
        CASE WHEN h >= 90 AND h < 95 THEN 'error ' || (h % 7) END
    FROM generate_series(0, {BATCHES - 1}) b
    CROSS JOIN LATERAL (SELECT timestamptz '2026-08-01' + b * interval '1 day' AS day) d
    CROSS JOIN prompts p CROSS JOIN models m
    CROSS JOIN LATERAL (SELECT abs(hashint4((p.id * 7919 + m.id * 104729 + b)::int)) % 100 AS h) x
    """,
    # 4 or 5 mentions per succeeded job, from 2,000 names (a few spellings each).
    """
    INSERT INTO entity_mentions (job_id, prompt_id, model_id, batch_key, name, display_name,
        entity_type, rank)
    SELECT j.id, j.prompt_id, j.model_id, j.batch_key, 'entity ' || e, 'Entity ' || e
        || CASE WHEN k = 1 THEN '' ELSE ' Inc' END, CASE WHEN e % 3 = 0 THEN 'product'
        ELSE 'brand' END, k
    FROM prompt_jobs j
    CROSS JOIN LATERAL generate_series(1, 4 + j.prompt_id % 2) k
    CROSS JOIN LATERAL (SELECT (abs(hashint4((j.prompt_id * 31 + j.model_id)::int)) + k * 397) % 2000
        AS e) n
    WHERE j.status = 'succeeded'
    """,
    "SELECT promptrun_compact_summaries()",
]


def database_name() -> str:
    digest = hashlib.sha256(f"{BATCHES}-{PROMPTS}-{MODELS}".encode())
    for f in sorted(stack.MIGRATIONS.glob("*.py")):
        digest.update(f.read_bytes())
    digest.update(b"".join(s.encode() for s in _BUILD))
    return f"bench_1m_{digest.hexdigest()[:10]}"


def ensure(pg: LocalPostgres) -> tuple[str, float | None]:
    """(database name, seconds it took to build, None when it was there already)."""
    name = database_name()
    admin = create_engine(pg.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
            admin.dispose()
            return name, None
        for (old,) in conn.execute(
            text("SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_1m\\_%'")
        ).all():
            conn.execute(text(f'DROP DATABASE "{old}" WITH (FORCE)'))
        build = f"{name}_build"
        conn.execute(text(f'DROP DATABASE IF EXISTS "{build}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{build}"'))
    started = time.perf_counter()
    engine = create_engine(pg.url(build))
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE summary_compaction SET compacted_at = now() + interval '1 day'"))
        for statement in _BUILD:
            conn.execute(text(statement))
        conn.execute(text("UPDATE summary_compaction SET compacted_at = now()"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{build}" RENAME TO "{name}"'))
    admin.dispose()
    return name, time.perf_counter() - started
