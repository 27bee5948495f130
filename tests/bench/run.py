"""`make bench`: every figure of the scale targets, each printed beside its goal, on the real
local PostgreSQL (and moto / a local SQS stand-in). Prints; asserts nothing about speed.

Sections: cold start (import + init per handler), the processor path (jobs/s and round trips
per job at 1, 4 and 16 threads) with Procrastinate's worker on the same server as the
baseline, the fan-out at 100,000 jobs, and status reads at 1M jobs / ~4M mentions."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

from promptrun import batch_completion, queries
from promptrun.aws import JobQueue
from promptrun.batch_runner import BatchRunner, Record
from promptrun.catalog import load_catalog, sync_catalog
from promptrun.db import pg8000_fast
from promptrun.db.engine import RDS_CA_BUNDLE, dispose_engines, engine_for_url, get_engine
from promptrun.db.pool import dispose_pools, get_pool
from promptrun.fanout import FanoutRequest, create_jobs, send_until
from promptrun.operator import prompt_states
from promptrun.settings import Settings
from tests.bench import cpu, dataset, operator_bench
from tests.bench.layer_cold import layer_cold_start
from tests.bench.sqs_standin import SqsStandIn
from tests.support import stack

REPO = Path(__file__).resolve().parents[2]
BENCH_PYTHON = REPO / ".venv-bench" / "bin" / "python"
THREADS = (1, 4, 16)
CORES = os.cpu_count() or 1
AT = datetime(2026, 11, 22, 13, tzinfo=UTC)


def line(what: str, figure: str, goal: str = "") -> None:
    print(f"  {what:<52} {figure:>22}   {('goal: ' + goal) if goal else ''}")


def timed(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Median milliseconds of `repeat` calls (after one warm-up)."""
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def machine_speed() -> str:
    """Two fixed workloads (median of 3, after one warm-up): a pure-Python loop, the
    processor's kind of work, and an empty interpreter's start, the cold start's floor. This
    machine's speed moves by up to 2x between sessions and within one, and every other
    figure moves with it."""
    loop = timed(lambda: sum(i * i for i in range(2_000_000)), repeat=3)
    start = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), repeat=3)
    return f"2M-step Python loop {loop:.0f} ms, empty interpreter start {start:.0f} ms"


# --- cold start ---------------------------------------------------------------------------------

_INIT = {
    "processor": "app.BatchRunner(app.get_pool(app.settings), app.settings, None)",
    "fanout": "app.get_engine(app.settings, pool_size=1)",
    "status": "app.app",
}


# Runs per figure: a single import varies by +-25% on this shared machine.
COLD_RUNS = 9


def cold_start() -> None:
    print("cold start (fresh process, -X importtime; tracing off as in a function without it)")
    # The RDS CA directory the layer build makes (shared/ca_index.py), as the functions load it.
    kept = tempfile.TemporaryDirectory()  # removed when the bench exits
    ca_dir = Path(kept.name) / "rds-ca"
    subprocess.run(
        [sys.executable, str(REPO / "shared" / "ca_index.py"), str(RDS_CA_BUNDLE), str(ca_dir)],
        check=True,
    )
    # Bytecode cached (the first run writes it), as the layer ships it: without, every run
    # would compile promptrun's modules again.
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AWS_XRAY") and k != "PYTHONDONTWRITEBYTECODE"
        },
        "DATABASE_URL": f"postgresql+pg8000://u:p@127.0.0.1:1/x?sslrootcert={ca_dir}",
        "JOBS_QUEUE_URL": "http://127.0.0.1:1/000000000000/q",
        "API_TOKEN": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, init in _INIT.items():
        totals, cpus, heavy = _cold_runs(f"import app; {init}", REPO / "functions" / name, env)
        goal = "< 300 ms" if name == "processor" else ""
        line(
            f"{name}: import + init, wall (CPU), median of {COLD_RUNS}",
            f"{statistics.median(totals)} ms ({statistics.median(cpus)} ms)",
            goal,
        )
        line("    fastest - slowest run, wall", f"{min(totals)} - {max(totals)} ms")
        print(f"      heaviest top-level imports: {heavy}")
        if name == "processor":
            # What the processor cannot start without, measured the same way: the floor
            # that promptrun's own modules add to.
            totals, cpus, _ = _cold_runs(_PROCESSOR_STACK, REPO, env)
            line(
                "    its stack alone (pg8000, pydantic, Powertools), wall (CPU)",
                f"{statistics.median(totals)} ms ({statistics.median(cpus)} ms)",
            )


# The libraries the processor needs before its first job, each as it uses them: the driver,
# pydantic with a model built (the first build imports pydantic's schema machinery; the
# processor validates every SQS body and every answer), Powertools' Logger and Metrics, a
# thread pool for the calls.
_PROCESSOR_STACK = (
    "import concurrent.futures, pg8000, pydantic; "
    "from aws_lambda_powertools import Logger, Metrics; "
    "pydantic.create_model('Body', job_id=(str, ...))"
)


def _cold_runs(init: str, cwd: Path, env: dict[str, str]) -> tuple[list[int], list[int], str]:
    """`init` in a fresh process, COLD_RUNS times after one that writes the bytecode: wall
    and CPU ms of each run (on a shared machine the wall clock mostly measures the
    neighbours), and the last run's heaviest top-level imports."""
    code = (
        "import time; t, c = time.perf_counter(), time.process_time(); "
        f"{init}; print(round((time.perf_counter() - t) * 1000), "
        "round((time.process_time() - c) * 1000))"
    )
    totals, cpus, heavy = [], [], ""
    for run in range(COLD_RUNS + 1):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        if run == 0:
            continue  # bytecode written
        wall, cpu_ms = done.stdout.strip().splitlines()[-1].split()
        totals.append(int(wall))
        cpus.append(int(cpu_ms))
        heavy = _heaviest(done.stderr)
    return totals, cpus, heavy


def _heaviest(importtime: str) -> str:
    rows = []
    for row in importtime.splitlines():
        parts = row.split("|")
        if len(parts) == 3 and parts[2].startswith("   ") and not parts[2].startswith("    "):
            try:
                rows.append((int(parts[1]), parts[2].strip()))
            except ValueError:
                continue
    rows.sort(reverse=True)
    return ", ".join(f"{n} {us // 1000} ms" for us, n in rows[:5])


# --- processor ------------------------------------------------------------------------------------

PROMPTS, MODELS, RUNS = 200, 4, 5  # 4,000 jobs per run: at 16 threads, 5 batches of 50 each
COMPARED_BATCH = 10  # the SQS batch Lambda takes without a batching window


def deployed_batch_size() -> int:
    """The SQS batch size template.yaml deploys (ProcessorBatchSize's default)."""
    import yaml

    from tests.unit.test_template import CfnLoader

    template = yaml.load((REPO / "template.yaml").read_text(), Loader=CfnLoader)
    return int(template["Parameters"]["ProcessorBatchSize"]["Default"])


def catalog() -> str:
    models = "\n".join(
        f"  - {{slug: m{i}, provider: offline, model: m{i}, max_concurrency: 1000}}"
        for i in range(MODELS)
    )
    prompts = "\n".join(
        f'  - {{slug: p{i}, text: "Question {i}?", schedule: daily, runs: {RUNS}}}'
        for i in range(PROMPTS)
    )
    return f"models:\n{models}\nprompts:\n{prompts}\n"


def _requeue(engine: Engine) -> list[str]:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM entity_mentions"))
        conn.execute(text("DELETE FROM responses"))
        conn.execute(
            text(
                "UPDATE prompt_jobs SET status = 'queued', attempt_count = 0, started_at = NULL, "
                "finished_at = NULL, lease_expires_at = NULL, next_attempt_at = NULL, "
                "duration_ms = NULL, input_tokens = NULL, output_tokens = NULL, cost_usd = NULL"
            )
        )
        conn.execute(text("UPDATE flow_limits SET in_flight = 0"))
        # The reset's own summary deltas folded now, not inside the timed run.
        conn.execute(text("SELECT promptrun_compact_summaries()"))
        return [
            json.dumps({"job_id": str(r[0])})
            for r in conn.execute(text("SELECT id FROM prompt_jobs ORDER BY random()"))
        ]


def _run_batch(runner: BatchRunner, bodies: list[str]) -> int:
    """One SQS batch as the handler gets it, and the handler's check after it for batches
    with nothing left to run (batch_completion.after_invocation: one statement on the same
    pool; completing a finished batch, once per batch, needs EventBridge and is not timed);
    the records that failed."""
    try:
        records = [Record(f"m{i}", b, None) for i, b in enumerate(bodies)]
        failed = len(runner.run(records).failed)
    except Exception:
        return len(bodies)
    try:  # as the handler's, a failed check fails no record
        batch_completion.finished_batches_of(
            runner.engine, {"Records": [{"body": b} for b in bodies]}
        )
    except Exception as exc:
        print(f"      completion check failed: {type(exc).__name__}: {exc}")
    return failed


def _run_batches(runner: BatchRunner, batches: list[list[str]]) -> int:
    """One instance's share of the batches, in turn; the records that failed."""
    return sum(_run_batch(runner, bodies) for bodies in batches)


class LockWaits:
    """Samples, every 10 ms, how many of the bench's database sessions are running a
    statement and how many of those wait for a row another transaction holds (the models'
    limits rows, which every batch's claim and finish update)."""

    def __init__(self, url: str) -> None:
        self.engine = engine_for_url(url, pool_size=1)
        self.samples = self.active = self.waiting = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> LockWaits:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()

    def _sample(self) -> None:
        query = text(
            "SELECT count(*) FILTER (WHERE state = 'active'), "
            "count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock') "
            "FROM pg_stat_activity WHERE application_name LIKE 'bench-%'"
        )
        with self.engine.connect() as conn:
            while not self._stop.wait(0.01):
                active, waiting = conn.execute(query).one()
                conn.commit()
                self.samples += 1
                self.active += active
                self.waiting += waiting

    def figure(self) -> str:
        n = max(self.samples, 1)
        return f"{self.waiting / n:.2f} of {self.active / n:.2f}"


def processor(pg: Any, template: str) -> None:
    size = deployed_batch_size()
    print(
        f"processor path: BatchRunner.run on SQS batches of {size} (template.yaml's "
        "ProcessorBatchSize) and the handler's completion check after each, offline model with "
        "zero latency, 2 connections per instance (instances are threads of one process); each "
        "repetition followed by one of Procrastinate's worker (no-op task, psycopg connector, "
        f"same server) at the same concurrency, then one of promptrun on batches of "
        f"{COMPARED_BATCH}"
    )
    db = stack.create_test_database(pg, template)
    with Procrastinate(pg) as baseline:
        try:
            url = stack.url_for(pg, db)
            settings = Settings(database_url=url, max_attempts=3, lease_seconds=60)
            engine = get_engine(settings)
            sync_catalog(engine, load_catalog(catalog()))
            create_jobs(engine, FanoutRequest(at=AT), settings)
            sep = "&" if "?" in url else "?"
            for threads in THREADS:
                # Each simulated instance is a thread with its own runner, call threads and
                # pool of 2 connections (get_pool, keyed by the URL: an application_name
                # each), as each Lambda instance has. They share one process, and so its GIL.
                calls = ThreadPoolExecutor(size * threads)
                runners = [
                    BatchRunner(get_pool(instance), instance, None, threads=calls)
                    for instance in (
                        dataclasses.replace(
                            settings, database_url=f"{url}{sep}application_name=bench-{i}"
                        )
                        for i in range(threads)
                    )
                ]
                samples = []
                theirs: list[float] = []
                compared: list[float] = []
                for _ in range(3):
                    samples.append(_run_all(engine, url, runners, size, pg.data_dir))
                    if (their := baseline.rate(threads)) is not None:
                        theirs.append(their)
                    compared.append(
                        _run_all(engine, url, runners, COMPARED_BATCH, pg.data_dir).rate
                    )
                calls.shutdown()
                rate = statistics.median(s.rate for s in samples)
                line(f"{threads:>2} thread(s): jobs/s (median of 3)", f"{rate:,.0f}", ">= 2,000")
                _baseline_lines([s.rate for s in samples], theirs, baseline.error)
                line(
                    f"    on SQS batches of {COMPARED_BATCH} instead, median of 3",
                    f"{statistics.median(compared):,.0f}",
                )
                line(
                    "    round trips per job", f"{samples[-1].trips:.2f}", "a handful per SQS batch"
                )
                line(
                    "    sessions waiting on a row lock, of those active",
                    samples[-1].waits.figure(),
                )
                _cpu_lines(samples, threads)
                if threads == 1:
                    overhead = statistics.median(s.ms for s in samples)
                    line(
                        "    overhead per job beside the model call", f"{overhead:.2f} ms", "< 2 ms"
                    )
            with engine.connect() as conn:
                done = conn.execute(
                    text("SELECT count(*) FROM prompt_jobs WHERE status = 'succeeded'")
                ).scalar_one()
            line("    jobs succeeded in the last run", f"{done}")
            dispose_pools()
            dispose_engines()
        finally:
            stack.drop_database(pg, db)


@dataclass(frozen=True)
class Run:
    """One run of every job: jobs/s, round trips and wall ms per job, the lock waits sampled
    meanwhile, and the CPU ms per job of the bench process (promptrun's side, the offline
    model's work included) and of the server (both with the lock-wait sampler's query every
    10 ms)."""

    rate: float
    trips: float
    ms: float
    waits: LockWaits
    client_cpu: float
    server_cpu: float


def _run_all(
    engine: Engine, url: str, runners: list[BatchRunner], batch_size: int, data_dir: Path
) -> Run:
    """One run of every job on SQS batches of `batch_size`, the runners side by side."""
    trips = itertools.count()
    flush = pg8000_fast._flush

    def counted(sock: Any) -> None:
        next(trips)
        flush(sock)

    bodies = _requeue(engine)
    batches = [bodies[i : i + batch_size] for i in range(0, len(bodies), batch_size)]
    # Instance i takes every n-th batch, one after the other.
    shares = [batches[i :: len(runners)] for i in range(len(runners))]
    pg8000_fast._flush = counted
    try:
        meter = cpu.Meter.start(data_dir)
        started = time.perf_counter()
        with LockWaits(url) as waits, ThreadPoolExecutor(len(runners)) as pool:
            failed = sum(pool.map(_run_batches, runners, shares))
        seconds = time.perf_counter() - started
        client, server = meter.per_job(len(bodies))
    finally:
        pg8000_fast._flush = flush
    if failed:  # e.g. a pool checkout that waited past its timeout
        print(f"      {failed} records failed")
    n = len(bodies)
    return Run(n / seconds, next(trips) / n, seconds * 1000 / n, waits, client, server)


def _cpu_lines(samples: list[Run], threads: int) -> None:
    """The CPU a job costs, and the most that allows: one instance waits for the server
    while it works, so its jobs/s is at most 1 / server CPU per job even with a client that
    costs nothing; side by side, the instances and the server share the machine's cores."""
    client = statistics.median(s.client_cpu for s in samples)
    server = statistics.median(s.server_cpu for s in samples)
    line(
        "    CPU per job, median: client (bench process) + server",
        f"{client:.2f} + {server:.2f} ms",
    )
    if threads == 1:
        ceiling, why = 1000 / server, "with a client that cost nothing"
    else:
        ceiling, why = CORES * 1000 / (client + server), f"on {CORES} cores, all busy"
    line(f"    the most that CPU allows, {why}", f"{ceiling:,.0f} jobs/s")


def _baseline_lines(ours: list[float], theirs: list[float], error: str | None) -> None:
    """Procrastinate's median beside promptrun's, and the ratio of each of promptrun's
    repetitions to the baseline run that followed it (as many as ran)."""
    if not theirs:
        line("    Procrastinate", error or "-")
        return
    their_rate = statistics.median(theirs)
    line(
        "    Procrastinate at the same concurrency, median of 3 (ratio)",
        f"{their_rate:,.0f} ({statistics.median(ours) / their_rate:.2f}x)",
        ">= 5x",
    )
    ratios = sorted(o / t for o, t in zip(ours, theirs, strict=False))  # a failed run: fewer
    line(
        "    ratio of each repetition to the baseline's that followed it",
        " / ".join(f"{r:.2f}x" for r in ratios),
    )
    if error is not None:
        line("    Procrastinate", error)


class Procrastinate:
    """Procrastinate's worker on a no-op task (its psycopg connector, its own database on the
    same server), one run of JOBS jobs at a time: the processor section runs it right after
    each of its own repetitions, so both are measured in the same minutes (this machine's
    speed moves by half within minutes)."""

    JOBS = 2000

    def __init__(self, pg: Any) -> None:
        self.available = BENCH_PYTHON.exists()
        self.error: str | None = None if self.available else "(.venv-bench missing)"
        self.name = f"bench_procrastinate_{uuid.uuid4().hex[:6]}"
        self.admin = create_engine(pg.url("postgres"), isolation_level="AUTOCOMMIT")
        self.url = pg.url(self.name).replace("postgresql+pg8000://", "postgresql://")
        self._schema = True  # applied by the first run

    def __enter__(self) -> Procrastinate:
        if self.available:
            with self.admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        return self

    def __exit__(self, *_: object) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()

    def rate(self, concurrency: int) -> float | None:
        """Jobs/s of one run at this concurrency; None when it cannot run (self.error says)."""
        if self.error is not None:
            return None
        schema = ["--schema"] if self._schema else []
        done = subprocess.run(
            [str(BENCH_PYTHON), str(Path(__file__).with_name("procrastinate_worker.py")),
             self.url, str(self.JOBS), *schema, str(concurrency)],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if done.returncode:
            self.error = f"(failed: {done.stderr.strip().splitlines()[-1:]})"
            return None
        self._schema = False
        row = json.loads(done.stdout.strip().splitlines()[-1])
        return float(row["jobs"] / row["seconds"])


# --- fan-out --------------------------------------------------------------------------------------


def fanout(pg: Any, template: str) -> None:
    print("fan-out at 100,000 jobs (1,000 prompts x 10 models x 10 runs)")
    db = stack.create_test_database(pg, template)
    standin = SqsStandIn()
    try:
        url = stack.url_for(pg, db)
        settings = Settings(database_url=url, jobs_queue_url=standin.queue_url)
        engine = get_engine(settings, pool_size=1)
        models = "\n".join(f"  - {{slug: m{i}, provider: offline, model: m{i}}}" for i in range(10))
        prompts = "\n".join(
            f'  - {{slug: p{i}, text: "Q{i}?", schedule: daily, runs: 10}}' for i in range(1000)
        )
        sync_catalog(engine, load_catalog(f"models:\n{models}\nprompts:\n{prompts}\n"))
        started = time.perf_counter()
        created = create_jobs(engine, FanoutRequest(at=AT), settings).created
        seconds = time.perf_counter() - started
        line(f"insert: {created:,} rows", f"{seconds:.2f} s ({created / seconds:,.0f}/s)", "")
        started = time.perf_counter()
        again = create_jobs(engine, FanoutRequest(at=AT.replace(hour=20)), settings)
        seconds = time.perf_counter() - started
        line(f"re-run, same period: {again.created} created", f"{seconds:.2f} s", "well under 1 s")
        import boto3

        sqs = boto3.client("sqs", endpoint_url=standin.endpoint, region_name="us-east-1",
                           aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
        started = time.perf_counter()
        progress = send_until(engine, JobQueue(standin.queue_url, sqs=sqs), settings)
        seconds = time.perf_counter() - started
        line(
            f"send: {progress.sent:,} messages (local SQS stand-in)",
            f"{seconds:.1f} s ({progress.sent / seconds:,.0f}/s)",
            "all within one run (300 s)",
        )
        line("    messages the stand-in received", f"{standin.received:,}", "")
        dispose_engines()
    finally:
        standin.stop()
        stack.drop_database(pg, db)


# --- status reads -----------------------------------------------------------------------------------


def status_reads(pg: Any) -> None:
    name, built = dataset.ensure(pg)
    how = f"built in {built:.0f} s" if built is not None else "cached"
    print(f"status reads at 1M jobs / ~4M mentions (database {name}, {how}); median of 5")
    engine = get_engine(Settings(database_url=stack.url_for(pg, name)))
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT count(*) FROM prompt_jobs")).scalar_one()
        mentions = conn.execute(text("SELECT count(*) FROM entity_mentions")).scalar_one()
    line("rows", f"{jobs:,} jobs, {mentions:,} mentions", "1M / ~4M")
    batch = "2026-09-15"
    reads: list[tuple[str, Callable[[], Any], str]] = [
        ("GET /batches", lambda: queries.list_batches(engine), "50 ms"),
        ("GET /jobs (page + summary counts)", lambda: queries.list_jobs(engine), "50 ms"),
        (
            "GET /jobs?batch_key= (page + counts)",
            lambda: queries.list_jobs(engine, batch_key=batch),
            "50 ms",
        ),
        (
            "GET /jobs?prompt=&model= (page + counts)",
            lambda: queries.list_jobs(engine, prompt="prompt-7", model="model-3"),
            "50 ms",
        ),
        (f"GET /batches/{batch}", lambda: queries.batch_summary(engine, batch), "50 ms"),
        ("GET /entities", lambda: queries.entity_counts(engine), "50 ms"),
        (
            "GET /entities?batch_key=",
            lambda: queries.entity_counts(engine, batch_key=batch),
            "50 ms",
        ),
        (
            "GET /entities?model=",
            lambda: queries.entity_counts(engine, model="model-3"),
            "50 ms",
        ),
        (
            "GET /entities?prompt=",
            lambda: queries.entity_counts(engine, prompt="prompt-7"),
            "50 ms",
        ),
        ("GET /prompts (operators: versions, re-run)", lambda: prompt_states(engine), "50 ms"),
    ]
    for what, read, goal in reads:
        line(what, f"{timed(read):.1f} ms", goal)

    def page() -> None:
        with engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT j.id FROM prompt_jobs j JOIN prompts p ON p.id = j.prompt_id "
                    "JOIN models m ON m.id = j.model_id ORDER BY j.created_at DESC, j.id DESC "
                    "LIMIT 51"
                )
            ).all()

    line("a page of jobs alone (the /jobs page query)", f"{timed(page):.1f} ms", "10 ms")
    dispose_engines()


def operators(pg: Any, template: str) -> None:
    """Retry, cancel, prompt states and prune on a seeded database (tests/bench/operator_bench)."""
    db = stack.create_test_database(pg, template)
    engine = engine_for_url(stack.url_for(pg, db), pool_size=2)
    try:
        operator_bench.run(engine)
    finally:
        engine.dispose()
        stack.drop_database(pg, db)


SECTIONS = ("cold-start", "processor", "fanout", "operators", "status")


def _sections() -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        action="append",
        help="run this section (repeatable); default: all (processor includes Procrastinate)",
    )
    return parser.parse_args().only or list(SECTIONS)


def main() -> None:
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        POWERTOOLS_LOG_LEVEL="ERROR",
        POWERTOOLS_METRICS_NAMESPACE="Bench",
    )
    from promptrun.observability import logger, metrics

    logger.setLevel("ERROR")  # a log line per job would be the bench's main cost
    metrics.add_metric = lambda **_: None  # type: ignore[method-assign]
    sections = _sections()
    print(f"machine: {CORES} cores, load {os.getloadavg()[0]:.1f} (1 min) at the start")
    print(f"  this machine's speed now, to compare runs by: {machine_speed()}")
    pg = stack.start_postgres()
    template = stack.template_database(pg)
    if "cold-start" in sections:
        cold_start()
        layer_cold_start(_INIT, COLD_RUNS)
    if "processor" in sections:
        processor(pg, template)
    if "fanout" in sections:
        fanout(pg, template)
    if "operators" in sections:
        operators(pg, template)
    if "status" in sections:
        status_reads(pg)
    print(f"load {os.getloadavg()[0]:.1f} (1 min) at the end")


if __name__ == "__main__":
    main()
