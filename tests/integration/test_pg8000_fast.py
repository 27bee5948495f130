"""The one-round-trip pg8000 connection behaves as pg8000 does: results, errors, transactions,
and a connection that stays usable after an error; in fewer round trips."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError

from promptrun.db import pg8000_fast
from promptrun.db.engine import dispose_engines, get_engine
from promptrun.settings import Settings


@pytest.fixture
def fast(db_url: str) -> Iterator[Engine]:
    engine = get_engine(Settings(database_url=db_url))
    yield engine
    dispose_engines()


def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the packets sent that wait for an answer: one per round trip."""
    counter = [0]
    original = pg8000_fast._flush

    def counted(sock: object) -> None:
        counter[0] += 1
        original(sock)

    monkeypatch.setattr(pg8000_fast, "_flush", counted)
    return counter


def test_results_and_transactions(fast: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    with fast.begin() as conn:
        conn.execute(text("CREATE TEMP TABLE t (id int PRIMARY KEY, v text)"))
    trips = round_trips(monkeypatch)
    with fast.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, pg8000_fast.Connection)
        trips[0] = 0
        conn.execute(text("INSERT INTO t VALUES (:i, :v)"), {"i": 1, "v": "one"})
        assert conn.execute(text("SELECT v FROM t WHERE id = :i"), {"i": 1}).scalar() == "one"
        conn.commit()
        # BEGIN rides with the INSERT, then the SELECT, then COMMIT: three, not nine.
        assert trips[0] == 3
        conn.execute(text("INSERT INTO t VALUES (:i, :v)"), {"i": 2, "v": "two"})
        conn.rollback()
        rows = conn.execute(text("SELECT id, v FROM t ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [(1, "one")]


def test_errors_leave_the_connection_usable(fast: Engine) -> None:
    with fast.connect() as conn:
        conn.execute(text("CREATE TEMP TABLE u (id uuid PRIMARY KEY)"))
        conn.commit()
        with pytest.raises(ProgrammingError, match="syntax"):
            conn.execute(text("SELEC :x"), {"x": 1})  # fails at Parse
        conn.rollback()
        with pytest.raises(ProgrammingError, match="uuid"):  # fails at Bind (pg8000 class)
            conn.execute(text("SELECT CAST(:x AS uuid)"), {"x": "nope"})
        conn.rollback()
        key = uuid.uuid4()
        conn.execute(text("INSERT INTO u VALUES (:k)"), {"k": key})
        with pytest.raises(IntegrityError):  # fails at Execute
            conn.execute(text("INSERT INTO u VALUES (:k)"), {"k": key})
        conn.rollback()
        assert conn.execute(text("SELECT count(*) FROM u")).scalar() == 0
        assert (
            conn.execute(
                text("SELECT CAST(:a AS int) + CAST(:b AS int)"), {"a": 2, "b": 3}
            ).scalar()
            == 5
        )


def test_paramstyle_conversion_is_remembered_and_right() -> None:
    sql = "SELECT '%%s', $$ %%s $$, %s -- %s\n, %s"
    first = pg8000_fast.cached_convert_paramstyle("format", sql, (1, 2))
    again = pg8000_fast.cached_convert_paramstyle("format", sql, (3, 4))
    assert first == (pg8000_fast.convert_paramstyle("format", sql, (1, 2))[0], (1, 2))
    assert again[1] == (3, 4) and again[0] == first[0]
    assert pg8000_fast.cached_convert_paramstyle("named", "SELECT :a, :b", {"a": 1, "b": 2}) == (
        "SELECT $1, $2",
        (1, 2),
    )


def test_an_empty_transaction_leaves_nothing_for_an_autocommit_statement(fast: Engine) -> None:
    with fast.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, pg8000_fast.Connection)
        raw.execute_simple("begin transaction")  # held back, as for a statement that then failed
        assert raw._begin_pending
        raw.rollback()
        assert not raw._begin_pending
    with fast.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        auto = conn.execution_options(isolation_level="AUTOCOMMIT")
        # VACUUM refuses to run inside a transaction block: none was opened behind its back.
        auto.execute(text("VACUUM pg_class"))


def test_large_statements_are_not_held_back_by_nagle(fast: Engine) -> None:
    """A statement larger than the socket buffer goes out in several writes: with Nagle's
    algorithm on, the last would wait for the server's delayed ACK."""
    import socket

    with fast.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, pg8000_fast.Connection)
        assert raw._usock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        big = "x" * 100_000
        assert conn.execute(text("SELECT length(:v)"), {"v": big}).scalar() == 100_000


def test_a_commit_rides_with_the_transactions_last_statement(
    fast: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fast.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS ride (id int PRIMARY KEY)"))
    try:
        trips = round_trips(monkeypatch)
        with fast.begin() as conn:
            raw = conn.connection.dbapi_connection
            assert isinstance(raw, pg8000_fast.Connection)
            trips[0] = 0
            conn.execute(text("INSERT INTO ride VALUES (1)"))
            raw.commit_with_next()
            inserted = conn.execute(text("INSERT INTO ride VALUES (:i) RETURNING id"), {"i": 2})
            assert inserted.scalar() == 2
        # BEGIN with the first insert; the second and its COMMIT in one packet; no more.
        assert trips[0] == 2
        with fast.connect() as other:
            assert other.execute(text("SELECT count(*) FROM ride")).scalar() == 2
        # A failing last statement: its COMMIT only rolls back, the connection stays usable.
        with pytest.raises(DBAPIError), fast.begin() as conn:
            raw = conn.connection.dbapi_connection
            assert isinstance(raw, pg8000_fast.Connection)
            conn.execute(text("INSERT INTO ride VALUES (3)"))
            raw.commit_with_next()
            conn.execute(text("INSERT INTO ride VALUES (1)"))  # a duplicate key (simple query)
        with fast.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM ride")).scalar() == 2
        # A marked transaction that ended before its statement leaves no COMMIT behind.
        with fast.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert isinstance(raw, pg8000_fast.Connection)
            with pytest.raises(RuntimeError), conn.begin():
                raw.commit_with_next()
                raise RuntimeError("before the statement")
            conn.execute(text("INSERT INTO ride VALUES (4)"))
            conn.rollback()
            assert conn.execute(text("SELECT count(*) FROM ride")).scalar() == 2
    finally:
        with fast.begin() as conn:
            conn.execute(text("DROP TABLE ride"))
