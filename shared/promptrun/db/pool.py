"""The processor's connections: at most two pg8000 connections per instance, no SQLAlchemy.

Every statement the processor runs is text (promptrun.db.sql), so it needs only a pool and
transactions. SQLAlchemy's engine would add about 190 ms of imports to every cold start and
some tens of microseconds to every statement; the status API, the operators and the CLI keep it.

- `begin()`: a transaction, committed when the block ends, rolled back on any error.
- `connect()`: each statement its own transaction (no BEGIN, no COMMIT to wait for).
- A connection that failed for any reason but an error the server reported (a socket error, a
  value the driver could not encode halfway through a message), or with a server error that
  ended the session, is discarded, never reused: the same rule as the engine's, and cheaper
  than a ping on every checkout.
- Connections older than `recycle` seconds are closed at checkout, before proxies and NATs drop
  them; a checkout waits up to `timeout` seconds for a free connection, then fails.
- `prepare` (Settings.prepared_statements): each statement text is prepared once per
  connection under a name (pg8000_fast.execute_prepared); off behind a proxy that multiplexes
  transactions, where named statements would pin (RDS Proxy) or be lost (PgBouncer).
  A connection whose prepared statement a migration made stale is discarded.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from promptrun.db import connect, pg8000_fast
from promptrun.db.pg8000_fast import STALE_PLAN
from promptrun.db.sql import Result, Sql
from promptrun.errors import PromptrunError
from promptrun.settings import Settings

# A processor instance needs no more: its records share them (each holds one only for its
# short statements, never across a model call). Connections = 2 x ProcessorMaxConcurrency.
MAX_CONNECTIONS = 2


class PoolTimeout(PromptrunError):
    """No connection came free in time."""


# SQLSTATEs after which the server has closed the session: connection exceptions, and an
# administrator's or a crash's shutdown (pg_terminate_backend, a failover).
_SESSION_ENDED = ("08", "57P01", "57P02", "57P03")


def _sqlstate(exc: BaseException) -> str:
    args: tuple[object, ...] = tuple(getattr(exc, "args", ()))
    return str(args[0].get("C", "")) if args and isinstance(args[0], dict) else ""


def server_reported(exc: BaseException) -> bool:
    """pg8000 raises the server's own errors with the fields PostgreSQL sent (C = SQLSTATE);
    after those the connection is in a known state, unless the error ended the session."""
    code = _sqlstate(exc)
    return bool(code) and not code.startswith(_SESSION_ENDED)


class Connection:
    """One checked-out connection: `execute` as SQLAlchemy's, on promptrun.db.sql statements."""

    __slots__ = ("_savepoints", "broken", "dbapi", "prepare")

    def __init__(self, dbapi: pg8000_fast.Connection, prepare: bool = False) -> None:
        self.dbapi = dbapi
        self.prepare = prepare
        self.broken = False
        self._savepoints = 0

    def execute(self, statement: Sql, parameters: Any = None, /) -> Result:
        if not isinstance(statement, Sql):  # as SQLAlchemy 2, no bare strings
            raise TypeError(f"execute() takes promptrun.db.sql.text(), not {type(statement)}")
        if isinstance(parameters, list | tuple):  # executemany: one statement per row
            result = Result((), None, 0)
            for one in parameters:
                result = self._run(statement, one)
            return result
        return self._run(statement, parameters)

    def _run(self, sql: Sql, parameters: dict[str, Any] | None) -> Result:
        values = sql.values(parameters)
        try:
            if self.prepare:
                context = self.dbapi.execute_prepared(sql.positional, values)
            else:
                context = self.dbapi.execute_unnamed(sql.positional, values)
        except Exception as exc:
            if not server_reported(exc) or (self.prepare and _sqlstate(exc) == STALE_PLAN):
                self.broken = True
            raise
        names = [c["name"] for c in context.columns] if context.columns else []
        return Result(names, context.rows, context.row_count)

    def begin_nested(self) -> Savepoint:
        self._savepoints += 1
        name = f"sp_{self._savepoints}"
        self._simple(f"SAVEPOINT {name}")
        return Savepoint(self, name)

    def commit_with_next(self) -> None:
        """The transaction's COMMIT goes out with its next statement (pg8000_fast)."""
        self.dbapi.commit_with_next()

    def _simple(self, statement: str) -> None:
        try:
            self.dbapi.execute_simple(statement)
        except Exception as exc:
            if not server_reported(exc):
                self.broken = True
            raise


class Savepoint:
    __slots__ = ("conn", "name")

    def __init__(self, conn: Connection, name: str) -> None:
        self.conn, self.name = conn, name

    def rollback(self) -> None:
        self.conn._simple(f"ROLLBACK TO SAVEPOINT {self.name}")

    def commit(self) -> None:
        self.conn._simple(f"RELEASE SAVEPOINT {self.name}")


class Pool:
    def __init__(
        self,
        opener: Callable[[], pg8000_fast.Connection],
        size: int = MAX_CONNECTIONS,
        recycle: float = 300,
        timeout: float = 30,
        prepare: bool = False,
    ) -> None:
        self._open_one = opener
        self.size, self.recycle, self.timeout = size, recycle, timeout
        self.prepare = prepare
        self._idle: list[tuple[float, pg8000_fast.Connection]] = []
        self._open = 0
        self._free = threading.Condition()

    @property
    def open_connections(self) -> int:
        return self._open

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self._checkout() as conn:
            conn._simple("begin transaction")  # pg8000_fast sends it with the first statement
            try:
                yield conn
            except BaseException:
                _rollback(conn)
                raise
            try:
                conn.dbapi.commit()
            except Exception as exc:
                if not server_reported(exc):
                    conn.broken = True
                _rollback(conn)
                raise

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """Each statement its own transaction."""
        with self._checkout() as conn:
            try:
                yield conn
            finally:
                _rollback(conn)  # a statement that opened a transaction leaves none behind

    def dispose(self) -> None:
        with self._free:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._free.notify_all()
        for _, dbapi in idle:
            _close(dbapi)

    @contextmanager
    def _checkout(self) -> Iterator[Connection]:
        created, dbapi = self._take()
        conn = Connection(dbapi, self.prepare)
        try:
            yield conn
        finally:
            self._give_back(created, conn)

    def _take(self) -> tuple[float, pg8000_fast.Connection]:
        deadline = time.monotonic() + self.timeout
        stale: list[pg8000_fast.Connection] = []
        try:
            with self._free:
                while True:
                    if self._idle:
                        created, dbapi = self._idle.pop()
                        if time.monotonic() - created < self.recycle:
                            return created, dbapi
                        stale.append(dbapi)
                        self._open -= 1
                        continue
                    if self._open < self.size:
                        self._open += 1
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise PoolTimeout(
                            f"no database connection came free in {self.timeout:g} s "
                            f"({self.size} in use)"
                        )
                    self._free.wait(left)
        finally:
            for dbapi in stale:
                _close(dbapi)
        try:
            return time.monotonic(), self._open_one()
        except BaseException:
            with self._free:
                self._open -= 1
                self._free.notify()
            raise

    def _give_back(self, created: float, conn: Connection) -> None:
        dbapi = conn.dbapi
        reusable = not conn.broken and not dbapi._in_transaction
        with self._free:
            if reusable:
                self._idle.append((created, dbapi))
            else:
                self._open -= 1
            self._free.notify()
        if not reusable:
            _close(dbapi)


def _rollback(conn: Connection) -> None:
    if conn.broken:
        return
    try:
        conn.dbapi.rollback()
    except Exception:
        conn.broken = True


def _close(dbapi: pg8000_fast.Connection) -> None:
    with contextlib.suppress(Exception):  # already gone: nothing to release
        dbapi.close()


_pools: dict[str, Pool] = {}
_lock = threading.Lock()


def pool_for_url(url: str, size: int = MAX_CONNECTIONS, prepare: bool = True) -> Pool:
    """A new pool for `url` with the TLS policy (tests and tools; the processor uses
    `get_pool`)."""
    kwargs = connect.Target.parse(url).connect_kwargs()
    return Pool(lambda: pg8000_fast.connect(**kwargs), size=size, prepare=prepare)


def get_pool(settings: Settings, size: int = MAX_CONNECTIONS) -> Pool:
    """One pool per database and process, reused across warm invocations."""
    where = connect.target(settings)
    key = where.key()
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            kwargs = where.connect_kwargs()  # the TLS context made once
            pool = _pools[key] = Pool(
                lambda: pg8000_fast.connect(**kwargs),
                size=size,
                prepare=settings.prepared_statements,
            )
        return pool


def dispose_pools() -> None:
    with _lock:
        for pool in _pools.values():
            pool.dispose()
        _pools.clear()
