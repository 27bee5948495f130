"""The scheduled sweep (MaintenanceFunction): the dead-letter queue checked against the
database, cancelled jobs whose worker died ended, and finished jobs past RETENTION_DAYS pruned,
all within the invocation's time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine

from promptrun import dlq, operator, retention
from promptrun.aws import JobQueue, client
from promptrun.observability import logger
from promptrun.settings import Settings

# Seconds kept back from the Lambda's remaining time when pruning.
SAFETY_MARGIN = 20.0


def run_maintenance(
    engine: Engine, settings: Settings, remaining_ms: Callable[[], int] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with engine.begin() as conn:
        out["cancelled_after_worker_died"] = operator.finish_cancelled(conn)
    if settings.jobs_dlq_url:
        queue = JobQueue(settings.jobs_queue_url) if settings.jobs_queue_url else None
        report = dlq.check_dead_letters(
            engine, client("sqs"), settings.jobs_dlq_url, queue, redrive=True
        )
        out["dead_letters"] = {
            "counts": report.counts(),
            "resent": report.resent,
            "dropped": report.dropped,
            "kept": report.kept,
        }
    if settings.retention_days:
        budget = None
        if remaining_ms is not None:
            budget = max(1.0, remaining_ms() / 1000 - SAFETY_MARGIN)
        pruned = retention.prune(
            engine, timedelta(days=settings.retention_days), time_budget=budget
        )
        out["pruned"] = {
            "jobs": pruned.jobs,
            "responses": pruned.responses,
            "mentions": pruned.mentions,
            "complete": pruned.complete,
        }
    logger.info("maintenance done", extra={"result": out})
    return out
