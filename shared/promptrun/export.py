"""Exports of jobs, answers and mentions as flat rows a spreadsheet reads: CSV, JSON Lines,
and Parquet (the CLI only: pyarrow is no part of the Lambda layer).

Two tables:
- answers: one row per job (failed ones too), with the answer text, the entities it names
  and the tracked brands they match;
- mentions: one row per entity an answer names, with its matched brand.

Rows come in pages ordered by a key that never changes (keyset pagination), so an export
being written while jobs finish neither repeats nor skips a row.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal

from sqlalchemy import Connection, Engine, text

from promptrun.errors import InputError

Table = Literal["answers", "mentions"]
Format = Literal["csv", "jsonl", "parquet"]

ANSWER_COLUMNS = (
    "batch_key", "scheduled_for", "prompt", "model", "run_index", "status", "attempts",
    "error_kind", "error_message", "started_at", "finished_at", "duration_ms",
    "input_tokens", "output_tokens", "cost_usd", "finish_reason", "answer_text",
    "entities", "brands", "job_id",
)  # fmt: skip
MENTION_COLUMNS = (
    "batch_key", "scheduled_for", "prompt", "model", "run_index", "rank", "entity",
    "entity_key", "entity_type", "brand", "own_brand", "sentiment", "snippet", "job_id",
)  # fmt: skip


class InvalidExport(InputError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ExportFilter:
    batch_key: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    prompt: str | None = None
    model: str | None = None

    def where(self) -> tuple[list[str], dict[str, Any]]:
        if self.batch_key and (self.date_from or self.date_to):
            raise InvalidExport("batch_key", "give a batch key or a date range, not both")
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise InvalidExport("from", "must not be after 'to'")
        where: list[str] = []
        params: dict[str, Any] = {}
        if self.batch_key:
            where.append("j.batch_key = :batch_key")
            params["batch_key"] = self.batch_key
        if self.date_from:
            where.append("j.scheduled_for >= :t_from")
            params["t_from"] = datetime.combine(self.date_from, time(), UTC)
        if self.date_to:
            where.append("j.scheduled_for < :t_to")
            params["t_to"] = day_after(self.date_to)
        if self.prompt:
            where.append("pr.slug = :prompt")
            params["prompt"] = self.prompt
        if self.model:
            where.append("mo.slug = :model")
            params["model"] = self.model
        return where, params


def check(conn: Connection, f: ExportFilter) -> None:
    """The filter's own checks, and a prompt or model slug naming nothing is an error (an
    empty export would look like a quiet day)."""
    f.where()
    for field, value, table in (("prompt", f.prompt, "prompts"), ("model", f.model, "models")):
        if value is not None and (
            conn.execute(text(f"SELECT 1 FROM {table} WHERE slug = :s"), {"s": value}).first()
            is None
        ):
            raise InvalidExport(field, f"unknown {field} {value!r}")


def day_after(day: date) -> datetime:
    """The exclusive upper bound of an inclusive day (the last representable day stays)."""
    if day >= date.max:
        return datetime.combine(date.max, time.max, UTC)
    return datetime.combine(day + timedelta(days=1), time(), UTC)


def _encode(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def _decode(table: Table, cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except ValueError:
        raise InvalidExport("cursor", "not a cursor this API returned") from None
    if not (isinstance(values, list) and len(values) == 3 and values[0] == table):
        raise InvalidExport("cursor", "not a cursor this API returned")
    at, key = values[1], values[2]
    try:
        at = datetime.fromisoformat(at)
        key = str(uuid.UUID(key)) if table == "answers" else int(key)
    except (TypeError, ValueError):
        raise InvalidExport("cursor", "not a cursor this API returned") from None
    if at.tzinfo is None:
        raise InvalidExport("cursor", "not a cursor this API returned")
    return [at, key]


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


@dataclass
class Page:
    rows: list[dict[str, Any]]
    next_cursor: str | None


def page(
    engine: Engine, table: Table, f: ExportFilter, *, limit: int = 500, cursor: str | None = None
) -> Page:
    """One page of rows in a stable order; next_cursor is None on the last page."""
    where, params = f.where()
    params["limit"] = limit + 1
    if table == "answers":
        if cursor:
            at, job_id = _decode(table, cursor)
            where.append("(j.scheduled_for, j.id) > (:c_at, CAST(:c_id AS uuid))")
            params.update(c_at=at, c_id=job_id)
        sql = f"""
            SELECT j.batch_key, j.scheduled_for, pr.slug AS prompt, mo.slug AS model,
                   j.run_index, j.status, j.attempt_count AS attempts, j.error_kind,
                   j.error_message, j.started_at, j.finished_at, j.duration_ms,
                   j.input_tokens, j.output_tokens, j.cost_usd, r.finish_reason,
                   r.answer_text,
                   (SELECT string_agg(m.display_name, '; ' ORDER BY m.rank)
                      FROM entity_mentions m WHERE m.job_id = j.id) AS entities,
                   (SELECT string_agg(DISTINCT b.slug, '; ')
                      FROM entity_mentions m
                      JOIN brand_aliases a ON a.alias = m.name
                      JOIN brands b ON b.id = a.brand_id
                     WHERE m.job_id = j.id) AS brands,
                   CAST(j.id AS text) AS job_id
            FROM prompt_jobs j
            JOIN prompts pr ON pr.id = j.prompt_id
            JOIN models mo ON mo.id = j.model_id
            LEFT JOIN responses r ON r.job_id = j.id
            {"WHERE " + " AND ".join(where) if where else ""}
            ORDER BY j.scheduled_for, j.id
            LIMIT :limit
        """
    else:
        if cursor:
            at, mention_id = _decode(table, cursor)
            where.append("(j.scheduled_for, m.id) > (:c_at, :c_id)")
            params.update(c_at=at, c_id=mention_id)
        sql = f"""
            SELECT m.batch_key, j.scheduled_for, pr.slug AS prompt, mo.slug AS model,
                   j.run_index, m.rank, m.display_name AS entity, m.name AS entity_key,
                   m.entity_type, b.slug AS brand, b.own AS own_brand, m.sentiment,
                   m.snippet, CAST(m.job_id AS text) AS job_id, m.id AS mention_id
            FROM entity_mentions m
            JOIN prompt_jobs j ON j.id = m.job_id
            JOIN prompts pr ON pr.id = m.prompt_id
            JOIN models mo ON mo.id = m.model_id
            LEFT JOIN brand_aliases a ON a.alias = m.name
            LEFT JOIN brands b ON b.id = a.brand_id
            {"WHERE " + " AND ".join(where) if where else ""}
            ORDER BY j.scheduled_for, m.id
            LIMIT :limit
        """
    stmt = text(sql)
    with engine.connect() as conn:
        check(conn, f)
        rows = [dict(r._mapping) for r in conn.execute(stmt, params)]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        key = last["job_id"] if table == "answers" else last["mention_id"]
        next_cursor = _encode([table, last["scheduled_for"].isoformat(), key])
    columns = ANSWER_COLUMNS if table == "answers" else MENTION_COLUMNS
    return Page(rows=[{c: _plain(r[c]) for c in columns} for r in rows], next_cursor=next_cursor)


def all_rows(
    engine: Engine, table: Table, f: ExportFilter, page_size: int = 2000
) -> Iterator[dict[str, Any]]:
    cursor: str | None = None
    while True:
        p = page(engine, table, f, limit=page_size, cursor=cursor)
        yield from p.rows
        if p.next_cursor is None:
            return
        cursor = p.next_cursor


def columns_of(table: Table) -> tuple[str, ...]:
    return ANSWER_COLUMNS if table == "answers" else MENTION_COLUMNS


def to_csv(rows: list[dict[str, Any]], table: Table, header: bool = True) -> str:
    out = io.StringIO()
    write_csv(rows, table, out, header)
    return out.getvalue()


def write_csv(rows: Any, table: Table, out: IO[str], header: bool = True) -> int:
    writer = csv.DictWriter(out, fieldnames=columns_of(table), lineterminator="\r\n")
    if header:
        writer.writeheader()
    n = 0
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
        n += 1
    return n


def to_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_jsonl(rows: Any, out: IO[str]) -> int:
    n = 0
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    return n


def write_parquet(rows: Any, table: Table, path: Path) -> int:
    """Parquet through pyarrow, which only the CLI's environment has."""
    try:
        import pyarrow as pa  # type: ignore[import-not-found,unused-ignore]
        import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise InputError(
            "--format parquet needs pyarrow, which the CLI's environment installs "
            "(pip install pyarrow); csv and jsonl need nothing"
        ) from None
    data = list(rows)
    columns = {c: [r[c] for r in data] for c in columns_of(table)}
    pq.write_table(pa.table(columns), path)
    return len(data)


def write(engine: Engine, table: Table, f: ExportFilter, fmt: Format, out_path: Path | None) -> int:
    """The whole export to a file (or stdout for csv/jsonl); returns the row count."""
    import sys

    # Checked before anything is written: a bad filter leaves no header and no truncated file.
    with engine.connect() as conn:
        check(conn, f)
    rows = all_rows(engine, table, f)
    if fmt == "parquet":
        if out_path is None:
            raise InputError("--format parquet needs --output FILE")
        return write_parquet(rows, table, out_path)
    if out_path is None:
        return write_csv(rows, table, sys.stdout) if fmt == "csv" else write_jsonl(rows, sys.stdout)
    with out_path.open("w", newline="", encoding="utf-8") as out:
        return write_csv(rows, table, out) if fmt == "csv" else write_jsonl(rows, out)
