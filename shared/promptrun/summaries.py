"""Status reads that do not grow with history: batches, status counts, durations, errors and
entity counts come from the summary tables that migration 0007's triggers keep equal to a
recount of prompt_jobs and entity_mentions as jobs move. Each read touches a few rows per
batch, model and status (or per entity name), never every job.

Durations are kept as a histogram per batch and model: exact below one second, in buckets 1%
wide above, so p50/p95 above a second are within 1% of percentile_cont over the jobs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, Engine, text

from promptrun.schedule import BATCH_KEY_RE
from promptrun.status_models import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    STATUSES,
    TOP_ERRORS,
    BatchItem,
    BatchPage,
    BatchSummary,
    EntityCount,
    EntityReport,
    ErrorCount,
    InvalidQuery,
    ModelUsage,
    decode_cursor,
    encode_cursor,
)

FINISHED = ("succeeded", "failed", "cancelled", "skipped")
EXACT_BELOW_MS = 1000
BUCKET_GROWTH = 1.01


def bucket_value(bucket: int) -> float:
    """The duration a histogram bucket stands for (its lower bound; exact below 1 s)."""
    if bucket < EXACT_BELOW_MS:
        return float(bucket)
    return EXACT_BELOW_MS * BUCKET_GROWTH ** (bucket - EXACT_BELOW_MS)


def _live(table: str, columns: str, pending: str | None = None) -> str:
    """A summary table with its pending deltas (rows not folded in yet): sum over it."""
    return (
        f"(SELECT {columns} FROM {table} "
        f"UNION ALL SELECT {columns} FROM {pending or table + '_pending'})"
    )


_JOB_COUNTS = _live(
    "job_counts",
    "batch_key, model_id, status, jobs, input_tokens, output_tokens, cost_usd, "
    "first_created_at, first_started_at, last_finished_at",
)
# Public: the operators' prompt states find each prompt's newest batch in it too.
PROMPT_COUNTS = _live("prompt_job_counts", "prompt_id, batch_key, status, jobs")
_DURATIONS = _live("job_duration_buckets", "batch_key, model_id, bucket, jobs")
_ERRORS = _live("job_error_counts", "batch_key, error_key, error_kind, error_message, jobs")
_ENTITY_COUNTS = _live(
    "entity_counts", "batch_key, model_id, name, display_name, entity_type, mentions, rank_sum"
)
_ENTITY_BATCH_TOTALS = _live(
    "entity_batch_totals",
    "batch_key, name, display_name, entity_type, mentions, rank_sum",
    pending="entity_counts_pending",
)
_ENTITY_MODEL_TOTALS = _live(
    "entity_model_totals",
    "model_id, name, display_name, entity_type, mentions, rank_sum",
    pending="entity_counts_pending",
)
_ENTITY_TOTALS = _live(
    "entity_totals",
    "name, display_name, entity_type, mentions, rank_sum",
    pending="entity_counts_pending",
)


def _zero() -> dict[str, int]:
    return dict.fromkeys(STATUSES, 0)


def _slug_ids(conn: Connection, prompt: str | None, model: str | None) -> tuple[Any, Any]:
    """(prompt id, model id) of the slugs given; 0 for an unknown slug (matches nothing)."""
    prompt_id = model_id = None
    if prompt is not None:
        prompt_id = (
            conn.execute(text("SELECT id FROM prompts WHERE slug = :s"), {"s": prompt}).scalar()
            or 0
        )
    if model is not None:
        model_id = (
            conn.execute(text("SELECT id FROM models WHERE slug = :s"), {"s": model}).scalar() or 0
        )
    return prompt_id, model_id


def status_counts(
    conn: Connection,
    *,
    batch_key: str | None = None,
    prompt: str | None = None,
    model: str | None = None,
    status: str | None = None,
) -> dict[str, int]:
    """Jobs per status for GET /jobs' filter, from the summaries (a prompt and a model both
    given: that pair's own jobs, a few rows through the unique key)."""
    prompt_id, model_id = _slug_ids(conn, prompt, model)
    params: dict[str, Any] = {"b": batch_key, "p": prompt_id, "m": model_id}
    batch_filter = "" if batch_key is None else " AND batch_key = :b"
    if prompt_id is None:
        model_filter = "" if model_id is None else " AND model_id = :m"
        sql = (
            f"SELECT status, sum(jobs) FROM {_JOB_COUNTS} c WHERE true{batch_filter}{model_filter}"
        )
    elif model_id is None:
        sql = f"SELECT status, sum(jobs) FROM {PROMPT_COUNTS} c WHERE prompt_id = :p{batch_filter}"
    else:
        sql = (
            "SELECT status, count(*) FROM prompt_jobs "
            f"WHERE prompt_id = :p AND model_id = :m{batch_filter}"
        )
    counts = _zero()
    for job_status, n in conn.execute(text(sql + " GROUP BY status"), params):
        if status is None or job_status == status:
            counts[job_status] = int(n)
    return counts


# --- batches ----------------------------------------------------------------------------------


def list_batches(
    engine: Engine, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> BatchPage:
    """Batches newest first (by their first job row), with counts per status."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery("limit", f"must be between 1 and {MAX_LIMIT}")
    params: dict[str, Any] = {"n": limit + 1}
    after = ""
    if cursor is not None:
        at, key = decode_cursor("batch", cursor)
        if not BATCH_KEY_RE.match(key):
            raise InvalidQuery("cursor", "not a cursor this API returned")
        after = "WHERE (created_at, batch_key) < (:at, :key)"
        params.update(at=at, key=key)
    with engine.connect() as conn:
        batches = conn.execute(
            text(
                f"SELECT batch_key, created_at FROM batch_stats {after} "
                "ORDER BY created_at DESC, batch_key DESC LIMIT :n"
            ),
            params,
        ).all()
        keys = [b.batch_key for b in batches]
        rows = conn.execute(
            text(
                "SELECT batch_key, status, sum(jobs) AS jobs, min(first_started_at) AS started, "
                f"max(last_finished_at) AS finished FROM {_JOB_COUNTS} c "
                "WHERE batch_key = ANY(:keys) GROUP BY batch_key, status"
            ),
            {"keys": keys},
        ).all()
    counts: dict[str, dict[str, int]] = defaultdict(_zero)
    started: dict[str, Any] = {}
    finished_at: dict[str, Any] = {}
    for r in rows:
        counts[r.batch_key][r.status] = int(r.jobs)
        if r.started is not None:
            started[r.batch_key] = min(started.get(r.batch_key, r.started), r.started)
        if r.finished is not None:
            finished_at[r.batch_key] = max(finished_at.get(r.batch_key, r.finished), r.finished)
    items = []
    for b in batches[:limit]:
        c = counts[b.batch_key]
        total = sum(c.values())
        done = sum(c[s] for s in FINISHED)
        items.append(
            BatchItem(
                batch_key=b.batch_key,
                created_at=b.created_at,
                total=total,
                counts=c,
                progress=done / total if total else 0.0,
                started_at=started.get(b.batch_key),
                ended_at=finished_at.get(b.batch_key) if total and done == total else None,
            )
        )
    next_cursor = None
    if len(batches) > limit:
        next_cursor = encode_cursor("batch", items[-1].created_at, items[-1].batch_key)
    return BatchPage(items=items, next_cursor=next_cursor)


class _Usage:
    """Counts, tokens, cost and a duration histogram, added up over summary rows."""

    def __init__(self) -> None:
        self.counts = _zero()
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.p50: float | None = None
        self.p95: float | None = None

    def add(self, row: Any) -> None:
        self.counts[row.status] += int(row.jobs)
        self.input_tokens += int(row.input_tokens)
        self.output_tokens += int(row.output_tokens)
        self.cost_usd += float(row.cost_usd)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": sum(self.counts.values()),
            "counts": dict(self.counts),
            "p50_duration_ms": self.p50,
            "p95_duration_ms": self.p95,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 8),
        }


# percentile_cont's two neighbours for p50 and p95, per model and over all (model NULL), found
# in the histogram by running sums: a few rows back, whatever the batch's size.
_PERCENTILES = f"""
WITH h AS (
    SELECT model_id, bucket, sum(jobs) AS n FROM {_DURATIONS} d WHERE batch_key = :b
    GROUP BY 1, 2 HAVING sum(jobs) > 0
), c AS (
    SELECT model_id, bucket, sum(n) OVER (PARTITION BY model_id ORDER BY bucket) AS cum,
        sum(n) OVER (PARTITION BY model_id) AS total FROM h
    UNION ALL
    SELECT NULL, bucket, sum(n) OVER (ORDER BY bucket), sum(n) OVER ()
    FROM (SELECT bucket, sum(n) AS n FROM h GROUP BY bucket) o
)
SELECT m.slug AS model, max(c.total) AS total,
    min(c.bucket) FILTER (WHERE c.cum > floor(0.5 * (c.total - 1))) AS p50_lo,
    min(c.bucket) FILTER (WHERE c.cum > floor(0.5 * (c.total - 1)) + 1) AS p50_hi,
    min(c.bucket) FILTER (WHERE c.cum > floor(0.95 * (c.total - 1))) AS p95_lo,
    min(c.bucket) FILTER (WHERE c.cum > floor(0.95 * (c.total - 1)) + 1) AS p95_hi
FROM c LEFT JOIN models m ON m.id = c.model_id
GROUP BY c.model_id, m.slug
"""


def _interpolate(p: float, total: Any, low: Any, high: Any) -> float | None:
    """percentile_cont(p) from the buckets at its two neighbouring positions."""
    if not total or low is None:
        return None
    position = p * (int(total) - 1)
    fraction = position - math.floor(position)
    value = bucket_value(int(low))
    if not fraction or high is None:
        return value
    return value + fraction * (bucket_value(int(high)) - value)


def batch_summary(engine: Engine, batch_key: str) -> BatchSummary | None:
    """Counts by status and by model, progress, start/end, p50/p95 duration, tokens, cost,
    top errors. None when the batch has no jobs."""
    params = {"b": batch_key}
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT m.slug AS model, c.status, c.jobs, c.input_tokens, c.output_tokens, "
                "c.cost_usd, c.first_created_at, c.first_started_at, c.last_finished_at "
                f"FROM {_JOB_COUNTS} c JOIN models m ON m.id = c.model_id WHERE c.batch_key = :b"
            ),
            params,
        ).all()
        percentiles = conn.execute(text(_PERCENTILES), params).all()
        errors = conn.execute(
            text(
                "SELECT min(error_kind) AS error_kind, min(error_message) AS error_message, "
                f"sum(jobs) AS jobs FROM {_ERRORS} e WHERE batch_key = :b GROUP BY error_key "
                "HAVING sum(jobs) > 0 ORDER BY 3 DESC, 1, 2 LIMIT :n"
            ),
            {**params, "n": TOP_ERRORS},
        ).all()
    overall = _Usage()
    per_model: dict[str, _Usage] = defaultdict(_Usage)
    for r in rows:
        overall.add(r)
        per_model[r.model].add(r)
    for q in percentiles:
        usage_of = overall if q.model is None else per_model[q.model]
        usage_of.p50 = _interpolate(0.5, q.total, q.p50_lo, q.p50_hi)
        usage_of.p95 = _interpolate(0.95, q.total, q.p95_lo, q.p95_hi)
    usage = overall.as_dict()
    if not usage["total"]:
        return None
    created = [r.first_created_at for r in rows if r.first_created_at is not None]
    started = [r.first_started_at for r in rows if r.first_started_at is not None]
    finished = [r.last_finished_at for r in rows if r.last_finished_at is not None]
    done = sum(usage["counts"][s] for s in FINISHED)
    return BatchSummary(
        batch_key=batch_key,
        created_at=min(created),
        progress=done / usage["total"],
        started_at=min(started, default=None),
        ended_at=max(finished, default=None) if done == usage["total"] else None,
        by_model=[
            ModelUsage(model=slug, **u.as_dict())
            for slug, u in sorted(per_model.items())
            if sum(u.counts.values())
        ],
        top_errors=[ErrorCount.model_validate(dict(e._mapping)) for e in errors],
        **usage,
    )


# --- entities -----------------------------------------------------------------------------------

# Per name: mentions, rank sum, and the most common spelling and type (ties: the first in
# order, as mode() picks). `r` is the (name, display_name, entity_type, m, rs) rows to count.
_ENTITY_TOP = """
, top AS (
    SELECT name, sum(m) AS mentions, sum(rs) AS rank_sum FROM r
    GROUP BY name HAVING sum(m) > 0 ORDER BY mentions DESC, name LIMIT :limit
), spelling AS (
    SELECT DISTINCT ON (r.name) r.name, r.display_name FROM r JOIN top USING (name)
    GROUP BY r.name, r.display_name ORDER BY r.name, sum(r.m) DESC, r.display_name
), kind AS (
    SELECT DISTINCT ON (r.name) r.name, r.entity_type FROM r JOIN top USING (name)
    GROUP BY r.name, r.entity_type ORDER BY r.name, sum(r.m) DESC, r.entity_type
)
SELECT top.name, spelling.display_name, kind.entity_type AS type, top.mentions,
    top.mentions AS jobs, top.rank_sum::float / top.mentions AS average_rank
FROM top JOIN spelling USING (name) JOIN kind USING (name)
ORDER BY top.mentions DESC, top.name
"""

_ENTITY_SOURCES = {
    # No filter: the all-time totals.
    (False, False): "SELECT name, display_name, entity_type, sum(mentions) AS m, "
    f"sum(rank_sum) AS rs FROM {_ENTITY_TOTALS} e GROUP BY 1, 2, 3",
    (True, False): "SELECT name, display_name, entity_type, sum(mentions) AS m, "
    f"sum(rank_sum) AS rs FROM {_ENTITY_BATCH_TOTALS} e WHERE batch_key = :b GROUP BY 1, 2, 3",
    (False, True): "SELECT name, display_name, entity_type, sum(mentions) AS m, "
    f"sum(rank_sum) AS rs FROM {_ENTITY_MODEL_TOTALS} e WHERE model_id = :m GROUP BY 1, 2, 3",
    (True, True): "SELECT name, display_name, entity_type, sum(mentions) AS m, "
    f"sum(rank_sum) AS rs FROM {_ENTITY_COUNTS} e WHERE batch_key = :b AND model_id = :m "
    "GROUP BY 1, 2, 3",
}

# A prompt filter reads that prompt's own mentions (its index): one prompt's history.
_ENTITY_BY_PROMPT = """
SELECT name, display_name, entity_type, count(*) AS m, sum(rank) AS rs FROM entity_mentions
WHERE prompt_id = :p {batch} {model} GROUP BY 1, 2, 3
"""


def entity_counts(
    engine: Engine,
    *,
    batch_key: str | None = None,
    prompt: str | None = None,
    model: str | None = None,
    limit: int = 100,
) -> EntityReport:
    """Mentions per normalized entity name, most mentioned first. A job mentions a name at most
    once (unique per job and name), so `jobs` equals `mentions`."""
    if not 1 <= limit <= 1000:
        raise InvalidQuery("limit", "must be between 1 and 1000")
    with engine.connect() as conn:
        answers = status_counts(conn, batch_key=batch_key, prompt=prompt, model=model)["succeeded"]
        prompt_id, model_id = _slug_ids(conn, prompt, model)
        if prompt_id is not None:
            source = _ENTITY_BY_PROMPT.format(
                batch="" if batch_key is None else "AND batch_key = :b",
                model="" if model_id is None else "AND model_id = :m",
            )
        else:
            source = _ENTITY_SOURCES[(batch_key is not None, model_id is not None)]
        rows = conn.execute(
            text(f"WITH r AS ({source}) {_ENTITY_TOP}"),
            {"b": batch_key, "p": prompt_id, "m": model_id, "limit": limit},
        ).all()
    return EntityReport(
        answers=answers,
        items=[
            EntityCount(
                name=r.name,
                display_name=r.display_name,
                type=r.type,
                mentions=int(r.mentions),
                jobs=int(r.jobs),
                share=round(int(r.jobs) / answers, 4) if answers else None,
                average_rank=round(float(r.average_rank), 3),
            )
            for r in rows
        ],
    )
