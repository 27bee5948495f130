"""The batch's claim locks its jobs and reads their limits rows in one statement
(batch_jobs.lock_batch with limits.FLOWS_SQL), without locking those: the rows must be exactly
what admission gets when it locks them itself (limits._LOCK_ROWS), floats and money included."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Engine, text

from promptrun import batch_jobs, limits
from promptrun.settings import Settings
from tests.conftest import sync
from tests.integration.test_batch_runner import job_ids
from tests.integration.test_processor import fan_out


def test_the_limits_rows_locked_with_the_jobs_are_the_ones_admission_reads(
    engine: Engine, settings: Settings
) -> None:
    sync(
        engine,
        """
limit_groups:
  - {name: org, max_concurrency: 5, rpm: 6000}
models:
  - {slug: a, provider: offline, model: a-1, limit_group: org, tpm: 90000,
     budget_usd: {per_batch: 0.123457, per_day: 10}}
  - {slug: b, provider: offline, model: b-1, rpm: 600}
  - {slug: dis, provider: offline, model: d-1, enabled: false}
  - {slug: unused, provider: offline, model: u-1}
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: 2, models: [a, b, dis]}
""",
    )
    fan_out(engine, settings)
    with engine.begin() as conn:  # values a float8 -> JSON -> float trip could round
        conn.execute(
            text(
                "UPDATE flow_limits SET token_tat = 1795455034.9118888, "
                "request_tat = 0.1 + 0.2, rate_factor = 1.0 / 3"
            )
        )
    ids = job_ids(engine)
    with engine.begin() as conn:
        batch = batch_jobs.lock_batch(conn, ids)
        with engine.begin() as other:  # the rows are not locked: another session need not wait
            other.execute(text("SET LOCAL lock_timeout = '2s'"))
            other.execute(text("SELECT key FROM flow_limits FOR UPDATE"))
        own = {
            r["key"]: dict(r)
            for r in conn.execute(limits._LOCK_ROWS, {"mks": ["model:a", "model:b"]}).mappings()
        }
    assert set(batch.jobs) == set(ids)
    # the claimable, enabled models' rows, their group's, and the catalogue's; not the others
    assert set(batch.flows) == {"model:a", "model:b", "group:org", "catalog"} == set(own)
    for key, row in own.items():
        got = batch.flows[key]
        for column, value in row.items():
            if column in ("updated_at", "now_s"):
                continue
            assert got[column] == value, (key, column)
            assert type(got[column]) is type(value), (key, column)
    assert batch.flows["model:a"]["budget_batch_usd"] == Decimal("0.123457")
    assert abs(batch.flows["model:a"]["now_s"] - own["model:a"]["now_s"]) < 5
