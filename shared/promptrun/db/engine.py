"""The one engine factory. The URL comes from DATABASE_URL or the RDS secret."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.orm import Session, sessionmaker

from promptrun.errors import ConfigError
from promptrun.settings import Settings

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def url_from_secret(secret: dict[str, object]) -> URL:
    """The RDS secret JSON form: username, password, host, port, dbname."""
    missing = [k for k in ("username", "password", "host") if not secret.get(k)]
    if missing:
        raise ConfigError(f"DATABASE_SECRET_ARN secret lacks {', '.join(missing)}")
    return URL.create(
        "postgresql+pg8000",
        username=str(secret["username"]),
        password=str(secret["password"]),
        host=str(secret["host"]),
        port=int(str(secret.get("port") or 5432)),
        database=str(secret.get("dbname") or "postgres"),
    )


def database_url(settings: Settings) -> URL:
    if settings.database_url:
        try:
            return make_url(settings.database_url)
        except Exception:
            raise ConfigError("DATABASE_URL is not a valid SQLAlchemy URL") from None
    if settings.database_secret_arn:
        from promptrun.aws import get_secret_json

        return url_from_secret(
            get_secret_json(settings.database_secret_arn, settings.secret_max_age_seconds)
        )
    raise ConfigError("DATABASE_URL or DATABASE_SECRET_ARN must be set")


def get_engine(settings: Settings, pool_size: int = 10) -> Engine:
    """One engine per URL and process, reused across warm invocations."""
    url = database_url(settings)
    key = url.render_as_string(hide_password=False)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=2,
                pool_recycle=300,
                connect_args={"timeout": 10},
            )
            invalidate_on_client_error(engine)
            _engines[key] = engine
        return engine


def _server_reported(exc: BaseException) -> bool:
    """pg8000 raises the server's own errors with the fields PostgreSQL sent (C = SQLSTATE);
    after those the connection is in a known state. Anything else (a socket error, a value the
    driver could not encode halfway through a message) may leave it broken."""
    args: tuple[object, ...] = tuple(getattr(exc, "args", ()))
    return len(args) > 0 and isinstance(args[0], dict) and "C" in args[0]


def invalidate_on_client_error(engine: Engine) -> None:
    """A connection that failed mid-statement for any reason but a server error is discarded,
    never returned to the pool: cheaper than a pre-ping on every checkout."""

    @event.listens_for(engine, "handle_error")
    def _discard(ctx: ExceptionContext) -> None:
        if not _server_reported(ctx.original_exception):
            ctx.is_disconnect = True
            ctx.invalidate_pool_on_disconnect = False  # only this connection


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A transaction: committed on success, rolled back on any error."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session
