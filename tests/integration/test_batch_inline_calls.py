"""Calls that cannot block (a zero-latency offline model) run on the batch's own thread; any
call that can wait (a simulated latency, a real provider) still runs side by side."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine

from promptrun.batch_runner import BatchRunner, Record
from promptrun.db.pool import Pool
from promptrun.processor import Outcome
from promptrun.settings import Settings
from tests.conftest import sync
from tests.integration.test_batch_runner import body, job_ids
from tests.integration.test_processor import fan_out, statuses


class CountingExecutor(ThreadPoolExecutor):
    """A real pool that counts what is handed to it."""

    def __init__(self) -> None:
        super().__init__(4)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def run_all(
    engine: Engine, database: Pool, settings: Settings, catalog: str
) -> tuple[int, set[str]]:
    """Every job of the catalogue in one batch; (calls handed to the pool, caller threads)."""
    sync(engine, catalog)
    fan_out(engine, settings)
    pool = CountingExecutor()
    runner = BatchRunner(database, settings, None, threads=pool)
    seen: set[str] = set()
    call = runner.caller.call

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.add(threading.current_thread().name)
        return call(*args, **kwargs)

    runner.caller.call = recording  # type: ignore[method-assign]
    result = runner.run([Record(f"m{i}", body(j)) for i, j in enumerate(job_ids(engine))])
    pool.shutdown()
    assert result.failed == []
    assert set(result.outcomes.values()) == {Outcome.SUCCEEDED}
    assert statuses(engine) == {"succeeded": 4}
    return pool.submitted, seen


def test_zero_latency_calls_stay_on_the_batch_thread(
    engine: Engine, pool: Pool, settings: Settings
) -> None:
    submitted, seen = run_all(
        engine,
        pool,
        settings,
        """
models:
  - {slug: a, provider: offline, model: a-1}
prompts:
  - {slug: p1, text: "one", schedule: daily, runs: 4}
""",
    )
    assert submitted == 0
    assert seen == {threading.current_thread().name}


def test_calls_that_wait_run_side_by_side(engine: Engine, pool: Pool, settings: Settings) -> None:
    submitted, seen = run_all(
        engine,
        pool,
        settings,
        """
models:
  - {slug: a, provider: offline, model: a-1}
  - {slug: b, provider: offline, model: b-1, params: {latency_ms: 5}}
prompts:
  - {slug: p1, text: "one", schedule: daily, runs: 2}
""",
    )
    # One batch with a model that waits: every call goes to the pool, while the batch's
    # thread stores the answers as they come (test_batch_waves).
    assert submitted == 4
    assert threading.current_thread().name not in seen
