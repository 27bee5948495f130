"""When a batch has nothing left queued or processing: one `promptrun.batch.completed`
event (counts by status, cost, tokens, duration, per model), the batch's failure rate per
model as a metric, and a `promptrun.visibility.changed` event for each significant drop of
an own brand's mention rate against the previous comparable batch.

Exactly once per batch: a `batch_completions` row per batch key is the guard. Whoever
finishes a batch's last job inserts it (ON CONFLICT DO NOTHING) and claims it with one
conditional UPDATE (a claim lapses after CLAIM_SECONDS, so a sender that crashed is
replaced); the row is marked sent after PutEvents succeeded. Only a crash between PutEvents
and that mark sends twice; consumers can drop a repeat by `detail.batch_key`.

The processor calls `after_invocation` once per invocation (a decorator on its handler): one
statement on its own pool finds the finished batches among its jobs', and only then does it
complete them with a SQLAlchemy engine (the visibility comparison's queries are Core ones), so
SQLAlchemy is no part of a processor's cold start. `sweep` finds batches that ended some other
way (cancelled by an operator, rescued leases).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from promptrun import events
from promptrun.db.sql import Database, text
from promptrun.observability import SERVICE, logger

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from promptrun.db.pool import Pool

CLAIM_SECONDS = 120
NAMESPACE = "Promptrun"


def job_ids(sqs_event: dict[str, Any]) -> list[str]:
    """The job ids of an SQS event's records; records without one are left out."""
    ids = []
    for record in sqs_event.get("Records") or []:
        try:
            job_id = json.loads(record.get("body") or "").get("job_id")
        except (ValueError, AttributeError):
            continue
        if isinstance(job_id, str) and len(job_id) == 36:
            ids.append(job_id)
    return ids


def finished_batches(database: Database, job_ids: list[str]) -> list[str]:
    """The batches of `job_ids` with nothing left queued or processing, in one statement."""
    if not job_ids:
        return []
    with database.connect() as conn:
        rows = conn.execute(_FINISHED_BATCHES, {"ids": ",".join(job_ids)}).all()
    return sorted(r[0] for r in rows)


def finished_batches_of(database: Database, sqs_event: dict[str, Any]) -> list[str]:
    """The processor's check after each invocation: the finished batches of its event's jobs."""
    return finished_batches(database, job_ids(sqs_event))


# The batches' live jobs counted from the status summaries (job_counts and its pending deltas,
# promptrun.summaries), which every job's move updates in its own transaction: under one
# snapshot they count what prompt_jobs holds, in a few rows per batch. Read from prompt_jobs,
# the check cost a batch's live jobs each time: with statistics taken before a fan-out (every
# job queued: "few live rows"), the planner hashed every live job for each check. Should the
# summaries ever disagree, `complete` re-reads prompt_jobs before it sends anything, and the
# fan-out's sweep completes a batch this check missed.
_FINISHED_BATCHES = text(
    """WITH b AS MATERIALIZED (
           SELECT DISTINCT batch_key FROM prompt_jobs
           WHERE id = ANY(CAST(string_to_array(:ids, ',') AS uuid[]))
       ), live AS (
           SELECT c.batch_key, c.jobs FROM job_counts c
           WHERE c.batch_key IN (SELECT batch_key FROM b) AND c.status IN ('queued', 'processing')
           UNION ALL
           SELECT p.batch_key, p.jobs FROM job_counts_pending p
           WHERE p.batch_key IN (SELECT batch_key FROM b) AND p.status IN ('queued', 'processing')
       )
       SELECT b.batch_key FROM b
       WHERE (SELECT coalesce(sum(l.jobs), 0) FROM live l WHERE l.batch_key = b.batch_key) = 0"""
)


def _is_finished(conn: Any, batch_key: str) -> bool:
    return not conn.execute(
        text(
            "SELECT 1 FROM prompt_jobs WHERE batch_key = :k "
            "AND status IN ('queued', 'processing') LIMIT 1"
        ),
        {"k": batch_key},
    ).first()


def _claim(engine: Engine, batch_key: str) -> str:
    """'claimed' for exactly one caller while the batch's event is unsent; 'unfinished'
    while jobs are left; 'taken' when another sender holds it or it was sent."""
    with engine.begin() as conn:
        if not _is_finished(conn, batch_key):
            return "unfinished"
        conn.execute(
            text("INSERT INTO batch_completions (batch_key) VALUES (:k) ON CONFLICT DO NOTHING"),
            {"k": batch_key},
        )
        claimed = conn.execute(
            text(
                """UPDATE batch_completions
                   SET claimed_until = now() + make_interval(secs => :secs)
                   WHERE batch_key = :k AND sent_at IS NULL
                     AND (claimed_until IS NULL OR claimed_until < now())
                   RETURNING batch_key"""
            ),
            {"k": batch_key, "secs": CLAIM_SECONDS},
        ).first()
    return "claimed" if claimed is not None else "taken"


def batch_detail(engine: Engine, batch_key: str) -> dict[str, Any]:
    """The event's detail: counts by status, cost, tokens, duration, and the same per model."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                """SELECT mo.slug AS model, j.status, count(*) AS n,
                          coalesce(sum(j.cost_usd), 0) AS cost_usd,
                          coalesce(sum(j.input_tokens), 0) AS input_tokens,
                          coalesce(sum(j.output_tokens), 0) AS output_tokens,
                          min(j.created_at) AS created_at, min(j.started_at) AS started_at,
                          max(j.finished_at) AS finished_at
                   FROM prompt_jobs j JOIN models mo ON mo.id = j.model_id
                   WHERE j.batch_key = :k GROUP BY mo.slug, j.status ORDER BY mo.slug"""
            ),
            {"k": batch_key},
        ).all()
    models: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    cost = Decimal(0)
    tokens_in = tokens_out = 0
    created = [r.created_at for r in rows]
    started = [r.started_at for r in rows if r.started_at]
    finished = [r.finished_at for r in rows if r.finished_at]
    for r in rows:
        m = models.setdefault(r.model, {"model": r.model, "counts": {}, "cost_usd": Decimal(0)})
        m["counts"][r.status] = m["counts"].get(r.status, 0) + r.n
        m["cost_usd"] += r.cost_usd
        counts[r.status] = counts.get(r.status, 0) + r.n
        cost += r.cost_usd
        tokens_in += r.input_tokens
        tokens_out += r.output_tokens
    for m in models.values():
        total = sum(m["counts"].values())
        m["total"] = total
        m["failure_rate"] = round(m["counts"].get("failed", 0) / total, 4) if total else 0.0
        m["cost_usd"] = float(m["cost_usd"])
    total = sum(counts.values())
    start = min(created) if created else None
    end = max(finished) if finished else None
    return {
        "batch_key": batch_key,
        "total": total,
        "counts": counts,
        "failure_rate": round(counts.get("failed", 0) / total, 4) if total else 0.0,
        "cost_usd": float(cost),
        "input_tokens": int(tokens_in),
        "output_tokens": int(tokens_out),
        "created_at": start.isoformat() if start else None,
        "started_at": min(started).isoformat() if started else None,
        "ended_at": end.isoformat() if end else None,
        "duration_seconds": round((end - start).total_seconds(), 3) if start and end else None,
        "by_model": list(models.values()),
    }


def emit_metrics(detail: dict[str, Any]) -> None:
    """BatchFailureRate (percent) per model and for model=all (the alarm's), and BatchJobs
    per model and outcome; EMF lines, one per dimension set."""
    if is_metrics_disabled():  # single_metric prints regardless; the local stack turns it off
        return
    rates = [(m["model"], m["failure_rate"]) for m in detail["by_model"]]
    for model, rate in [*rates, ("all", detail["failure_rate"])]:
        with single_metric(
            name="BatchFailureRate",
            unit=MetricUnit.Percent,
            value=round(100 * rate, 2),
            namespace=NAMESPACE,
            default_dimensions={"service": SERVICE, "model": model},
        ) as metric:
            metric.add_metadata(key="batch_key", value=detail["batch_key"])
    for m in detail["by_model"]:
        for outcome, n in m["counts"].items():
            with single_metric(
                name="BatchJobs",
                unit=MetricUnit.Count,
                value=n,
                namespace=NAMESPACE,
                default_dimensions={"service": SERVICE, "model": m["model"], "outcome": outcome},
            ):
                pass


def complete(engine: Engine, batch_keys: Iterable[str]) -> list[str]:
    """Send the completion events of the finished batches among `batch_keys`; returns the
    keys this call sent."""
    sent = []
    for key in batch_keys:
        claim = _claim(engine, key)
        if claim != "claimed":
            if claim == "taken":
                _refresh_if_reopened(engine, key)
            continue
        detail = batch_detail(engine, key)
        # Here, not at the top: only a finished batch needs it, and every processor cold start
        # would pay for the visibility module (brands, exports) otherwise.
        from promptrun import visibility

        drops = visibility.significant_drops(engine, key)
        published = [events.Event(events.BATCH_COMPLETED, detail)] + [
            events.Event(events.VISIBILITY_CHANGED, {**d.model_dump(), "direction": "down"})
            for d in drops
        ]
        events.publish(published)
        with engine.begin() as conn:
            visibility.refresh_rollups(conn, [key])
            conn.execute(
                text(
                    "UPDATE batch_completions SET sent_at = now(), claimed_until = NULL, "
                    "detail = CAST(:d AS jsonb) WHERE batch_key = :k"
                ),
                {"k": key, "d": json.dumps(detail)},
            )
        emit_metrics(detail)
        logger.info(
            "batch completed",
            extra={"batch_key": key, "counts": detail["counts"], "visibility_drops": len(drops)},
        )
        sent.append(key)
    return sent


def _refresh_if_reopened(engine: Engine, batch_key: str) -> None:
    """A batch announced before and finished again (jobs retried since): its rollup is
    summed anew; the event is not sent twice."""
    with engine.begin() as conn:
        stale = conn.execute(
            text(
                """SELECT 1 FROM batch_completions c
                   WHERE c.batch_key = :k AND c.sent_at IS NOT NULL
                     AND c.rolled_up_at < (SELECT max(finished_at) FROM prompt_jobs
                                           WHERE batch_key = :k)"""
            ),
            {"k": batch_key},
        ).first()
        if stale and _is_finished(conn, batch_key):
            from promptrun import visibility

            visibility.refresh_rollups(conn, [batch_key])


def sweep(engine: Engine, limit: int = 100, days: int = 7) -> list[str]:
    """Batches finished without a sent event (ended by a cancel or a rescue, or a sender
    that crashed): complete them."""
    with engine.connect() as conn:
        keys = conn.execute(
            text(
                """SELECT j.batch_key FROM prompt_jobs j
                   LEFT JOIN batch_completions c ON c.batch_key = j.batch_key
                   WHERE c.sent_at IS NULL
                     AND j.created_at > now() - make_interval(days => :days)
                   GROUP BY j.batch_key
                   HAVING count(*) FILTER (WHERE j.status IN ('queued', 'processing')) = 0
                   ORDER BY min(j.created_at) LIMIT :n"""
            ),
            {"n": limit, "days": days},
        ).scalars()
        found = list(keys)
    return complete(engine, found)


def _guarded(handler: Any, after: Callable[[dict[str, Any]], None]) -> Any:
    @functools.wraps(handler)
    def run(event: dict[str, Any], context: Any) -> Any:
        result = handler(event, context)
        try:
            after(event)
        except Exception:
            logger.exception("batch completion check failed; the next sweep retries")
        return result

    return run


def after_invocation(
    pool_factory: Callable[[], Pool], engine_factory: Callable[[], Engine]
) -> Callable[[Any], Any]:
    """Decorator for the processor's handler: after the records are processed, complete the
    batches their jobs belong to. Never fails the invocation: a miss is swept later.

    The engine is made only when a batch has finished. The pool's idle connections are closed
    before it connects and its own connection after, so an instance never holds more than
    the pool's two."""

    def wrap(handler: Any) -> Any:
        def after(event: dict[str, Any]) -> None:
            pool = pool_factory()
            keys = finished_batches_of(pool, event)
            if not keys:
                return
            pool.dispose()
            engine = engine_factory()
            try:
                complete(engine, keys)
            finally:
                engine.dispose()

        return _guarded(handler, after)

    return wrap


def sweep_after(engine_factory: Callable[[], Engine]) -> Callable[[Any], Any]:
    """Decorator for the scheduled fan-out: after it, complete batches that finished without
    their event (a cancel, a rescue, a failed PutEvents)."""

    def wrap(handler: Any) -> Any:
        def after(_event: dict[str, Any]) -> None:
            sweep(engine_factory())

        return _guarded(handler, after)

    return wrap
