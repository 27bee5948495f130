"""The one engine factory. The URL comes from DATABASE_URL or the RDS secret.

Every connection verifies the server's certificate and host name against the RDS CA bundle
shipped beside this module (`rds-ca-bundle.pem`: RDS's global bundle and the Amazon roots
RDS Proxy chains to; in the layer, read from `rds-ca/`, the same certificates filed by subject
hash) and never falls back to plaintext: a server that declines TLS is
refused. The one exception is the local stack, and it is named: `sslmode=disable` in
DATABASE_URL, accepted only for a local host (loopback, or the name a container uses for
its host). `sslrootcert=/path.pem` in DATABASE_URL trusts another CA bundle instead.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

from promptrun.errors import ConfigError
from promptrun.settings import Settings

_engines: dict[str, Engine] = {}
_lock = threading.Lock()

RDS_CA_BUNDLE = Path(__file__).with_name("rds-ca-bundle.pem")
# The same certificates filed by subject hash (the layer build's ca_index.py): OpenSSL reads the
# one a server chains to at the handshake, instead of parsing all 122 in every cold start.
RDS_CA_DIR = Path(__file__).with_name("rds-ca")
# Hosts the local stack's plaintext PostgreSQL is reached by: this machine, or this machine
# as seen from a Lambda container (Podman, Docker).
LOCAL_HOST_NAMES = {"localhost", "host.containers.internal", "host.docker.internal"}
SSLMODES = ("verify-full", "disable")


def is_local_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.lower().strip("[]")
    if host in LOCAL_HOST_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_ca() -> Path:
    return RDS_CA_DIR if RDS_CA_DIR.is_dir() else RDS_CA_BUNDLE


def tls_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Certificate and host name verified against `ca_file` (a PEM bundle, or a directory of
    certificates named by subject hash), TLS 1.2 at least."""
    ca = ca_file or default_ca()
    try:
        if ca.is_dir():
            context = ssl.create_default_context(capath=str(ca))
        else:
            context = ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot read the database CA bundle {ca}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def connect_args_for(url: URL) -> tuple[URL, dict[str, Any]]:
    """The URL pg8000 gets (TLS options taken out of its query) and its connect arguments."""
    query = dict(url.query)
    sslmode = str(query.pop("sslmode", "verify-full"))
    rootcert = query.pop("sslrootcert", None)
    plain = url.set(query=query)
    if sslmode not in SSLMODES:
        raise ConfigError(
            f"DATABASE_URL sslmode must be verify-full, or disable for a local host; got {sslmode!r}"
        )
    args: dict[str, Any] = {"timeout": 10}
    if sslmode == "disable":
        if not is_local_host(url.host):
            # Never echo the URL: it carries the password.
            raise ConfigError(
                f"DATABASE_URL sslmode=disable is only accepted for a local host, not {url.host!r}"
            )
        args["ssl_context"] = False
        return plain, args
    args["ssl_context"] = tls_context(Path(str(rootcert)) if rootcert else None)
    return plain, args


def engine_for_url(url: URL | str, **engine_args: Any) -> Engine:
    """A new engine for `url` with the TLS policy above (tests and tools; the functions use
    `get_engine`)."""
    plain, connect_args = connect_args_for(make_url(url))
    return create_engine(plain, connect_args=connect_args, **engine_args)


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
