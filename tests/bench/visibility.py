"""`make bench` (part): /visibility and /visibility/trends on a year of daily batches with
about 1M mentions, on the real local PostgreSQL. Prints figures and which indexes the
queries scanned (pg_stat_user_indexes deltas); asserts nothing about speed.

PROMPTRUN_BENCH_DAYS (365) and PROMPTRUN_BENCH_PROMPTS (50) scale it down."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from datetime import date
from typing import Any

from sqlalchemy import Engine, create_engine, make_url, text

from promptrun.catalog import load_catalog, sync_catalog
from promptrun.db.engine import connect_args_for
from promptrun.visibility import Slice, refresh_rollups, trends, visibility
from tests.support import stack

DAYS = int(os.environ.get("PROMPTRUN_BENCH_DAYS", "365"))
PROMPTS = int(os.environ.get("PROMPTRUN_BENCH_PROMPTS", "50"))
MODELS, RUNS = 4, 3
VOCABULARY = [
    "Acme", "Acme CRM", "Globex", "Initech", "Hooli", "Northwind Suite", "Pied Piper",
    "Umbrella Analytics", "Stark Ledger", "Wayne Desk", "Soylent Cloud", "Ada Lovelace",
]  # fmt: skip


def catalog() -> str:
    models = "\n".join(f"  - {{slug: m{i}, provider: offline, model: m{i}}}" for i in range(MODELS))
    prompts = "\n".join(
        f'  - {{slug: p{i}, text: "Question {i}?", schedule: daily, runs: {RUNS}}}'
        for i in range(PROMPTS)
    )
    return f"""models:
{models}
prompts:
{prompts}
brands:
  - {{slug: acme, name: Acme, own: true, aliases: [Acme CRM, acme.com]}}
  - {{slug: globex, name: Globex}}
  - {{slug: initech, name: Initech}}
  - {{slug: hooli, name: Hooli}}
  - {{slug: northwind, name: Northwind, aliases: [Northwind Suite]}}
"""


def generate(engine: Engine) -> tuple[int, int]:
    """Jobs for every day x prompt x model x run, and per job each vocabulary name with a
    probability that depends on the model (so rates differ), ranked in vocabulary order."""
    with engine.begin() as conn:
        conn.execute(
            text(
                """INSERT INTO prompt_jobs (id, prompt_id, model_id, run_index, batch_key,
                       prompt_version, status, attempt_count, max_attempts, scheduled_for,
                       finished_at, duration_ms)
                   SELECT gen_random_uuid(), p.id, m.id, r,
                          to_char(d, 'YYYY-MM-DD'), 'v1', 'succeeded', 1, 5, d, d, 1000
                   FROM generate_series(timestamptz '2025-01-01', timestamptz '2025-01-01'
                                        + make_interval(days => :days - 1), interval '1 day') d,
                        prompts p, models m, generate_series(0, :runs - 1) r"""
            ),
            {"days": DAYS, "runs": RUNS},
        )
        conn.execute(
            text(
                """INSERT INTO entity_mentions (job_id, prompt_id, model_id, batch_key, name,
                       display_name, entity_type, rank, sentiment)
                   SELECT job_id, prompt_id, model_id, batch_key, lower(name), name, 'brand',
                          row_number() OVER (PARTITION BY job_id ORDER BY i),
                          (ARRAY['positive', 'neutral', 'negative'])[1 + mod(h, 3)]
                   FROM (
                       SELECT j.id AS job_id, j.prompt_id, j.model_id, j.batch_key, v.name,
                              v.i, abs(hashtext(j.id::text || v.i::text)) AS h
                       FROM prompt_jobs j
                       CROSS JOIN unnest(CAST(:vocab AS text[])) WITH ORDINALITY AS v(name, i)
                   ) x
                   WHERE mod(h, 100) < 30 + 10 * mod(model_id + i, 3)"""
            ),
            {"vocab": VOCABULARY},
        )
        jobs = conn.execute(text("SELECT count(*) FROM prompt_jobs")).scalar_one()
        mentions = conn.execute(text("SELECT count(*) FROM entity_mentions")).scalar_one()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    return int(jobs), int(mentions)


def live_figure(engine: Engine) -> None:
    """The same query with no rollup (batches not finished yet): every mention is read."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE batch_completions SET rolled_up_at = NULL"))
    timed(
        "  ... the same, batches not rolled up (live)",
        engine,
        lambda: visibility(engine, Slice(), group_by="model"),
        repeat=3,
    )


def index_scans(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT indexrelname, idx_scan FROM pg_stat_user_indexes")).all()
    return {r[0]: int(r[1]) for r in rows}


def timed(label: str, engine: Engine, fn: Callable[[], Any], repeat: int = 5) -> None:
    fn()  # warm: plans and pages cached, as for a status function that has served before
    before = index_scans(engine)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    time.sleep(0.6)  # the statistics collector reports with a short delay
    after = index_scans(engine)
    used = sorted(k for k, v in after.items() if v > before.get(k, 0))
    print(
        f"  {label:<52} median {statistics.median(times):8.1f} ms  "
        f"(min {min(times):.1f})  indexes: {', '.join(used) or 'none'}"
    )


def main() -> None:
    pg = stack.start_postgres()
    template = stack.template_database(pg)
    db = stack.create_test_database(pg, template)
    try:
        # No socket timeout: generating the data set takes a few statements of minutes on a
        # slow machine, where the functions' 10 s (db/connect.py) would cut them off.
        plain, connect_args = connect_args_for(make_url(stack.url_for(pg, db)))
        engine = create_engine(plain, connect_args={**connect_args, "timeout": None}, pool_size=2)
        sync_catalog(engine, load_catalog(catalog()))
        start = time.perf_counter()
        jobs, mentions = generate(engine)
        print(
            f"visibility: {DAYS} daily batches, {jobs:,} answers, {mentions:,} mentions "
            f"(generated in {time.perf_counter() - start:.0f} s)"
        )
        # As in production: every batch finished, so its rollup was summed at completion.
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO batch_completions (batch_key, sent_at) "
                    "SELECT DISTINCT batch_key, now() FROM prompt_jobs"
                )
            )
        start = time.perf_counter()
        with engine.begin() as conn:
            refresh_rollups(conn)
        whole = time.perf_counter() - start
        start = time.perf_counter()
        with engine.begin() as conn:
            refresh_rollups(conn, ["2025-06-01"])
        one = time.perf_counter() - start
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*) FROM visibility_rollups")).scalar_one()
        print(
            f"  rollups: {rows:,} rows; one batch at its completion {one * 1000:.0f} ms; "
            f"every batch again (a sync that changes aliases) {whole:.1f} s"
        )
        last = date(2025, 1, 1).toordinal() + DAYS - 1
        month = Slice(date_from=date.fromordinal(last - 29), date_to=date.fromordinal(last))
        timed(
            "GET /visibility?group_by=model (all batches)",
            engine,
            lambda: visibility(engine, Slice(), group_by="model"),
        )
        timed(
            "GET /visibility?group_by=batch (all batches)",
            engine,
            lambda: visibility(engine, Slice(), group_by="batch"),
        )
        timed(
            "GET /visibility?brand=acme&model=m1&group_by=prompt",
            engine,
            lambda: visibility(engine, Slice(model="m1"), brand="acme", group_by="prompt"),
        )
        timed(
            "GET /visibility?from=..&to=.. (last 30 days, by batch)",
            engine,
            lambda: visibility(engine, month, group_by="batch"),
        )
        timed(
            "GET /visibility/trends?brand=acme (all batches, per model)",
            engine,
            lambda: trends(engine, Slice(), brand="acme"),
        )
        live_figure(engine)
        engine.dispose()
    finally:
        stack.drop_database(pg, db)


if __name__ == "__main__":
    main()
