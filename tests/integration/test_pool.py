"""The processor's own pool (promptrun.db.pool) and its text statements (promptrun.db.sql),
on a real PostgreSQL: same results as SQLAlchemy's, transactions, at most `size` connections,
broken connections dropped."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import Engine

from promptrun.db.pool import Pool, PoolTimeout, pool_for_url
from promptrun.db.sql import StatementError, text

ROWS = text(
    """SELECT n, CAST(:label AS text) || n::text AS label, CAST(:price AS numeric) AS price,
              :label AS again
       FROM generate_series(1, :count) AS n ORDER BY n"""
)


@pytest.fixture
def tagged(db_url: str) -> Iterator[tuple[Pool, str]]:
    """A pool whose connections carry a name of their own (pg_stat_activity counts them)."""
    name = f"pool-{uuid.uuid4().hex[:8]}"
    made = pool_for_url(f"{db_url}&application_name={name}", size=2)
    made.timeout = 0.5
    yield made, name
    made.dispose()


def connections(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                {"n": name},
            ).scalar_one()
        )


def test_a_statement_gives_the_same_results_on_the_pool_and_on_sqlalchemy(
    pool: Pool, engine: Engine
) -> None:
    params = {"label": "x", "price": Decimal("1.50"), "count": 3}
    with pool.connect() as conn:
        mine = conn.execute(ROWS, params)
        rows, first = mine.all(), conn.execute(ROWS, params).first()
        maps = conn.execute(ROWS, params).mappings().all()
        one = conn.execute(text("SELECT 2::int AS two"), {}).scalar_one()
    with engine.connect() as conn:
        theirs = conn.execute(ROWS, params)
        assert [tuple(r) for r in rows] == [tuple(r) for r in theirs.all()]
        assert maps == [dict(m) for m in conn.execute(ROWS, params).mappings()]
    assert rows[1].label == "x2" and rows[1].price == Decimal("1.50") and rows[1].again == "x"
    assert first is not None and first.n == 1 and first._mapping["label"] == "x1"
    assert one == 2
    assert ROWS.names == ("label", "price", "count")  # a name used twice is one parameter


def test_a_missing_parameter_or_a_bare_string_is_refused_and_the_connection_stays_usable(
    pool: Pool,
) -> None:
    with pool.connect() as conn:
        with pytest.raises(StatementError, match=":count"):
            conn.execute(ROWS, {"label": "x", "price": 1})
        with pytest.raises(TypeError, match=r"text\(\), not <class 'str'>"):
            conn.execute("SELECT 1")  # type: ignore[arg-type]
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_a_transaction_commits_at_the_end_and_rolls_back_on_any_error(
    pool: Pool, engine: Engine
) -> None:
    with pool.begin() as conn:
        conn.execute(text("CREATE TABLE t (n int PRIMARY KEY)"))
        conn.execute(text("INSERT INTO t VALUES (:n)"), [{"n": 1}, {"n": 2}])
    with pytest.raises(RuntimeError), pool.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (3)"))
        raise RuntimeError("the caller's own error")
    with pytest.raises(Exception, match="duplicate key"), pool.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (4)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    with pool.begin() as conn:
        inner = conn.begin_nested()
        conn.execute(text("INSERT INTO t VALUES (5)"))
        inner.rollback()
        conn.execute(text("INSERT INTO t VALUES (6)"))
    with engine.connect() as conn:
        assert list(conn.execute(text("SELECT n FROM t ORDER BY n")).scalars()) == [1, 2, 6]
    assert pool.open_connections == 1  # one connection served all of them


def test_without_a_transaction_each_statement_stands_alone(pool: Pool, engine: Engine) -> None:
    with pool.begin() as conn:
        conn.execute(text("CREATE TABLE t (n int PRIMARY KEY)"))
    with pytest.raises(Exception, match="duplicate key"), pool.connect() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 1


def test_at_most_two_connections_and_a_clear_error_when_none_comes_free(
    tagged: tuple[Pool, str], engine: Engine
) -> None:
    pool, name = tagged
    held, release = threading.Barrier(3), threading.Event()

    def hold() -> None:
        with pool.connect() as conn:
            conn.execute(text("SELECT 1"))
            held.wait(5)
            release.wait(5)

    workers = [threading.Thread(target=hold) for _ in range(2)]
    for w in workers:
        w.start()
    held.wait(5)
    try:
        assert connections(engine, name) == 2
        timeout = pytest.raises(PoolTimeout, match=r"no database connection came free in 0.5 s")
        with timeout, pool.connect():
            pass
    finally:
        release.set()
        for w in workers:
            w.join()
    with pool.connect() as conn:  # freed: taken again, no third connection opened
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert pool.open_connections == 2 and connections(engine, name) == 2
    pool.dispose()
    assert pool.open_connections == 0


def test_a_connection_the_server_dropped_is_replaced(
    tagged: tuple[Pool, str], engine: Engine
) -> None:
    pool, _ = tagged
    with pool.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    with engine.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": first})
        other.commit()
    with pytest.raises(Exception), pool.connect() as conn:  # noqa: B017 (the driver's own)
        conn.execute(text("SELECT 1"))
    with pool.connect() as conn:
        second = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    assert second != first and pool.open_connections == 1


def test_old_connections_are_retired_at_checkout(pool: Pool) -> None:
    with pool.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    pool.recycle = 0
    with pool.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != first
    assert pool.open_connections == 1
