"""Prepared statements on the processor's pool (pg8000_fast.execute_prepared, pool `prepare`),
on a real PostgreSQL: each text parsed once per connection under a name, the same results as
unnamed, nothing lost to a failed first run, a cap, a stale plan replaced, and none at all
when turned off (behind RDS Proxy)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from pg8000.exceptions import DatabaseError
from sqlalchemy import Engine

from promptrun.db import pg8000_fast
from promptrun.db.pool import Connection, Pool, get_pool, pool_for_url
from promptrun.db.sql import text
from promptrun.settings import Settings

ROWS = text(
    """SELECT n, CAST(:label AS text) || n::text AS label, CAST(:price AS numeric) AS price,
              CAST(:id AS uuid) AS id
       FROM generate_series(1, :count) AS n ORDER BY n"""
)
PREPARED = text("SELECT name, statement FROM pg_prepared_statements ORDER BY name")


@pytest.fixture
def prepared_pool(db_url: str) -> Iterator[Pool]:
    made = pool_for_url(db_url, size=1, prepare=True)
    yield made
    made.dispose()


def _names(conn: Connection) -> list[tuple[str, str]]:
    """(statement, name) of every statement this session prepared (a text twice: listed twice)."""
    return [(r.statement, r.name) for r in conn.execute(PREPARED)]


def _three_runs(conn: Connection, ids: list[uuid.UUID]) -> list[list[Any]]:
    """ROWS three times, with other values each time."""
    return [
        conn.execute(
            ROWS, {"label": f"x{i}", "price": Decimal("1.5"), "id": str(ids[i]), "count": i + 1}
        ).all()
        for i in range(3)
    ]


def test_a_statement_is_parsed_once_per_connection_and_answers_as_unnamed(
    prepared_pool: Pool, db_url: str
) -> None:
    plain = pool_for_url(db_url, size=1, prepare=False)
    ids = [uuid.uuid4() for _ in range(3)]
    try:
        with prepared_pool.connect() as conn:
            got = _three_runs(conn, ids)
            names = _names(conn)
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with plain.connect() as conn:
            want = _three_runs(conn, ids)
            assert _names(conn) == []  # nothing prepared when turned off
        assert [[tuple(r) for r in rows] for rows in got] == [
            [tuple(r) for r in rows] for rows in want
        ]
        assert got[2][2].label == "x23" and got[2][2].id == ids[2]  # converted as unnamed
        # one name for ROWS however often it ran, and one for the listing itself
        assert sorted(s for s, _ in names) == sorted([ROWS.positional, PREPARED.positional])
        with prepared_pool.connect() as conn:  # the same connection, its statements kept
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == pid
            assert conn.execute(ROWS, {"label": "y", "price": 2, "id": str(ids[0]),
                                       "count": 1}).one().label == "y1"  # fmt: skip
            assert dict(_names(conn))[ROWS.positional] == dict(names)[ROWS.positional]
    finally:
        plain.dispose()


def test_a_first_run_that_fails_after_its_parse_does_not_block_the_next(
    prepared_pool: Pool,
) -> None:
    with prepared_pool.connect() as conn:
        # parsed and named, then the value fails at execution: not remembered as prepared
        with pytest.raises(DatabaseError, match="invalid input syntax for type uuid"):
            conn.execute(ROWS, {"label": "x", "price": 1, "id": "not-a-uuid", "count": 1})
        # prepared again under a new name (reusing the first would say "already exists")
        row = conn.execute(ROWS, {"label": "x", "price": 1, "id": str(uuid.uuid4()), "count": 1})
        assert row.one().label == "x1"
        assert conn.execute(ROWS, {"label": "z", "price": 1, "id": str(uuid.uuid4()),
                                   "count": 2}).all()[1].label == "z2"  # fmt: skip
    assert prepared_pool.open_connections == 1  # a server's error: the connection kept


def test_prepared_statements_run_in_transactions_and_survive_a_rollback(
    prepared_pool: Pool, engine: Engine
) -> None:
    insert = text("INSERT INTO prepared_t VALUES (:n)")
    with prepared_pool.begin() as conn:
        conn.execute(text("CREATE TABLE prepared_t (n int PRIMARY KEY)"))
        conn.execute(insert, {"n": 1})
    with pytest.raises(DatabaseError, match="duplicate key"), prepared_pool.begin() as conn:
        conn.execute(insert, {"n": 2})
        conn.execute(insert, {"n": 1})
    with prepared_pool.begin() as conn:  # the name outlived the rollback
        conn.commit_with_next()
        conn.execute(insert, {"n": 3})
    with engine.connect() as conn:
        assert [r[0] for r in conn.execute(text("SELECT n FROM prepared_t ORDER BY n"))] == [1, 3]


def test_past_the_cap_new_texts_run_unnamed(
    prepared_pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg8000_fast, "MAX_PREPARED", 3)
    with prepared_pool.connect() as conn:
        answers = [conn.execute(text(f"SELECT CAST(:v AS int) + {i}"), {"v": 1}).scalar()
                   for i in range(6)]  # fmt: skip
        named = _names(conn)
    assert answers == [1, 2, 3, 4, 5, 6]
    assert len(named) == 3  # the first three texts; PREPARED itself ran unnamed


def test_a_statement_a_migration_made_stale_costs_its_connection_once(
    prepared_pool: Pool, engine: Engine
) -> None:
    every = text("SELECT * FROM prepared_s WHERE n >= :low")
    with prepared_pool.begin() as conn:
        conn.execute(text("CREATE TABLE prepared_s (n int)"))
        conn.execute(text("INSERT INTO prepared_s VALUES (1)"))
    with prepared_pool.connect() as conn:
        assert conn.execute(every, {"low": 0}).all() == [(1,)]
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE prepared_s ADD COLUMN m int DEFAULT 7"))
    stale = pytest.raises(DatabaseError, match="cached plan must not change result type")
    with stale, prepared_pool.connect() as conn:
        conn.execute(every, {"low": 0})
    assert prepared_pool.open_connections == 0  # discarded, not handed out again
    with prepared_pool.connect() as conn:
        assert conn.execute(every, {"low": 0}).all() == [(1, 7)]
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != first


def test_the_processor_pool_follows_the_setting(db_url: str) -> None:
    on = get_pool(Settings(database_url=db_url))
    assert on.prepare is True
    on.dispose()
    off_url = f"{db_url}&application_name=unprepared"
    off = get_pool(Settings(database_url=off_url, prepared_statements=False))
    try:
        with off.connect() as conn:
            conn.execute(ROWS, {"label": "x", "price": 1, "id": str(uuid.uuid4()), "count": 1})
            assert _names(conn) == []
    finally:
        off.dispose()
