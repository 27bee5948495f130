"""The one engine factory. The URL comes from DATABASE_URL or the RDS secret."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
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
    url = _configured_url(settings)
    # RDS Proxy: same credentials and database, the proxy's endpoint.
    return url.set(host=settings.database_host) if settings.database_host else url


def _configured_url(settings: Settings) -> URL:
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


# A processor instance needs no more: its records share them (each holds one only for its
# short statements, never across a model call). Connections = 2 x ProcessorMaxConcurrency.
MAX_CONNECTIONS = 2


def get_engine(settings: Settings, pool_size: int = MAX_CONNECTIONS) -> Engine:
    """One engine per URL and process, reused across warm invocations. No pre-ping: a
    Lambda's connection is seldom idle long enough to die, and a ping is a round trip per
    checkout; pool_recycle retires idle ones before proxies and NATs drop them."""
    url = database_url(settings)
    key = url.render_as_string(hide_password=False)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=0,
                pool_recycle=300,
                connect_args={"timeout": 10, **_tls(settings)},
            )
            event.listen(engine, "do_connect", _one_trip_connection)
            _engines[key] = engine
        return engine


def _tls(settings: Settings) -> dict[str, Any]:
    if not settings.database_ssl:
        return {}
    import ssl

    return {"ssl_context": ssl.create_default_context()}


def _one_trip_connection(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
    from promptrun.db import pg8000_fast

    return pg8000_fast.connect(*cargs, **cparams)


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
