"""The batch's quick claim against real PostgreSQL (batch_jobs.claim_quick): one statement
locks the jobs and their limits rows, and takes the slots and claims the jobs when all they
need is a free slot; when a row asks for more or has too few slots, it takes and claims
nothing, and the batch is admitted with its limits rows locked."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import Engine, text

from promptrun import batch_jobs, limits
from promptrun.batch_runner import BatchRunner, Record
from promptrun.db.pool import Pool
from promptrun.processor import Outcome
from promptrun.settings import Settings
from tests.conftest import sync
from tests.integration.test_batch_runner import body, job_ids
from tests.integration.test_processor import fan_out, statuses

CATALOGUE = """
limit_groups:
  - {name: org, max_concurrency: 100}
models:
  - {slug: a, provider: offline, model: a-1, max_concurrency: 5}
  - {slug: b, provider: offline, model: b-1, limit_group: org}
  - {slug: dis, provider: offline, model: d-1, enabled: false}
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: 2, models: [a, b]}
"""


def in_flight(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {k: n for k, n in conn.execute(text("SELECT key, in_flight FROM flow_limits"))}


def change(engine: Engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql))


def claim(pool: Pool, engine: Engine, settings: Settings) -> batch_jobs.QuickClaim | None:
    with batch_jobs.autocommit(pool) as conn:
        return batch_jobs.claim_quick(conn, job_ids(engine), settings.lease_seconds)


def test_a_quick_claim_takes_the_slots_of_its_models_and_groups_on_top_of_theirs(
    engine: Engine, pool: Pool, settings: Settings
) -> None:
    sync(engine, CATALOGUE)
    fan_out(engine, settings)
    change(engine, "UPDATE flow_limits SET in_flight = 3 WHERE key = 'model:a'")
    quick = claim(pool, engine, settings)
    assert quick is not None
    ids = job_ids(engine)
    assert quick.claimed == set(ids) == set(quick.jobs)
    assert statuses(engine) == {"processing": 4}
    assert in_flight(engine) == {
        "model:a": 5,
        "model:b": 2,
        "group:org": 2,
        "model:dis": 0,
        "catalog": 0,
    }
    keys = Counter(quick.keys.values())
    assert keys == {("model:a",): 2, ("group:org", "model:b"): 2}
    # delivered again: nothing claimable, nothing taken, nothing to check (a budget no matter)
    change(engine, "UPDATE flow_limits SET budget_day_usd = 1 WHERE key = 'catalog'")
    again = claim(pool, engine, settings)
    assert again is not None and again.claimed == set()
    assert {j.status for j in again.jobs.values()} == {"processing"}
    assert in_flight(engine)["model:a"] == 5


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE flow_limits SET in_flight = 4 WHERE key = 'model:a'",  # 4 + 2 > 5
        "UPDATE flow_limits SET in_flight = 99 WHERE key = 'group:org'",  # 99 + 2 > 100
        "UPDATE flow_limits SET paused = true WHERE key = 'model:b'",
        "UPDATE flow_limits SET rpm = 60 WHERE key = 'group:org'",
        "UPDATE flow_limits SET tpm = 90000 WHERE key = 'model:a'",
        "UPDATE flow_limits SET budget_batch_usd = 1 WHERE key = 'model:a'",
        "UPDATE flow_limits SET budget_day_usd = 1 WHERE key = 'catalog'",
        "UPDATE flow_limits SET request_tat = 4e9 WHERE key = 'model:a'",  # a Retry-After
        "UPDATE flow_limits SET token_tat = 4e9 WHERE key = 'group:org'",
    ],
    ids=[
        "model slots",
        "group slots",
        "paused",
        "rpm",
        "tpm",
        "batch budget",
        "catalogue budget",
        "retry-after",
        "token wait",
    ],
)
def test_a_row_that_needs_more_than_a_free_slot_gets_nothing_claimed_or_taken(
    engine: Engine, pool: Pool, settings: Settings, sql: str
) -> None:
    sync(engine, CATALOGUE)
    fan_out(engine, settings)
    change(engine, sql)
    before = in_flight(engine)
    assert claim(pool, engine, settings) is None
    assert statuses(engine) == {"queued": 4}
    assert in_flight(engine) == before


def test_jobs_that_need_no_slot_are_claimed_without_one(
    engine: Engine, pool: Pool, settings: Settings
) -> None:
    sync(engine, CATALOGUE.replace("models: [a, b]", "models: [a, b, dis]"))
    fan_out(engine, settings)
    change(engine, "UPDATE models SET enabled = false WHERE slug = 'b'")
    change(engine, "DELETE FROM flow_limits WHERE key = 'model:a'")  # synced before limits
    quick = claim(pool, engine, settings)
    assert quick is not None and len(quick.claimed) == 4
    assert quick.keys == {j: () for j in job_ids(engine, "m.slug = 'a'")}  # no row, no slot
    assert in_flight(engine) == {"model:b": 0, "group:org": 0, "catalog": 0, "model:dis": 0}


def test_a_batch_whose_limits_need_more_is_admitted_with_its_rows_locked(
    engine: Engine, pool: Pool, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    sync(engine, CATALOGUE)
    fan_out(engine, settings)
    ids = job_ids(engine, "m.slug = 'a'")  # 2 jobs of a model with 5 slots
    # 4 calls of other processors, counted just now (no recount for a while)
    change(
        engine,
        "UPDATE flow_limits SET in_flight = 4, "
        "recounted_at = EXTRACT(EPOCH FROM clock_timestamp()) WHERE key = 'model:a'",
    )
    result = BatchRunner(pool, settings, None).run(
        [Record(f"m{i}", body(j)) for i, j in enumerate(ids)]
    )
    assert "admitting with the limits rows locked" in caplog.text
    # the locked way: one slot left, so one job runs and the other waits for a slot
    assert Counter(result.outcomes.values()) == {Outcome.SUCCEEDED: 1}
    assert len(result.failed) == 1  # no queue to send the held one back to: it comes back
    with engine.connect() as conn:
        waiting = conn.execute(
            text("SELECT wait_reason FROM prompt_jobs WHERE id = ANY(:ids) AND status = 'queued'"),
            {"ids": ids},
        ).scalar_one()
    assert waiting.startswith(limits.SLOT_REASON)
    assert in_flight(engine)["model:a"] == 4  # its own slot released; the 4 are not its own


def test_a_quick_batch_releases_what_it_took(
    engine: Engine, pool: Pool, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    sync(engine, CATALOGUE)
    fan_out(engine, settings)
    result = BatchRunner(pool, settings, None).run(
        [Record(f"m{i}", body(j)) for i, j in enumerate(job_ids(engine))]
    )
    assert Counter(result.outcomes.values()) == {Outcome.SUCCEEDED: 4}
    assert "admitting with the limits rows locked" not in caplog.text
    assert set(in_flight(engine).values()) == {0}
    assert statuses(engine) == {"succeeded": 4}
