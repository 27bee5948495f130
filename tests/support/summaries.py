"""Recount what the summary tables hold, from prompt_jobs and entity_mentions, and diff them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text


# (summary query, recount query): both return the same columns, keyed by the leading ones.
def _kept(table: str, keys: str, sums: str, pending: str | None = None) -> str:
    """A summary with its pending deltas, summed per key; rows that add up to nothing dropped."""
    live = (
        f"SELECT {keys}, {sums} FROM {table} "
        f"UNION ALL SELECT {keys}, {sums} FROM {pending or table + '_pending'}"
    )
    total = ", ".join(f"sum({c})" for c in sums.split(", "))
    nonzero = " OR ".join(f"sum({c}) <> 0" for c in sums.split(", "))
    return f"SELECT {keys}, {total} FROM ({live}) x GROUP BY {keys} HAVING {nonzero}"


# (summary with pending deltas, recount): the same columns, keyed by the leading ones.
CHECKS: dict[str, tuple[str, str]] = {
    "job_counts": (
        _kept("job_counts", "batch_key, model_id, status",
              "jobs, input_tokens, output_tokens, cost_usd"),
        "SELECT batch_key, model_id, status, count(*), coalesce(sum(input_tokens), 0), "
        "coalesce(sum(output_tokens), 0), coalesce(sum(cost_usd), 0) "
        "FROM prompt_jobs GROUP BY 1, 2, 3",
    ),
    "prompt_job_counts": (
        _kept("prompt_job_counts", "prompt_id, batch_key, status", "jobs"),
        "SELECT prompt_id, batch_key, status, count(*) FROM prompt_jobs GROUP BY 1, 2, 3",
    ),
    "job_duration_buckets": (
        _kept("job_duration_buckets", "batch_key, model_id, bucket", "jobs"),
        "SELECT batch_key, model_id, promptrun_duration_bucket(duration_ms), count(*) "
        "FROM prompt_jobs WHERE duration_ms IS NOT NULL GROUP BY 1, 2, 3",
    ),
    "job_error_counts": (
        _kept("job_error_counts", "batch_key, error_kind, error_message", "jobs"),
        "SELECT batch_key, error_kind, error_message, count(*) FROM prompt_jobs "
        "WHERE error_kind IS NOT NULL OR error_message IS NOT NULL GROUP BY 1, 2, 3",
    ),
    "batch_stats": (
        "SELECT batch_key FROM batch_stats",
        "SELECT DISTINCT batch_key FROM prompt_jobs",
    ),
    "entity_counts": (
        _kept("entity_counts", "batch_key, model_id, name, display_name, entity_type",
              "mentions, rank_sum"),
        "SELECT batch_key, model_id, name, display_name, entity_type, count(*), sum(rank) "
        "FROM entity_mentions GROUP BY 1, 2, 3, 4, 5",
    ),
    "entity_batch_totals": (
        _kept("entity_batch_totals", "batch_key, name, display_name, entity_type",
              "mentions, rank_sum", pending="entity_counts_pending"),
        "SELECT batch_key, name, display_name, entity_type, count(*), sum(rank) "
        "FROM entity_mentions GROUP BY 1, 2, 3, 4",
    ),
    "entity_model_totals": (
        _kept("entity_model_totals", "model_id, name, display_name, entity_type",
              "mentions, rank_sum", pending="entity_counts_pending"),
        "SELECT model_id, name, display_name, entity_type, count(*), sum(rank) "
        "FROM entity_mentions GROUP BY 1, 2, 3, 4",
    ),
    "entity_totals": (
        _kept("entity_totals", "name, display_name, entity_type", "mentions, rank_sum",
              pending="entity_counts_pending"),
        "SELECT name, display_name, entity_type, count(*), sum(rank) FROM entity_mentions "
        "GROUP BY 1, 2, 3",
    ),
}  # fmt: skip


def _rows(conn: Connection, sql: str) -> set[tuple[Any, ...]]:
    return {tuple(r) for r in conn.execute(text(sql))}


def differences(conn: Connection) -> dict[str, tuple[set[Any], set[Any]]]:
    """Per summary table: (rows only in the summary, rows only in the recount); empty when equal."""
    found = {}
    for table, (kept, recount) in CHECKS.items():
        a, b = _rows(conn, kept), _rows(conn, recount)
        if a != b:
            found[table] = (a - b, b - a)
    return found


def counted_rows(conn: Connection) -> int:
    return sum(len(_rows(conn, recount)) for _, recount in CHECKS.values())


def compact(conn: Connection) -> bool:
    """Fold the pending deltas in now (False: another transaction is doing it)."""
    return bool(conn.execute(text("SELECT promptrun_compact_summaries()")).scalar_one())


def pending_rows(conn: Connection) -> int:
    tables = ("job_counts", "prompt_job_counts", "job_duration_buckets", "job_error_counts",
              "entity_counts")  # fmt: skip
    return sum(conn.execute(text(f"SELECT count(*) FROM {t}_pending")).scalar_one() for t in tables)
