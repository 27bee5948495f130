"""Text statements that run on pg8000 directly (promptrun.db.pool) or on a SQLAlchemy
connection, whichever the caller holds.

The processor's statements are all text, and SQLAlchemy's import is about 190 ms of its cold
start; the operators, the CLI and the status API hold SQLAlchemy connections and call the
same functions (limits, jobs, batch completion). `text()` here makes one statement both can
execute:

- on a `pool.Connection`, the `:name` placeholders become `$n` once per statement (the same
  pattern SQLAlchemy's `text()` reads; a name used twice is one parameter), and the values go
  to the driver as they are;
- on a SQLAlchemy connection, it executes as `sqlalchemy.text()` of the same SQL (made on
  first use, through the hook SQLAlchemy's own executables implement).

Results from the pool have the shape this code uses of SQLAlchemy's: rows that are tuples
with attribute access, `.mappings()`, `.first()`, `.all()`, `.scalar_one()`, `.scalars()`,
`.rowcount`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from promptrun.errors import PromptrunError

if TYPE_CHECKING:
    # What a SQLAlchemy connection sees: a statement it executes as it would text() (below).
    from sqlalchemy import TextClause as _Executable
else:
    _Executable = object

# SQLAlchemy's TextClause._bind_params_regex: `:name`, not `::cast`, not `\:`.
_BIND = re.compile(r"(?<![:\w\x5c]):(\w+)(?![:\w])", re.UNICODE)


class StatementError(PromptrunError):
    """A statement was run without a value for one of its parameters."""


class Sql(_Executable):
    """One text statement (build them once, at import: the conversion is kept)."""

    __slots__ = ("_clause", "names", "positional", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        self.positional = _BIND.sub(number, text)
        self.names = tuple(names)
        self._clause: Any = None

    def values(self, params: dict[str, Any] | None) -> tuple[Any, ...]:
        if not self.names:
            return ()
        params = params or {}
        try:
            return tuple(params[n] for n in self.names)
        except KeyError as exc:
            raise StatementError(f"no value for the statement's parameter :{exc.args[0]}") from None

    def __repr__(self) -> str:
        return f"Sql({self.text.strip()[:60]!r})"

    # --- SQLAlchemy's executable protocol (Connection.execute / .scalar) ------------------

    def clause(self) -> Any:
        if self._clause is None:
            from sqlalchemy import text

            self._clause = text(self.text)
        return self._clause

    def _execute_on_connection(self, connection: Any, params: Any, options: Any) -> Any:
        return self.clause()._execute_on_connection(connection, params, options)

    def _execute_on_scalar(self, connection: Any, params: Any, options: Any) -> Any:
        return self.clause()._execute_on_scalar(connection, params, options)


def text(sql: str) -> Sql:
    return Sql(sql)


class Row(tuple[Any, ...]):
    """A result row: a tuple whose columns are attributes too, as SQLAlchemy's Row."""

    __slots__ = ()
    _names: tuple[str, ...] = ()
    _keys: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return self[self._keys[name]]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> dict[str, Any]:
        return dict(zip(self._names, self, strict=True))


@lru_cache(maxsize=256)
def row_type(names: tuple[str, ...]) -> type[Row]:
    keys = {n: i for i, n in reversed(list(enumerate(names)))}  # the first of a repeated name
    return type("Row", (Row,), {"__slots__": (), "_names": tuple(names), "_keys": keys})


class Result:
    """A statement's rows, all read already (pg8000 reads them before returning)."""

    __slots__ = ("_names", "_rows", "rowcount")

    def __init__(self, names: Sequence[str], rows: list[list[Any]] | None, rowcount: int) -> None:
        self._names = tuple(names)
        self._rows = rows or []
        self.rowcount = rowcount

    def keys(self) -> tuple[str, ...]:
        return self._names

    def __iter__(self) -> Iterator[Row]:
        return iter(self.all())

    def all(self) -> list[Row]:
        make = row_type(self._names)
        return [make(r) for r in self._rows]

    def first(self) -> Row | None:
        return row_type(self._names)(self._rows[0]) if self._rows else None

    def one(self) -> Row:
        if len(self._rows) != 1:
            raise StatementError(f"expected exactly one row, got {len(self._rows)}")
        return row_type(self._names)(self._rows[0])

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalars(self) -> _Scalars:
        return _Scalars([r[0] for r in self._rows])

    def mappings(self) -> _Mappings:
        names = self._names
        return _Mappings([dict(zip(names, r, strict=True)) for r in self._rows])


class _Scalars(list[Any]):
    def all(self) -> list[Any]:
        return list(self)

    def first(self) -> Any:
        return self[0] if self else None


class _Mappings(list[dict[str, Any]]):
    def all(self) -> list[dict[str, Any]]:
        return list(self)

    def first(self) -> dict[str, Any] | None:
        return self[0] if self else None

    def one(self) -> dict[str, Any]:
        if len(self) != 1:
            raise StatementError(f"expected exactly one row, got {len(self)}")
        return self[0]


class Conn(Protocol):
    """What the shared functions need of a connection: a pool.Connection or SQLAlchemy's."""

    def execute(self, statement: Any, parameters: Any = None, /) -> Any: ...


class Database(Protocol):
    """What the shared functions need of a database: a pool.Pool or SQLAlchemy's Engine."""

    def begin(self) -> AbstractContextManager[Any]: ...

    def connect(self) -> AbstractContextManager[Any]: ...
