"""The processor's work for one SQS batch: claim every job in one transaction of a few
statements, run the model calls side by side, store the answers a statement at a time: all
of them in one, or, for calls that can wait, in waves as they come.

The same decisions as JobRunner (processor.py) makes for one record, per job of the batch:
a duplicate, finished or cancelled job is acknowledged; one not due, held by a live worker, or
held back by its limits comes back later (a delayed message, or the record reported failed
when there is no queue to send to); a bad body fails its record alone. Errors, retries and
disabled models take JobRunner's per-job path: they are rare, the success path is not.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, wait
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from promptrun import batch_jobs, jobs, limits
from promptrun.aws import JobQueue
from promptrun.batch_jobs import Finished, Locked
from promptrun.db.enums import JobStatus
from promptrun.db.sql import Conn, Database
from promptrun.errors import InputError
from promptrun.jobs import ClaimedJob
from promptrun.model_call import Answer, ModelCaller, ProviderFactory, StaleAttempt
from promptrun.observability import logger, metrics
from promptrun.processor import (
    JobMessage,
    JobRunner,
    Outcome,
    parse_message,
    refresh,
    send_back_all,
    unclaimable,
)
from promptrun.providers import ErrorKind, ProviderError, get_provider, offline
from promptrun.settings import Settings
from promptrun.waiting import (
    REFRESH_RECEIVE_COUNT,
    Hint,
    RetryLater,
    demand_for,
    held,
    wait_inline,
)

# The largest SQS batch the processor is deployed to take (template.yaml's ProcessorBatchSize,
# its MaxValue): its model calls run side by side, one thread each, while the invocation's
# own thread stores their answers.
MAX_BATCH = 100
# Answers of calls that can wait are stored in waves as they come (_settle_as_they_end): a
# wave goes out once this many have answered, or once the first of them has waited this
# long. Against calls of seconds, a wave's statement costs little; one per answer would cost
# the database a statement's fixed work per job.
WAVE_JOBS = 10
WAVE_SECONDS = 1.0


@dataclass(frozen=True)
class Record:
    """One SQS record, as much of it as the processor uses."""

    message_id: str
    body: str
    receipt_handle: str | None = None
    receive_count: int = 1

    @classmethod
    def of(cls, record: dict[str, Any]) -> Record:
        attributes = record.get("attributes") or {}
        return cls(
            message_id=str(record.get("messageId", "")),
            body=record.get("body") or "",
            receipt_handle=record.get("receiptHandle"),
            receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
        )


@dataclass
class BatchResult:
    """Each record's outcome, and the records that must come back (batchItemFailures)."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    def response(self) -> dict[str, Any]:
        """The partial batch response Lambda's SQS event source expects."""
        return {"batchItemFailures": [{"itemIdentifier": m} for m in self.failed]}


# What one attempt came to: its outcome, a retry to come, or the error that fails its record.
Settled = Outcome | RetryLater | Exception


@dataclass
class _Attempt:
    """A claimed, admitted job and what its attempt came to."""

    job: ClaimedJob
    lease: limits.Lease | None
    spent: jobs.Usage = field(default_factory=jobs.Usage)
    answer: Answer | None = None
    error: Exception | None = None


def _waits(job: ClaimedJob) -> bool:
    """Whether the job's calls can block: any provider's but a zero-latency offline model's.
    Calls that cannot block run on the batch's own thread (a thread hop and the GIL handed
    back and forth cost more than the call)."""
    return any(
        m.provider != "offline" or offline.waits(m.params)
        for m in (job.model, job.extraction_model)
    )


def _demand(group: list[ClaimedJob]) -> limits.Demand:
    """One demand for a model's jobs in a batch, the largest: what is reserved is what is
    released."""
    return max((demand_for(j) for j in group), key=lambda d: (d.tokens, d.cost_usd))


def _per_model(jobs: list[ClaimedJob]) -> list[list[ClaimedJob]]:
    """The jobs per (model, batch), in the order they came."""
    groups: dict[tuple[str, str], list[ClaimedJob]] = {}
    for job in jobs:
        groups.setdefault((job.model_slug, job.batch_key), []).append(job)
    return list(groups.values())


@dataclass
class BatchRunner:
    engine: Database
    settings: Settings
    queue: JobQueue | None = None
    providers: ProviderFactory = get_provider
    # Runs the model calls of a batch side by side; None: one after the other.
    threads: Executor | None = None
    single: JobRunner = field(init=False)
    caller: ModelCaller = field(init=False)

    def __post_init__(self) -> None:
        self.single = JobRunner(self.engine, self.settings, self.queue, self.providers)
        self.caller = self.single.caller

    def run(
        self, records: Sequence[Record], remaining_ms: Callable[[], int] | None = None
    ) -> BatchResult:
        result = BatchResult()
        # The first record of each job id speaks for it; its copies in the batch are duplicates.
        pending: dict[uuid.UUID, tuple[Record, Hint]] = {}
        for record in records:
            try:
                message: JobMessage = parse_message(record.body)
            except InputError as exc:
                logger.error(
                    "record failed: bad body",
                    extra={"message_id": record.message_id, "error": str(exc)},
                )
                result.failed.append(record.message_id)
                continue
            if message.job_id in pending:
                result.outcomes[record.message_id] = Outcome.SKIPPED
                continue
            pending[message.job_id] = (record, message.hint)
        self._refresh([(j, h) for j, (r, h) in pending.items() if self._refreshable(r)])
        self._rounds(pending, remaining_ms, result)
        counts = Counter(result.outcomes.values())
        for outcome, n in counts.items():
            metrics.add_metric(name=f"Jobs{outcome.value.title()}", unit=MetricUnit.Count, value=n)
        return result

    def _rounds(
        self,
        pending: dict[uuid.UUID, tuple[Record, Hint]],
        remaining_ms: Callable[[], int] | None,
        result: BatchResult,
    ) -> None:
        """Rounds until every job has run or must come back later (a new message)."""
        while pending:
            try:
                waits = self._round(pending, remaining_ms, result)
            except Exception:  # the records come back after their visibility timeout
                logger.exception("batch failed", extra={"jobs": len(pending)})
                result.failed.extend(r.message_id for r, _ in pending.values())
                break
            inline = {j: w for j, w in waits.items() if wait_inline(w, remaining_ms)}
            self._come_back(
                [(pending[j][0], j, w) for j, w in waits.items() if j not in inline], result
            )
            if not inline:
                break
            time.sleep(min(w.delay for w in inline.values()))
            pending = {j: (pending[j][0], w.hint) for j, w in inline.items()}

    # --- one round: claim, run, finish ---------------------------------------------------

    def _round(
        self,
        pending: dict[uuid.UUID, tuple[Record, Hint]],
        remaining_ms: Callable[[], int] | None,
        result: BatchResult,
    ) -> dict[uuid.UUID, RetryLater]:
        """Run what may run now; the jobs that must come back, and when."""
        waits: dict[uuid.UUID, RetryLater] = {}
        unrun: dict[uuid.UUID, Outcome] = {}
        broken: list[uuid.UUID] = []
        attempts = self._claim(pending, waits, unrun, broken)
        for job_id in pending:
            record = pending[job_id][0]
            if job_id in unrun:
                result.outcomes[record.message_id] = unrun[job_id]
            elif job_id in broken:
                result.failed.append(record.message_id)
        # Jobs a rate holds back for a turn due within an inline wait: their round runs while
        # this one's calls do, so one processor keeps its model's rate busy.
        soon = {
            j: w
            for j, w in waits.items()
            if attempts and w.turn is not None and wait_inline(w, remaining_ms)
        }
        for job_id in soon:
            del waits[job_id]

        def meanwhile() -> None:
            time.sleep(min(w.delay for w in soon.values()))
            self._rounds(
                {j: (pending[j][0], w.hint) for j, w in soon.items()}, remaining_ms, result
            )

        ran = self._attempts(attempts, remaining_ms, meanwhile if soon else None)
        for ended, attempt in zip(ran, attempts, strict=True):
            record = pending[attempt.job.id][0]
            if isinstance(ended, RetryLater):
                waits[attempt.job.id] = ended
            elif isinstance(ended, Outcome):
                result.outcomes[record.message_id] = ended
            else:
                logger.error("record failed", extra={"job_id": str(attempt.job.id)})
                result.failed.append(record.message_id)
        return waits

    def _claim(
        self,
        pending: dict[uuid.UUID, tuple[Record, Hint]],
        waits: dict[uuid.UUID, RetryLater],
        unrun: dict[uuid.UUID, Outcome],
        broken: list[uuid.UUID],
    ) -> list[_Attempt]:
        """Claim what may run now; the claimed attempts. The jobs that may not run now are
        sorted into `waits`, `unrun` and `broken`. Quick first: one statement claims them all
        when all they need is a free slot (batch_jobs.claim_quick); otherwise, or for jobs
        holding a turn behind a rate, one transaction locks them, locks and decides their
        limits rows, and claims the ones admitted."""
        ids = list(pending)
        if all(hint.turn is None for _, hint in pending.values()):
            with batch_jobs.autocommit(self.engine) as conn:
                quick = batch_jobs.claim_quick(conn, ids, self.settings.lease_seconds)
            if quick is not None:
                return self._quick_attempts(quick, ids, waits, unrun, broken)
            logger.info(
                "a limit needs more than a free slot; admitting with the limits rows locked",
                extra={"jobs": len(ids)},
            )
        with self.engine.begin() as conn:
            found = batch_jobs.lock_batch(conn, ids)
            runnable = self._sort(conn, ids, found, waits, unrun, broken)
            admitted, taken = self._admit(conn, runnable, pending, waits)
            claimed = batch_jobs.claim_batch(
                conn,
                [found[a.job.id] for a in admitted],
                self.settings.lease_seconds,
                taken,
                last=True,
            )
        return [a for a in admitted if a.job.id in claimed]

    def _quick_attempts(
        self,
        quick: batch_jobs.QuickClaim,
        ids: list[uuid.UUID],
        waits: dict[uuid.UUID, RetryLater],
        unrun: dict[uuid.UUID, Outcome],
        broken: list[uuid.UUID],
    ) -> list[_Attempt]:
        """The attempts of a quick claim, each holding a slot of its model's and group's rows
        (its release frees them; its demand, as an admission's, is what the release reconciles
        the usage with); the rest sorted as _claim says."""
        if any(not j.claimable for j in quick.jobs.values()):  # decided on the rows as found
            with self.engine.begin() as conn:
                runnable = self._sort(conn, ids, quick.jobs, waits, unrun, broken)
        else:
            runnable = self._sort(None, ids, quick.jobs, waits, unrun, broken)
        attempts = []
        for group in _per_model([j for j in runnable if j.id in quick.claimed]):
            demand = _demand(group)
            for job in group:
                keys = quick.keys.get(job.id)
                lease = None if keys is None else limits.Lease(keys, (), demand)
                attempts.append(_Attempt(job, lease))
        return attempts

    def _sort(
        self,
        conn: Conn | None,
        ids: list[uuid.UUID],
        found: dict[uuid.UUID, Locked],
        waits: dict[uuid.UUID, RetryLater],
        unrun: dict[uuid.UUID, Outcome],
        broken: list[uuid.UUID],
    ) -> list[ClaimedJob]:
        """The jobs that may be claimed now; the others sorted as _claim says (`conn`: for
        the ones not claimable, whose worker may have died holding their last attempt)."""
        runnable: list[ClaimedJob] = []
        for job_id in ids:
            locked = found.get(job_id)
            if locked is None:
                logger.warning("no such job; message dropped", extra={"job_id": str(job_id)})
                unrun[job_id] = Outcome.SKIPPED
            elif not locked.claimable:
                assert conn is not None
                outcome, wait = unclaimable(conn, job_id, locked)
                if wait is not None:
                    waits[job_id] = wait
                else:
                    unrun[job_id] = outcome
            elif locked.job is None:
                logger.error(
                    "record failed: job records a prompt version that is not stored",
                    extra={"job_id": str(job_id), "version": locked.version_missing},
                )
                broken.append(job_id)
            else:
                runnable.append(locked.job)
        return runnable

    def _admit(
        self,
        conn: Conn,
        runnable: list[ClaimedJob],
        pending: dict[uuid.UUID, tuple[Record, Hint]],
        waits: dict[uuid.UUID, RetryLater],
    ) -> tuple[list[_Attempt], limits.Taken | None]:
        """Admit the jobs per (model, batch, turn) in this transaction, with their limits
        rows locked: those beyond what their limits allow now are left queued, with the
        reason written on them. What the admitted took is written with their claim
        (batch_jobs.claim_batch)."""
        admitted: list[_Attempt] = []
        groups: dict[tuple[str, str, float | None], list[ClaimedJob]] = {}
        for job in runnable:
            if not job.model_enabled:  # claimed, then skipped without a call (JobRunner's way)
                admitted.append(_Attempt(job, None))
                continue
            turn = pending[job.id][1].turn
            groups.setdefault((job.model_slug, job.batch_key, turn), []).append(job)
        ordered = sorted(groups.items(), key=lambda g: g[0][:2])
        demands = [_demand(group) for _, group in ordered]
        requests = [
            limits.Request(slug, batch_key, len(group), demand, turn=turn)
            for ((slug, batch_key, turn), group), demand in zip(ordered, demands, strict=True)
        ]
        taken = limits.decide_many(conn, requests) if requests else None
        admissions = taken.admissions if taken is not None else []
        for (_, group), demand, admission in zip(ordered, demands, admissions, strict=True):
            lease = limits.Lease.of(admission, demand)
            admitted.extend(_Attempt(job, lease) for job in group[: admission.granted])
            rest = group[admission.granted :]
            if not rest:
                continue
            limits.note_wait(conn, [j.id for j in rest], admission.reason or "limits")
            for job in rest:
                waits[job.id] = held(admission, pending[job.id][1])
        return admitted, taken

    def _attempts(
        self,
        attempts: list[_Attempt],
        remaining_ms: Callable[[], int] | None,
        meanwhile: Callable[[], None] | None = None,
    ) -> list[Settled]:
        """Run the claimed jobs' calls side by side and record every outcome (as each call
        ends, when the calls can wait: _settle_as_they_end). `meanwhile` runs on this thread
        while the calls are in flight (the next round's jobs)."""
        calls = [a for a in attempts if a.job.model_enabled]

        def call(attempt: _Attempt) -> None:
            try:
                attempt.answer = self.caller.call(attempt.job, remaining_ms, attempt.spent)
            except Exception as exc:  # recorded below, per job
                attempt.error = exc

        pooled = len(calls) > 1 or (meanwhile is not None and bool(calls))
        if self.threads is not None and pooled and any(_waits(a.job) for a in calls):
            if meanwhile is None:
                stale, settled = self._settle_as_they_end(self.threads, calls, call)
                return self._outcomes(attempts, stale, settled)
            # this thread runs `meanwhile` (it stores the answers once the calls are done)
            futures = [self.threads.submit(call, a) for a in calls]
            try:
                meanwhile()
            finally:
                for future in futures:
                    future.result()
        else:
            for attempt in calls:
                call(attempt)
            if meanwhile is not None:
                meanwhile()
        return self._outcomes(attempts, self._finish([a for a in calls if a.answer is not None]))

    def _settle_as_they_end(
        self, threads: Executor, calls: list[_Attempt], call: Callable[[_Attempt], None]
    ) -> tuple[set[uuid.UUID], dict[uuid.UUID, Settled]]:
        """Run the calls side by side on `threads` while this thread ends them as they come:
        answers stored in waves (what has answered, once WAVE_JOBS have or the first of them
        has waited WAVE_SECONDS; the last wave when every call is done), a failed call's
        retry or failure recorded at once. A quick call's answer, and its model's slot (the
        store releases it), are not held until the batch's slowest call ends, and an
        invocation that dies keeps what it stored. The stale ones' ids, and the outcomes of
        the calls that failed."""
        running = {threads.submit(call, a): a for a in calls}
        ready: list[_Attempt] = []
        first_ready = 0.0
        stale: set[uuid.UUID] = set()
        settled: dict[uuid.UUID, Settled] = {}
        while running:
            timeout = max(0.0, first_ready + WAVE_SECONDS - time.monotonic()) if ready else None
            done, _ = wait(running, timeout, FIRST_COMPLETED)
            for future in done:
                future.result()  # `call` keeps each call's error on its attempt
                attempt = running.pop(future)
                if attempt.answer is None:
                    settled[attempt.job.id] = self._settle(attempt, stale)
                    continue
                if not ready:
                    first_ready = time.monotonic()
                ready.append(attempt)
            due = len(ready) >= WAVE_JOBS or time.monotonic() - first_ready >= WAVE_SECONDS
            if ready and running and due:
                stale |= self._finish(ready)
                ready = []
        return stale | self._finish(ready), settled

    def _outcomes(
        self,
        attempts: list[_Attempt],
        stale: set[uuid.UUID],
        settled: dict[uuid.UUID, Settled] | None = None,
    ) -> list[Settled]:
        """Each attempt's outcome, once its answer is stored (or it has none); `settled`: the
        ones recorded already."""
        done = settled or {}
        return [done[a.job.id] if a.job.id in done else self._settle(a, stale) for a in attempts]

    def _settle(self, attempt: _Attempt, stale: set[uuid.UUID]) -> Settled:
        """The attempt's outcome, recorded: a retry to come as RetryLater, an unexpected error
        (logged with its traceback; the record comes back) as the exception."""
        try:
            return self._outcome(attempt, stale)
        except RetryLater as later:
            return later
        except Exception as exc:
            logger.exception("record failed", extra={"job_id": str(attempt.job.id)})
            return exc

    def _finish(self, answered: list[_Attempt]) -> set[uuid.UUID]:
        """Store every answer and complete its job in one transaction; the stale ones' ids.
        Should the batch's statement fail, each job is stored on its own, so one bad row
        costs only its own job."""
        if not answered:
            return set()
        finished = [Finished(a.job, a.answer, a.spent) for a in answered if a.answer]
        ended = [
            (
                a.job.id,
                limits.Ended(
                    a.lease,
                    a.spent.input_tokens + a.spent.output_tokens,
                    a.spent.cost_usd,
                    succeeded=a.answer.throttled is None,
                    throttled_for=a.answer.throttled,
                    quota_wait=a.answer.quota_wait,
                ),
            )
            for a in answered
            if a.lease is not None and a.answer is not None
        ]
        release = limits.release_done_params(ended)
        try:
            if release is not None:  # the usual case: one statement, its own transaction
                with batch_jobs.autocommit(self.engine) as conn:
                    owned = batch_jobs.complete_batch(conn, finished, release)
            else:
                with self.engine.begin() as conn:
                    owned = batch_jobs.complete_batch(conn, finished)
                    limits.release_many(conn, [e for job_id, e in ended if job_id in owned])
            return {a.job.id for a in answered} - owned
        except Exception as exc:
            logger.warning(
                "storing the batch failed; storing job by job", extra={"error": type(exc).__name__}
            )
        stale: set[uuid.UUID] = set()
        for attempt in answered:
            assert attempt.answer is not None
            try:
                self.caller.finish(attempt.job, attempt.answer, attempt.spent, attempt.lease)
            except StaleAttempt:
                stale.add(attempt.job.id)
            except Exception as exc:  # handled as an unexpected error of this job alone
                attempt.answer, attempt.error = None, exc
        return stale

    def _outcome(self, attempt: _Attempt, stale: set[uuid.UUID]) -> Outcome:
        job = attempt.job
        log = job.log_fields
        if not job.model_enabled:
            # Disabled in the catalogue after the fan-out: not run, and said so.
            return self.single.end_unrun(
                job,
                ErrorKind.CONFIG,
                f"model {job.model_slug} is disabled in the catalogue",
                JobStatus.SKIPPED,
            )
        if job.id in stale:
            logger.warning("a newer attempt owns the job; result discarded", extra=log)
            return Outcome.STALE
        if attempt.answer is not None:
            logger.info(
                "job succeeded",
                extra={
                    **log,
                    "entities": len(attempt.answer.entities),
                    "latency_ms": attempt.answer.latency_ms,
                },
            )
            return Outcome.SUCCEEDED
        err = attempt.error
        if isinstance(err, ProviderError):
            return self.single.on_error(job, err, log, attempt.spent, attempt.lease)
        assert err is not None
        logger.error("unexpected error", extra={**log, "error": type(err).__name__})
        return self.single.on_unexpected(job, err, log, attempt.spent, attempt.lease)

    # --- coming back ------------------------------------------------------------------------

    def _resend(self, record: Record) -> bool:
        return self.queue is not None and record.receipt_handle is not None

    def _refreshable(self, record: Record) -> bool:
        return self._resend(record) and record.receive_count >= REFRESH_RECEIVE_COUNT

    def _refresh(self, stale: list[tuple[uuid.UUID, Hint]]) -> None:
        if self.queue is not None:
            refresh(self.queue, stale, self.settings.lease_seconds)

    def _come_back(
        self, backs: list[tuple[Record, uuid.UUID, RetryLater]], result: BatchResult
    ) -> None:
        """A fresh, delayed message for each job and its record acknowledged; without a queue
        to send to (or when SQS refused it), the record itself fails and comes back (unless
        coming back is optional)."""
        if not backs:
            return
        came_back = send_back_all(
            self.queue, [(job_id, later, self._resend(record)) for record, job_id, later in backs]
        )
        for (record, _, _), outcome in zip(backs, came_back, strict=True):
            if outcome is None:
                result.failed.append(record.message_id)
            else:
                result.outcomes[record.message_id] = outcome
