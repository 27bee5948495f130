"""The batch's quick admission against real PostgreSQL: decided on a snapshot of the limits
rows, which nothing locks meanwhile, and taken by the claim only if the rows, locked by that
statement, still have the slots; otherwise nothing is taken and the batch is admitted with
its rows locked, on what they hold then."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

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
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: 2}
"""


def in_flight(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {k: n for k, n in conn.execute(text("SELECT key, in_flight FROM flow_limits"))}


def meanwhile(engine: Engine, sql: str) -> None:
    """Another session changes the rows; it must not wait for the batch's transaction."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL lock_timeout = '2s'"))
        conn.execute(text(sql))


def quick_claim(engine: Engine, settings: Settings, change: str | None) -> set[Any] | None:
    """Lock the batch, admit it quick, let `change` happen, claim; what the claim answered."""
    ids = job_ids(engine)
    with engine.begin() as conn:
        batch = batch_jobs.lock_batch(conn, ids)
        per_model = Counter(j.job.model_slug for j in batch.jobs.values() if j.job)
        requests = [
            limits.Request(s, "b", n, limits.Demand()) for s, n in sorted(per_model.items())
        ]
        quick = limits.decide_quick(requests, batch.flows)
        assert quick is not None
        if change is not None:
            meanwhile(engine, change)
        return batch_jobs.claim_batch(
            conn, list(batch.jobs.values()), settings.lease_seconds, quick, last=True
        )


def test_a_quick_claim_takes_its_slots_on_top_of_the_rows_as_they_are_by_then(
    engine: Engine, settings: Settings
) -> None:
    sync(engine, CATALOGUE)
    fan_out(engine, settings)
    claimed = quick_claim(
        engine, settings, "UPDATE flow_limits SET in_flight = 3 WHERE key = 'model:a'"
    )
    assert claimed == set(job_ids(engine))
    assert statuses(engine) == {"processing": 4}
    assert in_flight(engine) == {"model:a": 5, "model:b": 2, "group:org": 2, "catalog": 0}


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE flow_limits SET in_flight = 4 WHERE key = 'model:a'",  # 4 + 2 > 5
        "UPDATE flow_limits SET paused = true WHERE key = 'model:b'",
        "UPDATE flow_limits SET rpm = 60 WHERE key = 'group:org'",
        "UPDATE flow_limits SET group_key = NULL WHERE key = 'model:b'",
        "UPDATE flow_limits SET request_tat = 4e9 WHERE key = 'model:a'",
        "UPDATE flow_limits SET budget_day_usd = 1 WHERE key = 'catalog'",
    ],
    ids=["slots gone", "paused", "rate set", "group changed", "retry-after", "budget set"],
)
def test_a_quick_claim_whose_rows_changed_claims_and_takes_nothing(
    engine: Engine, settings: Settings, change: str
) -> None:
    sync(engine, CATALOGUE)
    fan_out(engine, settings)
    before = in_flight(engine)
    assert quick_claim(engine, settings, change) is None
    assert statuses(engine) == {"queued": 4}
    after = in_flight(engine)
    changed = {"model:a": 4} if "in_flight" in change else {}
    assert after == {**before, **changed}


def around_first_claim(
    monkeypatch: pytest.MonkeyPatch, before: Callable[[], None]
) -> list[type[object]]:
    """Runs `before` once, just ahead of the first claim; records each claim's admission kind."""
    claim = batch_jobs.claim_batch
    kinds: list[type[object]] = []

    def wrapped(conn: Any, jobs: Any, lease: int, taken: Any = None, **kw: Any) -> Any:
        if not kinds:
            before()
        kinds.append(type(taken))
        return claim(conn, jobs, lease, taken, **kw)

    monkeypatch.setattr(batch_jobs, "claim_batch", wrapped)
    return kinds


def test_a_batch_outrun_between_its_quick_admission_and_its_claim_is_admitted_locked(
    engine: Engine,
    pool: Pool,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sync(engine, CATALOGUE)
    fan_out(engine, settings)
    ids = job_ids(engine, "m.slug = 'a'")  # 2 jobs of a model with 5 slots
    kinds = around_first_claim(
        monkeypatch,
        lambda: meanwhile(
            engine,
            # 4 calls of other processors, counted just now (no recount for a while)
            "UPDATE flow_limits SET in_flight = 4, "
            "recounted_at = EXTRACT(EPOCH FROM clock_timestamp()) WHERE key = 'model:a'",
        ),
    )
    result = BatchRunner(pool, settings, None).run(
        [Record(f"m{i}", body(j)) for i, j in enumerate(ids)]
    )
    # the locked way, on the rows as they are then: one slot left, so one job runs
    assert kinds == [limits.Quick, limits.Taken]
    assert "admitting with the limits rows locked" in caplog.text
    assert Counter(result.outcomes.values()) == {Outcome.SUCCEEDED: 1}
    assert len(result.failed) == 1  # no queue to send the held one back to: it comes back
    with engine.connect() as conn:
        waiting = conn.execute(
            text("SELECT wait_reason FROM prompt_jobs WHERE id = ANY(:ids) AND status = 'queued'"),
            {"ids": ids},
        ).scalar_one()
    assert waiting.startswith(limits.SLOT_REASON)
    assert in_flight(engine)["model:a"] == 4  # its own slot released; the 4 are not its own
