"""Retention: finished jobs older than a cut-off are deleted with their answers and mentions,
in bounded chunks (one short transaction each), never a queued or running job.

Kept whatever their age: prompts, prompt versions and models (the catalogue), and every job
that has not finished.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, bindparam, text

from promptrun.errors import InputError

CHUNK = 1000
MAX_CHUNK = 10_000  # a chunk is one transaction's locks and deletes: keep it short
_FINISHED = "('succeeded', 'failed', 'cancelled', 'skipped')"
_AGE_RE = re.compile(r"^\s*(\d{1,6})\s*([dhw])\s*$")


def parse_age(value: str) -> timedelta:
    """`90d`, `12h`, `2w`: how old a finished job must be to go."""
    match = _AGE_RE.match(value)
    if not match:
        raise InputError(
            f"--older-than: expected a number with d, h or w (e.g. 90d), got {value!r}"
        )
    amount, unit = int(match.group(1)), match.group(2)
    age = {"h": timedelta(hours=amount), "d": timedelta(days=amount), "w": timedelta(weeks=amount)}[
        unit
    ]
    if age < timedelta(hours=1):
        raise InputError("--older-than: at least 1h")
    return age


@dataclass
class PruneReport:
    dry_run: bool
    jobs: int = 0
    responses: int = 0
    mentions: int = 0
    complete: bool = True  # False: stopped by the time budget; the next run continues

    def line(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        rest = "" if self.complete else " (stopped for time; run again to continue)"
        return f"{verb} {self.jobs} finished jobs, {self.responses} responses, {self.mentions} mentions{rest}"


_COUNT = text(
    f"""
    SELECT count(*) AS jobs,
           (SELECT count(*) FROM responses r JOIN prompt_jobs j ON j.id = r.job_id
             WHERE j.status IN {_FINISHED} AND j.finished_at < now() - make_interval(secs => :age)) AS responses,
           (SELECT count(*) FROM entity_mentions m JOIN prompt_jobs j ON j.id = m.job_id
             WHERE j.status IN {_FINISHED} AND j.finished_at < now() - make_interval(secs => :age)) AS mentions
    FROM prompt_jobs WHERE status IN {_FINISHED} AND finished_at < now() - make_interval(secs => :age)
    """
)
# Locked so that a concurrent retry waits, then finds the row gone.
_PICK = text(
    f"SELECT id FROM prompt_jobs WHERE status IN {_FINISHED} AND finished_at < now() - make_interval(secs => :age) "
    "ORDER BY finished_at LIMIT :chunk FOR UPDATE SKIP LOCKED"
)
_DELETE_MENTIONS = text("DELETE FROM entity_mentions WHERE job_id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
_DELETE_RESPONSES = text("DELETE FROM responses WHERE job_id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
_DELETE_JOBS = text(
    f"DELETE FROM prompt_jobs WHERE id IN :ids AND status IN {_FINISHED}"
).bindparams(bindparam("ids", expanding=True))


def prune(
    engine: Engine,
    older_than: timedelta,
    *,
    dry_run: bool = False,
    chunk: int = CHUNK,
    time_budget: float | None = None,
    on_progress: Callable[[PruneReport], None] | None = None,
) -> PruneReport:
    """Delete finished jobs older than `older_than` (by finished_at), `chunk` at a time."""
    report = PruneReport(dry_run=dry_run)
    if dry_run:
        with engine.connect() as conn:
            row = conn.execute(_COUNT, {"age": older_than.total_seconds()}).one()
        report.jobs, report.responses, report.mentions = (
            int(row.jobs),
            int(row.responses),
            int(row.mentions),
        )
        return report
    deadline = None if time_budget is None else time.monotonic() + time_budget
    while True:
        if deadline is not None and time.monotonic() > deadline:
            report.complete = False
            return report
        with engine.begin() as conn:
            ids = list(
                conn.execute(_PICK, {"age": older_than.total_seconds(), "chunk": chunk}).scalars()
            )
            if not ids:
                return report
            report.mentions += conn.execute(_DELETE_MENTIONS, {"ids": ids}).rowcount
            report.responses += conn.execute(_DELETE_RESPONSES, {"ids": ids}).rowcount
            report.jobs += conn.execute(_DELETE_JOBS, {"ids": ids}).rowcount
        if on_progress is not None:
            on_progress(report)
