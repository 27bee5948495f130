"""Procrastinate's worker on a no-op task, the baseline `make bench` prints beside promptrun.
Runs in the bench's own environment (.venv-bench); imports nothing from promptrun.

usage: procrastinate_worker.py CONNINFO JOBS [--schema] CONCURRENCY...
  -> one JSON line per concurrency; --schema: apply Procrastinate's schema first (a new database)"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=sys.argv[1]))


@app.task(name="noop")
async def noop(i: int) -> None:
    return None


async def main() -> None:
    jobs = int(sys.argv[2])
    rest = sys.argv[3:]
    async with app.open_async():
        if rest[:1] == ["--schema"]:
            await app.schema_manager.apply_schema_async()
            rest = rest[1:]
        for concurrency in map(int, rest):
            await noop.batch_defer_async(*({"i": i} for i in range(jobs)))
            started = time.perf_counter()
            await app.run_worker_async(
                concurrency=concurrency, wait=False, install_signal_handlers=False
            )
            seconds = time.perf_counter() - started
            print(json.dumps({"concurrency": concurrency, "jobs": jobs, "seconds": seconds}))


asyncio.run(main())
