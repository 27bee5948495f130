"""The job state machine for a whole SQS batch, a statement per step instead of per job.

- `claim_quick`: one statement, its own transaction: every job of the batch locked in id order
  (two batches sharing ids never wait on each other in opposite orders), with what a claim
  needs; then the limits rows of the claimable jobs' models and groups, locked in key order
  (after the jobs, as every writer of both locks them), and, when all the jobs need is a
  free slot and the rows have them (limits.QUICK_TAKE_SQL), the slots taken and the jobs
  claimed. Otherwise nothing is taken or claimed and the batch takes the locked way:
- `lock_batch`: the jobs locked, as above, in a transaction; admission (limits.decide_many)
  locks the limits rows and decides in it; `claim_batch` marks the admitted ones
  processing, each guarded as jobs.claim_job is, and writes what admission took, one
  statement (its COMMIT in the same packet).
- `complete_batch`: responses, mentions and completions in one statement, each job guarded
  by its claimed attempt: a job a newer attempt owns gets nothing written; usually the
  calls' release too, the statement its own transaction (`autocommit`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from promptrun import limits
from promptrun.db import pg8000_fast
from promptrun.db.pool import Connection as PoolConnection
from promptrun.db.pool import Pool
from promptrun.db.sql import Conn, Database, text
from promptrun.jobs import (
    CLAIM_SET,
    CLAIMABLE,
    CONTEXT_COLUMNS,
    CONTEXT_JOINS,
    ClaimedJob,
    Usage,
    claimed_from_row,
)
from promptrun.model_call import INSERT_MENTIONS_SQL, INSERT_RESPONSES_SQL, Answer

_LOCKED_CTE = f"""
    locked AS MATERIALIZED (
        SELECT j.id, CAST(j.ctid AS text) AS tid, j.status, j.attempt_count, j.max_attempts,
               j.run_index, j.batch_key,
               j.prompt_id, j.model_id, j.prompt_version,
               GREATEST(0, EXTRACT(EPOCH FROM (j.next_attempt_at - now())))::float8 AS wait,
               GREATEST(0, EXTRACT(EPOCH FROM (j.lease_expires_at - now())))::float8 AS lease_left,
               {CLAIMABLE} AS claimable
        FROM prompt_jobs j WHERE j.id = ANY(CAST(string_to_array(:ids, ',') AS uuid[]))
        ORDER BY j.id FOR UPDATE
    )"""
# What a Locked row is made of: the job as claiming it would make it (attempt counted).
_LOCKED_COLUMNS = f"""
    l.id, l.tid, l.status, l.wait, l.lease_left, l.claimable,
    l.attempt_count + 1 AS attempt_count, l.max_attempts, l.run_index, l.batch_key,
    {CONTEXT_COLUMNS.format(r="l")}"""
_LOCK = text(
    f"WITH {_LOCKED_CTE} SELECT {_LOCKED_COLUMNS} FROM locked l {CONTEXT_JOINS.format(r='l')}"
)

# The quick claim. `ctx`: each locked job with its context and the keys of its model's and
# group's limits rows (read, not locked: QUICK_TAKE_SQL locks them and checks the group is
# still the one read here). A job runs when it is claimable and its version is stored; only
# an enabled model's jobs need a slot (a disabled model's are claimed and ended unrun).
_CLAIM_QUICK = text(
    f"""
    WITH {_LOCKED_CTE}, ctx AS MATERIALIZED (
        SELECT {_LOCKED_COLUMNS},
               l.claimable AND v.id IS NOT NULL AS runs,
               fm.key AS model_key, fm.group_key AS model_group, fg.key AS group_key
        FROM locked l {CONTEXT_JOINS.format(r="l")}
        LEFT JOIN flow_limits fm ON fm.key = 'model:' || m.slug
        LEFT JOIN flow_limits fg ON fg.key = fm.group_key
    ), quick_want AS (
        SELECT w.key, CAST(count(*) AS int) AS calls, min(w.group_key) AS group_key
        FROM (SELECT model_key AS key, model_group AS group_key FROM ctx
              WHERE runs AND model_enabled AND model_key IS NOT NULL
              UNION ALL
              SELECT group_key, NULL FROM ctx
              WHERE runs AND model_enabled AND group_key IS NOT NULL) w
        GROUP BY w.key
    ), {limits.QUICK_TAKE_SQL}, claimed AS (
        -- by primary key: no status predicate the planner could take its status index for
        UPDATE prompt_jobs j SET {CLAIM_SET}
        WHERE j.id = ANY(CAST(string_to_array(:ids, ',') AS uuid[]))
          AND j.id IN (SELECT id FROM ctx WHERE runs) AND (SELECT ok FROM quick_ok)
        RETURNING j.id
    )
    SELECT c.*, c.id IN (SELECT id FROM claimed) AS claimed, (SELECT ok FROM quick_ok) AS ok
    FROM ctx c
    """
)

# The rows by their tuple ids (`lock_batch` locked them in this transaction, so they are
# still where it found them): a TID scan of exactly these rows, never the status index,
# which stale statistics (a fresh batch all `queued`) can make the planner prefer.
_CLAIM_SQL = f"""
    UPDATE prompt_jobs j SET {CLAIM_SET}
    WHERE j.ctid = ANY(CAST(string_to_array(:tids, ' ') AS tid[]))
      AND j.id = ANY(CAST(string_to_array(:ids, ',') AS uuid[])) AND {CLAIMABLE}
    RETURNING j.id
"""
_CLAIM = text(_CLAIM_SQL)
# The admission's rows written by the same statement (locked already, by limits.decide_many).
_TAKE_AND_CLAIM = text(f"WITH take AS ({limits.TAKE_SQL}) {_CLAIM_SQL}")


def _ends_transaction(conn: Conn, last: bool) -> None:
    """The next statement is the transaction's last: its COMMIT rides with it (pg8000_fast)."""
    if not last:
        return
    if isinstance(conn, PoolConnection):
        conn.commit_with_next()
        return
    dbapi = conn.connection.dbapi_connection  # type: ignore[attr-defined]  # SQLAlchemy's
    if isinstance(dbapi, pg8000_fast.Connection):
        dbapi.commit_with_next()


def _id_list(job_ids: Sequence[uuid.UUID | str]) -> str:
    """Ids as one comma-separated text (string_to_array): pg8000 escapes an array's
    elements character by character in Python."""
    return ",".join(str(i) for i in job_ids)


@dataclass(frozen=True)
class Locked:
    """One job of the batch as it was found, locked (`lock_batch`: until the transaction ends)."""

    id: uuid.UUID
    tid: str  # where the row is while it stays locked (its ctid)
    status: str
    seconds_until_due: float
    seconds_until_lease_ends: float
    claimable: bool
    version_missing: str | None  # the prompt version the job records, when it is not stored
    # The job as claiming it would make it (attempt counted); None when its version is missing.
    job: ClaimedJob | None

    @classmethod
    def of(cls, row: Any) -> Locked:
        missing = row["version_id"] is None
        return cls(
            id=row["id"],
            tid=row["tid"],
            status=row["status"],
            seconds_until_due=float(row["wait"] or 0),
            seconds_until_lease_ends=float(row["lease_left"] or 0),
            claimable=row["claimable"],
            version_missing=str(row["prompt_version"]) if missing else None,
            job=None if missing else claimed_from_row(row),
        )


def lock_batch(conn: Conn, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Locked]:
    """The jobs among `job_ids` that exist, locked; ids not returned have no job."""
    return {
        row["id"]: Locked.of(row)
        for row in conn.execute(_LOCK, {"ids": _id_list(job_ids)}).mappings()
    }


@dataclass(frozen=True)
class QuickClaim:
    """What `claim_quick` did: every job found (as `lock_batch` finds them), the ones it
    claimed, and the limits rows each claimed call holds a slot of (its release's keys)."""

    jobs: dict[uuid.UUID, Locked]
    claimed: set[uuid.UUID]
    keys: dict[uuid.UUID, tuple[str, ...]]


def claim_quick(conn: Conn, job_ids: Sequence[uuid.UUID], lease_seconds: int) -> QuickClaim | None:
    """Claim every job of `job_ids` that may run, in one statement, when all they need is a
    free slot and their limits rows have them (the statement is its own transaction: run it
    on an `autocommit` connection). None: some row asks for more or has too few slots, and
    nothing was claimed or taken; admit the batch the locked way (lock_batch, limits)."""
    jobs: dict[uuid.UUID, Locked] = {}
    claimed: set[uuid.UUID] = set()
    keys: dict[uuid.UUID, tuple[str, ...]] = {}
    params = {"ids": _id_list(job_ids), "lease": lease_seconds}
    for row in conn.execute(_CLAIM_QUICK, params).mappings():
        if not row["ok"]:
            return None
        job = jobs[row["id"]] = Locked.of(row)
        if row["claimed"]:
            claimed.add(job.id)
            if row["model_enabled"]:
                keys[job.id] = tuple(k for k in (row["group_key"], row["model_key"]) if k)
    return QuickClaim(jobs, claimed, keys)


def claim_batch(
    conn: Conn,
    jobs: Sequence[Locked],
    lease_seconds: int,
    taken: limits.Taken | None = None,
    *,
    last: bool = False,
) -> set[uuid.UUID]:
    """Claim jobs `lock_batch` found claimable in this transaction, and write what their
    admission took (`taken`), one statement; the ids claimed. `last`: nothing follows in the
    transaction, so its COMMIT goes out with the statement (committed when this returns)."""
    if not jobs:
        if taken is not None:
            _ends_transaction(conn, last)
            limits.write(conn, taken)
        return set()
    params: dict[str, Any] = {
        "ids": _id_list([j.id for j in jobs]),
        "tids": " ".join(j.tid for j in jobs),
        "lease": lease_seconds,
    }
    _ends_transaction(conn, last)
    if taken is not None and taken.params:
        return {r[0] for r in conn.execute(_TAKE_AND_CLAIM, {**params, **taken.params})}
    return {r[0] for r in conn.execute(_CLAIM, params)}


# The rows travel as three JSON documents (one json.dumps each): pg8000 would escape every
# element of a text array in Python, about 1 ms per job.
_COMPLETE_CTES = f"""
    WITH v AS (
        SELECT * FROM json_to_recordset(CAST(:jobs AS json))
            AS t(id uuid, attempt int, inp int, out int, cost numeric)
    ), locked AS MATERIALIZED (
        -- by primary key, in id order: two finishing batches never wait on each other in turn
        SELECT j.id, j.status, j.attempt_count FROM prompt_jobs j
        WHERE j.id = ANY(CAST(string_to_array(:ids, ',') AS uuid[]))
        ORDER BY j.id FOR UPDATE
    ), owned AS (
        -- the guard read from the locked rows: no status predicate on prompt_jobs itself
        -- that could lead the planner to its status index (stale statistics make it look
        -- selective) instead of the primary key
        SELECT v.* FROM v JOIN locked l ON l.id = v.id
        WHERE l.status = 'processing' AND l.attempt_count = v.attempt
    ), done AS (
        UPDATE prompt_jobs j SET
            status = 'succeeded', finished_at = now(), updated_at = now(),
            lease_expires_at = NULL, error_kind = NULL, error_message = NULL,
            duration_ms = (EXTRACT(EPOCH FROM (now() - j.started_at)) * 1000)::int,
            -- usage adds up over attempts: a failed attempt's billed tokens are still spent
            input_tokens = COALESCE(j.input_tokens, 0) + v.inp,
            output_tokens = COALESCE(j.output_tokens, 0) + v.out,
            cost_usd = COALESCE(j.cost_usd, 0) + v.cost
        FROM owned v
        WHERE j.id = ANY(CAST(string_to_array(:ids, ',') AS uuid[])) AND j.id = v.id
        RETURNING j.id
    ), responses_in AS (
        {INSERT_RESPONSES_SQL.format(only="WHERE r.job_id IN (SELECT id FROM done) RETURNING 1")}
    ), mentions_in AS (
        {INSERT_MENTIONS_SQL.format(only="WHERE m.job_id IN (SELECT id FROM done) RETURNING 1")}
    )
"""
_COMPLETE = text(f"{_COMPLETE_CTES} SELECT id FROM done")
# The calls' release in the same statement (limits.RELEASE_DONE_SQL): run on its own, outside
# a transaction block, the statement is the whole transaction (one round trip, no COMMIT).
# The release reads the completed ids once the answers and mentions are in (`stored`): the
# limits rows, which every batch of the same models updates, are then locked for the rest of
# the statement only (its triggers and commit), not while it inserts. Without that dependency
# PostgreSQL runs the last data-modifying CTE first.
_COMPLETE_AND_RELEASE = text(
    f"""{_COMPLETE_CTES}, stored AS MATERIALIZED (
        SELECT id FROM done
        WHERE (SELECT count(*) FROM responses_in) >= 0 AND (SELECT count(*) FROM mentions_in) >= 0
    ), {limits.RELEASE_DONE_SQL.format(done="stored")} SELECT id FROM done"""
)


@contextmanager
def autocommit(engine: Database) -> Iterator[Conn]:
    """A pooled connection on which each statement is its own transaction: no BEGIN and no
    COMMIT to wait for. For one statement that must be atomic on its own (a statement is)."""
    if isinstance(engine, Pool):  # its plain connections are that already
        with engine.connect() as conn:
            yield conn
        return
    with engine.connect() as conn:  # SQLAlchemy's: autobegin turned off on the driver's
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        dbapi.autocommit = True
        try:
            yield conn
        finally:  # back to the pool as it came out of it
            dbapi.autocommit = False


@dataclass(frozen=True)
class Finished:
    """A job whose attempt answered: what `complete_batch` writes for it."""

    job: ClaimedJob
    answer: Answer
    spent: Usage


def complete_batch(
    conn: Conn, finished: Sequence[Finished], release: dict[str, Any] | None = None
) -> set[uuid.UUID]:
    """Mark succeeded and store answers and mentions, one statement; the ids this worker
    still owned (the others' attempts are stale and nothing of theirs is written).
    `release` (limits.release_done_params): the owned jobs' calls released by it too."""
    if not finished:
        return set()
    ids = [str(f.job.id) for f in finished]
    jobs = [
        {
            "id": job_id,
            "attempt": f.job.attempt,
            "inp": f.spent.input_tokens,
            "out": f.spent.output_tokens,
            "cost": str(f.spent.cost_usd),  # exact: numeric from its decimal text
        }
        for job_id, f in zip(ids, finished, strict=True)
    ]
    responses = [f.answer.response_row(f.job) for f in finished]
    mentions = [m for f in finished for m in f.answer.mention_rows(f.job)]
    params: dict[str, Any] = {
        "ids": _id_list(ids),
        "jobs": json.dumps(jobs),
        "responses": json.dumps(responses, default=str),
        "mentions": json.dumps(mentions, default=str),
    }
    if release is not None:
        return {r[0] for r in conn.execute(_COMPLETE_AND_RELEASE, {**params, **release})}
    return {r[0] for r in conn.execute(_COMPLETE, params)}
