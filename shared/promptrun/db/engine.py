"""The SQLAlchemy engines of the functions that query with it (status API, fan-out,
maintenance, operators, CLI); the processor runs on promptrun.db.pool instead. Where the
database is and the TLS policy come from promptrun.db.connect, for both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

from promptrun.db import connect
from promptrun.db.connect import (  # noqa: F401  (the names tests and tools import from here)
    RDS_CA_BUNDLE,
    RDS_CA_DIR,
    default_ca,
    is_local_host,
    tls_context,
)
from promptrun.db.pool import MAX_CONNECTIONS, server_reported
from promptrun.settings import Settings

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def connect_args_for(url: URL) -> tuple[URL, dict[str, Any]]:
    """The URL pg8000 gets (TLS options taken out of its query) and its connect arguments."""
    query = dict(url.query)
    args = connect.tls_args(url.host, query)
    return url.set(query=query), args


def engine_for_url(url: URL | str, **engine_args: Any) -> Engine:
    """A new engine for `url` with the TLS policy above (tests and tools; the functions use
    `get_engine`)."""
    plain, connect_args = connect_args_for(make_url(url))
    return create_engine(plain, connect_args=connect_args, **engine_args)


def url_from_secret(secret: dict[str, object]) -> URL:
    """The RDS secret JSON form: username, password, host, port, dbname."""
    return _url(connect.Target.from_secret(secret))


def database_url(settings: Settings) -> URL:
    return _url(connect.target(settings))


def _url(target: connect.Target) -> URL:
    return URL.create(
        connect.SCHEME,
        username=target.user,
        password=target.password,
        host=target.host,
        port=target.port,
        database=target.database,
        query=dict(target.query),
    )


def get_engine(settings: Settings, pool_size: int = MAX_CONNECTIONS) -> Engine:
    """One engine per URL and process, reused across warm invocations. No pre-ping: a
    Lambda's connection is seldom idle long enough to die, and a ping is a round trip per
    checkout; pool_recycle retires idle ones before proxies and NATs drop them."""
    url = database_url(settings)
    key = url.render_as_string(hide_password=False)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = engine_for_url(
                url,
                pool_size=pool_size,
                max_overflow=0,
                pool_recycle=300,
            )
            invalidate_on_client_error(engine)
            event.listen(engine, "do_connect", _one_trip_connection)
            _engines[key] = engine
        return engine


def invalidate_on_client_error(engine: Engine) -> None:
    """A connection that failed mid-statement for any reason but a server error is discarded,
    never returned to the pool: cheaper than a pre-ping on every checkout."""

    @event.listens_for(engine, "handle_error")
    def _discard(ctx: ExceptionContext) -> None:
        if not server_reported(ctx.original_exception):
            ctx.is_disconnect = True
            ctx.invalidate_pool_on_disconnect = False  # only this connection


def _one_trip_connection(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
    from promptrun.db import pg8000_fast

    return pg8000_fast.connect(*cargs, **cparams)


def engine_from_env(pool_size: int = 2) -> Engine:
    """The engine of an operator's command: the database the environment names."""
    from promptrun.settings import get_settings

    return get_engine(get_settings().require("database"), pool_size=pool_size)


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A transaction: committed on success, rolled back on any error."""
    # The ORM costs 0.06 s to import; only the catalogue sync and the fan-out's reads use it.
    from sqlalchemy.orm import sessionmaker

    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session
