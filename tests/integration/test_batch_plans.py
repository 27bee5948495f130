"""The batch statements reach their jobs by key or tuple id whatever the statistics say.

Right after a fan-out every job is `queued`, so ANALYZE records no `processing` job and the
planner would take the partial status index as the most selective path for a predicate on
`processing`, then walk every live job in it. The claim and the finishing statement must not:
these plans are read from EXPLAIN on exactly that state: the plan made for the values given
(an unnamed statement's), and the generic plan a prepared statement settles on after its
first executions (DATABASE_PREPARED_STATEMENTS), made with no values at all."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text

from promptrun import batch_completion, batch_jobs, limits
from promptrun.db.pool import Pool
from promptrun.db.sql import Sql
from promptrun.fanout import FanoutRequest, create_jobs
from promptrun.settings import Settings
from tests.conftest import sync

PROMPTS, RUNS = 40, 50  # 2,000 jobs: enough that an index beats reading the table


def _stale_statistics(engine: Engine, settings: Settings) -> list[tuple[str, str]]:
    prompts = "\n".join(
        f'  - {{slug: p{i}, text: "Q{i}?", schedule: daily, runs: {RUNS}}}' for i in range(PROMPTS)
    )
    sync(engine, f"models:\n  - {{slug: m, provider: offline, model: m}}\nprompts:\n{prompts}\n")
    create_jobs(engine, FanoutRequest(at=datetime(2026, 11, 22, 13, tzinfo=UTC)), settings)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE prompt_jobs"))  # every job queued, none processing
        return [
            (str(r[0]), r[1])
            for r in conn.execute(text("SELECT id, CAST(ctid AS text) FROM prompt_jobs LIMIT 10"))
        ]


@pytest.fixture(params=["custom", "generic"])
def plan_of(request: pytest.FixtureRequest, engine: Engine, pool: Pool):  # type: ignore[no-untyped-def]
    """EXPLAIN of a statement with these values: planned for them, or the generic plan."""

    def custom(sql: Sql, params: dict[str, object]) -> str:
        with engine.begin() as conn:
            return "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + sql.text), params))

    def generic(sql: Sql, params: dict[str, object]) -> str:
        # EXECUTE takes no protocol parameters (a utility statement): the values as literals
        values = ", ".join("'" + str(v).replace("'", "''") + "'" for v in sql.values(params))
        with pool.begin() as conn:
            dbapi = conn.dbapi
            dbapi.execute_simple("SET LOCAL plan_cache_mode = force_generic_plan")
            dbapi.execute_simple(f"PREPARE plan_probe AS {sql.positional}")
            try:
                done = dbapi.execute_simple(f"EXPLAIN EXECUTE plan_probe({values})")
                return "\n".join(r[0] for r in done.rows or [])
            finally:
                dbapi.execute_simple("DEALLOCATE plan_probe")

    return custom if request.param == "custom" else generic


def test_the_claim_reads_its_rows_by_tuple_id(
    engine: Engine, settings: Settings, plan_of: Any
) -> None:
    jobs = _stale_statistics(engine, settings)
    plan = plan_of(
        batch_jobs._CLAIM,
        {"ids": ",".join(i for i, _ in jobs), "tids": " ".join(t for _, t in jobs), "lease": 60},
    )
    assert "Tid Scan on prompt_jobs" in plan, plan
    assert "ix_prompt_jobs_live" not in plan, plan


def test_the_quick_claim_reads_its_rows_by_key(
    engine: Engine, settings: Settings, plan_of: Any
) -> None:
    jobs = _stale_statistics(engine, settings)
    plan = plan_of(batch_jobs._CLAIM_QUICK, {"ids": ",".join(i for i, _ in jobs), "lease": 60})
    claim = plan[plan.index("CTE claimed") :]  # the UPDATE that claims them
    assert "Index Scan on pk_prompt_jobs" in claim, plan
    assert "ix_prompt_jobs_live" not in plan, plan
    assert "Seq Scan on prompt_jobs" not in plan, plan


def test_the_finishing_statement_reads_its_jobs_by_key(
    engine: Engine, settings: Settings, plan_of: Any
) -> None:
    jobs = _stale_statistics(engine, settings)
    with engine.begin() as conn:  # claimed since the statistics were taken
        conn.execute(
            text(
                "UPDATE prompt_jobs SET status = 'processing', attempt_count = 1, "
                "started_at = now() WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": [i for i, _ in jobs]},
        )
    done = [{"id": i, "attempt": 1, "inp": 1, "out": 1, "cost": "0"} for i, _ in jobs]
    params = {
        "ids": ",".join(i for i, _ in jobs),
        "jobs": json.dumps(done),
        "responses": "[]",
        "mentions": "[]",
    }
    plan = plan_of(
        batch_jobs._COMPLETE_AND_RELEASE, {**params, **(limits.release_done_params([]) or {})}
    )
    assert "pk_prompt_jobs" in plan, plan
    assert "ix_prompt_jobs_live" not in plan, plan


def test_the_completion_check_reads_no_live_job(
    engine: Engine, settings: Settings, plan_of: Any
) -> None:
    """After every batch the processor checks whether its jobs' batches have anything left:
    from the summaries, so of prompt_jobs only its own jobs' rows, by key (read from
    prompt_jobs, the check hashed every live job each time)."""
    jobs = _stale_statistics(engine, settings)
    plan = plan_of(batch_completion._FINISHED_BATCHES, {"ids": ",".join(i for i, _ in jobs)})
    assert set(re.findall(r"\b(ix_prompt_jobs_\w+|pk_prompt_jobs)\b", plan)) == {"pk_prompt_jobs"}
    assert "Seq Scan on prompt_jobs" not in plan, plan
