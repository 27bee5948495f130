"""Where the database is and how to reach it, without SQLAlchemy: the URL (DATABASE_URL, or
the RDS secret), and the TLS policy every connection follows.

Every connection verifies the server's certificate and host name against the RDS CA bundle
shipped beside this module (`rds-ca-bundle.pem`: RDS's global bundle and the Amazon roots
RDS Proxy chains to; in the layer, read from `rds-ca/`, the same certificates filed by subject
hash) and never falls back to plaintext: a server that declines TLS is refused. The one
exception is the local stack, and it is named: `sslmode=disable` in DATABASE_URL, accepted only
for a local host (loopback, or the name a container uses for its host).
`sslrootcert=/path.pem` in DATABASE_URL trusts another CA bundle instead.

The processor connects from here directly (promptrun.db.pool); promptrun.db.engine builds the
SQLAlchemy engines of the other functions from the same target and arguments.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from promptrun.errors import ConfigError
from promptrun.settings import Settings

RDS_CA_BUNDLE = Path(__file__).with_name("rds-ca-bundle.pem")
# The same certificates filed by subject hash (the layer build's ca_index.py): OpenSSL reads the
# one a server chains to at the handshake, instead of parsing all 122 in every cold start.
RDS_CA_DIR = Path(__file__).with_name("rds-ca")
# Hosts the local stack's plaintext PostgreSQL is reached by: this machine, or this machine
# as seen from a Lambda container (Podman, Docker).
LOCAL_HOST_NAMES = {"localhost", "host.containers.internal", "host.docker.internal"}
SSLMODES = ("verify-full", "disable")
SCHEME = "postgresql+pg8000"


@dataclass(frozen=True)
class Target:
    """A database to connect to. `repr` leaves the password out."""

    host: str
    database: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    port: int | None = None
    query: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, url: str) -> Target:
        """`postgresql+pg8000://user:password@host:port/database?options` (SQLAlchemy's form)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ConfigError("DATABASE_URL is not a valid database URL") from None
        if parts.scheme != SCHEME or not parts.hostname:
            raise ConfigError(f"DATABASE_URL must be a {SCHEME}:// URL with a host")
        return cls(
            host=parts.hostname,
            database=unquote(parts.path.lstrip("/")) or None,
            user=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
            port=port,
            query=tuple(parse_qsl(parts.query)),
        )

    @classmethod
    def from_secret(cls, secret: dict[str, object]) -> Target:
        """The RDS secret JSON form: username, password, host, port, dbname."""
        missing = [k for k in ("username", "password", "host") if not secret.get(k)]
        if missing:
            raise ConfigError(f"DATABASE_SECRET_ARN secret lacks {', '.join(missing)}")
        return cls(
            host=str(secret["host"]),
            database=str(secret.get("dbname") or "postgres"),
            user=str(secret["username"]),
            password=str(secret["password"]),
            port=int(str(secret.get("port") or 5432)),
        )

    def with_host(self, host: str) -> Target:
        return replace(self, host=host)

    def key(self) -> str:
        """Tells targets apart (one pool or engine per target and process)."""
        return repr((self.host, self.port, self.database, self.user, self.password, self.query))

    def connect_kwargs(self) -> dict[str, Any]:
        """pg8000's connect arguments, the TLS policy applied."""
        query = dict(self.query)
        args = tls_args(self.host, query)
        named = {
            "user": self.user,
            "password": self.password,
            "port": self.port,
            "database": self.database,
        }
        return {
            "host": self.host,
            **{k: v for k, v in named.items() if v is not None},
            **query,
            **args,
        }


def target(settings: Settings) -> Target:
    """The configured database; DATABASE_HOST (RDS Proxy) replaces its host."""
    if settings.database_url:
        configured = Target.parse(settings.database_url)
    elif settings.database_secret_arn:
        from promptrun.aws import get_secret_json

        configured = Target.from_secret(
            get_secret_json(settings.database_secret_arn, settings.secret_max_age_seconds)
        )
    else:
        raise ConfigError("DATABASE_URL or DATABASE_SECRET_ARN must be set")
    return configured.with_host(settings.database_host) if settings.database_host else configured


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


def tls_args(host: str | None, query: dict[str, Any]) -> dict[str, Any]:
    """The TLS options taken out of `query` (changed in place), as pg8000 connect arguments."""
    sslmode = str(query.pop("sslmode", "verify-full"))
    rootcert = query.pop("sslrootcert", None)
    if sslmode not in SSLMODES:
        raise ConfigError(
            f"DATABASE_URL sslmode must be verify-full, or disable for a local host; got {sslmode!r}"
        )
    args: dict[str, Any] = {"timeout": 10}
    if sslmode == "disable":
        if not is_local_host(host):
            # Never echo the URL: it carries the password.
            raise ConfigError(
                f"DATABASE_URL sslmode=disable is only accepted for a local host, not {host!r}"
            )
        args["ssl_context"] = False
        return args
    args["ssl_context"] = tls_context(Path(str(rootcert)) if rootcert else None)
    return args
