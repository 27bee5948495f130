"""Answers of calls that can wait are stored in waves as they come: a quick call's answer,
and its model's slot, are not held until the batch's slowest call ends."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine, text

from promptrun import batch_jobs, batch_runner
from promptrun.batch_runner import BatchRunner, Record
from promptrun.db.pool import Pool
from promptrun.processor import Outcome
from promptrun.providers.base import Completion, ModelCall
from promptrun.providers.offline import OfflineProvider
from promptrun.settings import Settings
from tests.conftest import sync
from tests.integration.test_batch_runner import body, job_ids
from tests.integration.test_processor import fan_out, statuses

CATALOG = """
models:
  - {slug: quick, provider: offline, model: quick-1, params: {latency_ms: 1}, max_concurrency: 50}
  - {slug: slow, provider: offline, model: slow-1, params: {latency_ms: 1}, max_concurrency: 50}
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: %d}
"""

# The quick model's jobs recorded (succeeded, or back to queued with the error of their
# failed call) and its calls in flight.
_QUICK = text(
    """
    SELECT count(*) FILTER (WHERE j.status = 'succeeded' OR j.error_kind IS NOT NULL)
               AS recorded,
           max(f.in_flight) AS in_flight
    FROM prompt_jobs j JOIN models m ON m.id = j.model_id
    JOIN flow_limits f ON f.key = 'model:' || m.slug
    WHERE m.slug = 'quick'
    """
)


class SlowWatchesQuick(OfflineProvider):
    """`quick-1` answers (or fails) at once; `slow-1` answers once every quick job is
    recorded, and notes what it saw then (None: they were not within 10 s, then it answers)."""

    def __init__(self, engine: Engine, quick_jobs: int) -> None:
        self.engine = engine
        self.quick_jobs = quick_jobs
        self.saw: dict[str, Any] | None = None

    def answer(self, call: ModelCall, prompt: str, system: str | None) -> Completion:
        if call.provider_model == "slow-1" and call.attempt == 1:
            deadline = time.monotonic() + 10
            while self.saw is None and time.monotonic() < deadline:
                with self.engine.connect() as conn:
                    row = conn.execute(_QUICK).mappings().one()
                if row["recorded"] == self.quick_jobs:
                    self.saw = dict(row)
                time.sleep(0.02)
        return super().answer(call, prompt, system)


def run_batch(engine: Engine, pool: Pool, settings: Settings, provider: Any) -> Counter[Outcome]:
    runner = BatchRunner(pool, settings, None, providers=lambda n, s: provider)
    with ThreadPoolExecutor(20) as threads:
        runner.threads = threads
        records = [Record(str(i), body(j)) for i, j in enumerate(job_ids(engine))]
        return Counter(runner.run(records).outcomes.values())


@pytest.mark.parametrize("runs", [1, 12])
def test_quick_answers_are_stored_and_their_slots_freed_while_a_slow_call_runs(
    engine: Engine, pool: Pool, settings: Settings, runs: int
) -> None:
    """With 1 quick job the wave goes when its answer has waited WAVE_SECONDS; with 12 (one
    slow call each), when WAVE_JOBS have answered. Stored all at the end, as a batch used to
    be, the slow calls would see nothing stored."""
    sync(engine, CATALOG % runs)
    fan_out(engine, settings)
    provider = SlowWatchesQuick(engine, runs)
    assert run_batch(engine, pool, settings, provider) == {Outcome.SUCCEEDED: 2 * runs}
    assert provider.saw == {"recorded": runs, "in_flight": 0}
    assert statuses(engine) == {"succeeded": 2 * runs}


def test_a_failed_call_is_recorded_and_its_slot_freed_while_a_slow_call_runs(
    engine: Engine, pool: Pool, settings: Settings
) -> None:
    """The quick model's call fails (a server error, retryable): its retry is scheduled and
    its slot released at once, not when the batch's slowest call ends."""
    sync(
        engine,
        (CATALOG % 1).replace(
            "model: quick-1, params: {latency_ms: 1}",
            "model: quick-1, params: {latency_ms: 1, simulate_error: server}",
        ),
    )
    fan_out(engine, settings)
    provider = SlowWatchesQuick(engine, 1)
    outcomes = run_batch(engine, pool, settings, provider)
    assert provider.saw == {"recorded": 1, "in_flight": 0}
    assert outcomes[Outcome.SUCCEEDED] == 1  # the slow job
    with engine.connect() as conn:
        quick = conn.execute(
            text(
                "SELECT j.error_kind, j.attempt_count FROM prompt_jobs j "
                "JOIN models m ON m.id = j.model_id WHERE m.slug = 'quick'"
            )
        ).one()
    assert quick.error_kind == "server" and quick.attempt_count >= 1


def test_answers_that_come_together_are_stored_together(
    engine: Engine, pool: Pool, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waves are not one statement per answer: 16 calls of the same latency take at most
    two stores (a first wave once WAVE_JOBS have answered, the rest at the end)."""
    sync(engine, CATALOG % 8)
    fan_out(engine, settings)
    stores: list[int] = []
    complete = batch_jobs.complete_batch

    def counted(conn: Any, finished: Any, *args: Any) -> Any:
        stores.append(len(finished))
        return complete(conn, finished, *args)

    monkeypatch.setattr(batch_jobs, "complete_batch", counted)
    assert run_batch(engine, pool, settings, OfflineProvider()) == {Outcome.SUCCEEDED: 16}
    assert sum(stores) == 16 and 1 <= len(stores) <= 2, stores
    assert len(stores) == 1 or stores[0] >= batch_runner.WAVE_JOBS
