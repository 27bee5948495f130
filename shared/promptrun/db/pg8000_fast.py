"""pg8000 with fewer round trips and less client CPU per statement, same protocol.

Stock pg8000 runs every parameterised statement in three round trips (Parse+Sync,
Describe+Sync, Bind+Execute+Sync), sends each BEGIN as a round trip of its own, and rescans
the SQL text character by character on every call to turn `%s` into `$n`. Here:

- Parse, Describe, Bind and Execute go out together with one Sync: one round trip. Text
  parameters (all pg8000 sends) need nothing from the Describe answer, so nothing is lost;
  an error anywhere makes the server skip to the Sync, as before.
- BEGIN is held back and sent in the same packet as the transaction's first statement;
  a COMMIT can ride behind the transaction's last one (`commit_with_next`).
- The `%s` -> `$n` conversion is remembered per SQL text (the texts are a fixed set).
- TCP_NODELAY: a statement larger than the socket buffer leaves in several writes, and Nagle's
  algorithm would hold the last one for the server's delayed ACK (about 40 ms each time).
- `execute_prepared`: a statement parsed once per connection under a name of its own, then
  only bound and executed: the server skips parsing, analysing and (once it settles on a
  generic plan) planning, which cost more than executing the processor's batch statements.
  Named statements are session state: behind a proxy that multiplexes transactions (RDS
  Proxy pins such a session; PgBouncer in transaction mode loses them) use `execute_unnamed`,
  which prepares nothing server-side.
"""

from __future__ import annotations

import socket
from functools import lru_cache
from typing import Any

import pg8000.legacy
from pg8000.converters import make_params
from pg8000.core import NULL_BYTE, SYNC_MSG, Context, _flush, _write
from pg8000.dbapi import convert_paramstyle
from pg8000.exceptions import InterfaceError

_BEGIN = "begin transaction"
_COMMIT = "commit"
_POSITIONAL = ("numeric", "qmark", "format")
# Named statements per connection at most; past that, statements run unnamed (the processor
# has a fixed set of texts, a few dozen: the cap only guards against texts built per call).
MAX_PREPARED = 64
# A prepared statement whose result columns a migration changed cannot run again in this
# session ("cached plan must not change result type"): the connection must be replaced.
STALE_PLAN = "0A000"


@lru_cache(maxsize=512)
def _converted(style: str, query: str) -> str:
    return convert_paramstyle(style, query, ())[0]


def cached_convert_paramstyle(style: str, query: str, args: Any) -> tuple[str, Any]:
    """pg8000's convert_paramstyle, remembered for positional styles (SQLAlchemy's `format`),
    where the values pass through unchanged."""
    if style in _POSITIONAL:
        return _converted(style, query), args
    return convert_paramstyle(style, query, args)


class Connection(pg8000.legacy.Connection):
    """pg8000's DB-API connection, one round trip per statement (BEGIN included)."""

    _begin_pending = False
    _commit_after = False

    def commit_with_next(self) -> None:
        """The transaction ends with the next statement: its COMMIT goes out in the same
        packet (one round trip less). Should the statement fail, that COMMIT only rolls back."""
        self._commit_after = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # execute_prepared's statements: text -> (name, columns, input converters)
        self._prepared: dict[str, tuple[bytes, Any, Any]] = {}
        self._names_used = 0
        super().__init__(*args, **kwargs)
        if getattr(self._usock, "family", None) in (socket.AF_INET, socket.AF_INET6):
            self._usock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def execute_simple(self, statement: str) -> Context:
        if statement == _BEGIN and not self._in_transaction:
            self._begin_pending = True  # sent with the next statement
            return Context(statement)
        begin = self._send_pending_begin()
        context = Context(statement)
        self.send_QUERY(statement)
        commit = self._send_commit_after()
        _flush(self._sock)
        self._finish(begin, context, commit)
        return context

    def execute_unnamed(
        self, statement: str, vals: Any = (), oids: Any = (), stream: Any = None
    ) -> Context:
        if stream is not None:  # COPY: pg8000's own exchange
            begin = self._send_pending_begin()
            if begin is not None:
                _flush(self._sock)
                self._finish(begin, None)
            return super().execute_unnamed(statement, vals=vals, oids=oids, stream=stream)
        params = make_params(self.py_types, vals)  # before anything is sent
        begin = self._send_pending_begin()
        context = Context(statement)
        self.send_PARSE(NULL_BYTE, statement, oids)
        self.send_DESCRIBE_STATEMENT(NULL_BYTE)
        self._bind_and_run(NULL_BYTE, params, begin, context)
        return context

    def execute_prepared(self, statement: str, vals: Any = ()) -> Context:
        """As execute_unnamed, with the statement parsed once per connection under a name:
        the first call sends Parse, Describe, Bind and Execute (one round trip, as unnamed);
        later calls send Bind and Execute with the columns the Describe answered."""
        known = self._prepared.get(statement)
        if known is None and self._names_used >= MAX_PREPARED:
            return self.execute_unnamed(statement, vals)
        params = make_params(self.py_types, vals)  # before anything is sent
        begin = self._send_pending_begin()
        if known is None:
            # A name never used before on this session, even if an earlier attempt failed
            # after its Parse succeeded (the server keeps that statement until the session ends).
            self._names_used += 1
            name = f"promptrun_{self._names_used}".encode("ascii") + NULL_BYTE
            context = Context(statement)
            self.send_PARSE(name, statement, ())
            self.send_DESCRIBE_STATEMENT(name)
        else:
            name, columns, input_funcs = known
            context = Context(columns=columns, input_funcs=input_funcs, statement=statement)
        self._bind_and_run(name, params, begin, context)
        if known is None:
            self._prepared[statement] = (name, context.columns, context.input_funcs)
        return context

    def _bind_and_run(
        self, name: bytes, params: Any, begin: Context | None, context: Context
    ) -> None:
        """Bind and Execute statement `name` (parsed in the same packet or before), one Sync,
        the pending COMMIT behind it; then read every answer."""
        self.send_BIND(name, params)
        self.send_EXECUTE()
        _write(self._sock, SYNC_MSG)
        commit = self._send_commit_after()
        try:
            _flush(self._sock)
        except AttributeError:
            raise InterfaceError("connection is closed") from None
        self._finish(begin, context, commit)

    def commit(self) -> None:
        self._commit_after = False
        if self._begin_pending:  # nothing ran: there is nothing to commit
            self._begin_pending = False
            return
        if not self._in_transaction:  # committed with its last statement (commit_with_next)
            return
        super().commit()

    def rollback(self) -> None:
        # An empty transaction leaves no BEGIN behind for a later autocommit statement.
        self._begin_pending = False
        self._commit_after = False
        super().rollback()

    def _send_pending_begin(self) -> Context | None:
        if not self._begin_pending:
            return None
        self._begin_pending = False
        self.send_QUERY(_BEGIN)
        return Context(_BEGIN)

    def _send_commit_after(self) -> Context | None:
        if not self._commit_after:
            return None
        self._commit_after = False
        self.send_QUERY(_COMMIT)
        return Context(_COMMIT)

    def _finish(
        self, begin: Context | None, context: Context | None, commit: Context | None = None
    ) -> None:
        """Read every answer that was sent for, then raise the first error among them."""
        error: Exception | None = None
        for sent in (begin, context, commit):
            if sent is None:
                continue
            try:
                self.handle_messages(sent)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error


def install() -> None:
    """Use the remembered conversion in pg8000's DB-API cursor (idempotent)."""
    pg8000.legacy.convert_paramstyle = cached_convert_paramstyle


def connect(*args: Any, **kwargs: Any) -> Connection:
    install()
    return Connection(*args, **kwargs)
