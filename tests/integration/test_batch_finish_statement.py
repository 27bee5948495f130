"""A batch's answers stored, its jobs completed and its calls released by one statement that
is its own transaction (batch_jobs.complete_batch with limits.RELEASE_DONE_SQL); what it
cannot do (a 429, a quota hint, a budget) still goes through limits.release_many."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text

from promptrun import batch_jobs, limits
from promptrun.batch_runner import BatchRunner, Record
from promptrun.db.engine import engine_for_url
from promptrun.db.pool import Pool
from promptrun.processor import Outcome
from promptrun.settings import Settings
from tests.conftest import sync
from tests.integration.test_batch_runner import body, job_ids
from tests.integration.test_processor import fan_out, statuses


def flow(engine: Engine, key: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT in_flight, rate_factor, token_tat FROM flow_limits WHERE key = :k"),
            {"k": key},
        ).mappings()
        return dict(row.one())


def test_the_finishing_statement_releases_every_owned_call(
    engine: Engine, pool: Pool, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync(
        engine,
        """
models:
  - {slug: m, provider: offline, model: m-1, max_concurrency: 100, rpm: 6000, tpm: 100000000}
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: 6}
""",
    )
    fan_out(engine, settings)
    with engine.begin() as conn:  # room for the additive increase to show
        conn.execute(text("UPDATE flow_limits SET rate_factor = 0.5 WHERE key = 'model:m'"))
    runner = BatchRunner(pool, settings, None)
    seen: dict[str, Any] = {}
    params_of = limits.release_done_params

    def recorded(ended: Any) -> Any:  # the row as the claim left it, and what is released
        seen["claimed"] = flow(engine, "model:m")
        seen["params"] = params_of(ended)
        return seen["params"]

    monkeypatch.setattr(limits, "release_done_params", recorded)
    result = runner.run([Record(str(i), body(j)) for i, j in enumerate(job_ids(engine))])
    assert result.failed == [] and set(result.outcomes.values()) == {Outcome.SUCCEEDED}
    assert statuses(engine) == {"succeeded": 6}
    after = flow(engine, "model:m")
    assert after["in_flight"] == 0
    # six successes, each a step of 1 / max(10, 6000 / 8)
    assert after["rate_factor"] == pytest.approx(0.5 + 6 / 750)
    claimed = seen["claimed"]
    assert claimed["in_flight"] == 6 and claimed["rate_factor"] == 0.5
    # the tokens used beside the estimates taken back from the token clock
    deltas = [r["token_delta"] for r in json.loads(seen["params"]["releases"])]
    assert len(deltas) == 6 and all(d < 0 for d in deltas)
    assert after["token_tat"] == pytest.approx(
        claimed["token_tat"] + sum(deltas) * 60 / (1e8 * 0.95 * 0.5)
    )


def test_the_limits_row_is_released_after_the_answers_are_stored(
    engine: Engine, pool: Pool, settings: Settings
) -> None:
    """Every batch of a model updates its limits row: the finishing statement updates it last,
    so that it holds the row's lock for its commit alone, not while it inserts."""
    sync(
        engine,
        """
models:
  - {slug: m, provider: offline, model: m-1, max_concurrency: 100}
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: 4}
""",
    )
    fan_out(engine, settings)
    with engine.begin() as conn:
        # Each answer and mention row, as it is inserted, notes whether this transaction has
        # already updated the model's limits row (the row version it sees is its own).
        conn.execute(text("CREATE TABLE insert_saw (tbl text, row_updated boolean)"))
        conn.execute(
            text(
                """CREATE FUNCTION note_insert() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    INSERT INTO insert_saw
                    SELECT TG_TABLE_NAME, f.xmin::text = (txid_current() % 4294967296)::text
                    FROM flow_limits f WHERE f.key = 'model:m';
                    RETURN NEW;
                END $$"""
            )
        )
        for table in ("responses", "entity_mentions"):
            conn.execute(
                text(
                    f"CREATE TRIGGER note_insert BEFORE INSERT ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION note_insert()"
                )
            )
    runner = BatchRunner(pool, settings, None)
    result = runner.run([Record(str(i), body(j)) for i, j in enumerate(job_ids(engine))])
    assert result.failed == [] and statuses(engine) == {"succeeded": 4}
    assert flow(engine, "model:m")["in_flight"] == 0  # released, in the same statement
    with engine.connect() as conn:
        saw = conn.execute(
            text("SELECT tbl, bool_or(row_updated) FROM insert_saw GROUP BY tbl ORDER BY tbl")
        ).all()
    assert saw == [("entity_mentions", False), ("responses", False)]


def test_release_done_params_leaves_the_rare_cases_to_release_many() -> None:
    demand = limits.Demand(1, 100, Decimal("0.01"))
    lease = limits.Lease(("group:g", "model:m"), (), demand)
    plain = limits.Ended(lease, 40, Decimal("0.01"), succeeded=True)
    params = limits.release_done_params([("j1", plain), ("j2", plain)])
    assert params is not None
    rows = json.loads(params["releases"])
    assert rows == [
        {"job_id": "j1", "key": "group:g", "token_delta": -60.0},
        {"job_id": "j1", "key": "model:m", "token_delta": -60.0},
        {"job_id": "j2", "key": "group:g", "token_delta": -60.0},
        {"job_id": "j2", "key": "model:m", "token_delta": -60.0},
    ]
    throttled = limits.Ended(lease, 40, Decimal("0.01"), succeeded=False, throttled_for=1.0)
    quota = limits.Ended(lease, 40, Decimal("0.01"), succeeded=True, quota_wait=30.0)
    budgeted = limits.Lease(("model:m",), (("batch", "2026-11-22"),), demand)
    spent_more = limits.Ended(budgeted, 40, Decimal("0.02"), succeeded=True)
    for rare in (throttled, quota, spent_more):
        assert limits.release_done_params([("j1", plain), ("j2", rare)]) is None
    # a budget whose estimate was exact has nothing to reconcile
    exact = limits.Ended(budgeted, 40, Decimal("0.01"), succeeded=True)
    assert limits.release_done_params([("j1", exact)]) is not None


def test_an_autocommit_connection_goes_back_to_the_pool_transactional(db_url: str) -> None:
    one = engine_for_url(db_url, pool_size=1, max_overflow=0)  # the same connection each time
    try:
        with one.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS autocommit_probe (n int)"))
        with batch_jobs.autocommit(one) as conn:
            conn.execute(text("INSERT INTO autocommit_probe VALUES (1)"))
        # committed by the statement itself, though nothing committed the connection
        with one.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM autocommit_probe")).scalar() == 1
        with pytest.raises(RuntimeError), one.begin() as conn:
            conn.execute(text("INSERT INTO autocommit_probe VALUES (2)"))
            raise RuntimeError("rolled back")
        with one.connect() as conn:  # the second insert was rolled back: a transaction again
            assert conn.execute(text("SELECT count(*) FROM autocommit_probe")).scalar() == 1
    finally:
        with one.begin() as conn:
            conn.execute(text("DROP TABLE autocommit_probe"))
        one.dispose()
