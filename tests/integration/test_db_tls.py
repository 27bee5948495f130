"""TLS to the database against real PostgreSQL servers: plaintext refused, an unknown or
self-signed certificate refused, a wrong host name refused, the right CA and name accepted;
the local stack's plaintext only by its explicit, local-only exception."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from promptrun.db.engine import (
    RDS_CA_BUNDLE,
    connect_args_for,
    engine_for_url,
    url_from_secret,
)
from promptrun.errors import ConfigError
from tests.support.tls_postgres import (
    Pem,
    TlsPostgres,
    make_ca,
    make_server_cert,
    ssl_in_use,
)


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[Pem, object]]:
    ca = make_ca()
    path = tmp_path_factory.mktemp("ca") / "test-ca.pem"
    path.write_bytes(ca[0].cert)
    return path, ca


@pytest.fixture(scope="module")
def plaintext_server() -> Iterator[TlsPostgres]:
    server = TlsPostgres(cert=None)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ca_signed_server(test_ca: tuple[Path, tuple[Pem, object]]) -> Iterator[TlsPostgres]:
    server = TlsPostgres(cert=make_server_cert("localhost", issuer=test_ca[1]))  # type: ignore[arg-type]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def self_signed_server() -> Iterator[TlsPostgres]:
    server = TlsPostgres(cert=make_server_cert("localhost"))
    yield server
    server.stop()


def _refused(url: str) -> str:
    engine = engine_for_url(url)
    try:
        # pg8000 lets the ssl module's verification errors through unwrapped.
        with pytest.raises((DBAPIError, ssl.SSLError)) as info, engine.connect():
            pass
    finally:
        engine.dispose()
    return str(info.value)


def test_plaintext_only_server_is_refused(
    plaintext_server: TlsPostgres, test_ca: tuple[Path, object]
) -> None:
    assert "refuses SSL" in _refused(plaintext_server.url())
    # Not a matter of the CA: no certificate can make a plaintext server acceptable.
    assert "refuses SSL" in _refused(plaintext_server.url(query=f"sslrootcert={test_ca[0]}"))


def test_local_stack_exception_connects_in_plaintext(plaintext_server: TlsPostgres) -> None:
    assert ssl_in_use(plaintext_server.url(query="sslmode=disable")) is False


def test_self_signed_certificate_is_refused(self_signed_server: TlsPostgres) -> None:
    assert "self-signed certificate" in _refused(self_signed_server.url(host="localhost"))


def test_certificate_from_a_ca_outside_the_bundle_is_refused(ca_signed_server: TlsPostgres) -> None:
    # The shipped RDS bundle does not hold the test CA.
    assert "unable to get local issuer" in _refused(ca_signed_server.url(host="localhost"))


def test_trusted_ca_and_matching_host_name_is_accepted_over_tls(
    ca_signed_server: TlsPostgres, test_ca: tuple[Path, object]
) -> None:
    url = ca_signed_server.url(host="localhost", query=f"sslrootcert={test_ca[0]}")
    assert ssl_in_use(url) is True


def test_trusted_ca_but_wrong_host_name_is_refused(
    ca_signed_server: TlsPostgres, test_ca: tuple[Path, object]
) -> None:
    # The certificate names `localhost`; 127.0.0.1 is the same server under another name.
    url = ca_signed_server.url(host="127.0.0.1", query=f"sslrootcert={test_ca[0]}")
    assert "certificate is not valid for '127.0.0.1'" in _refused(url)


def test_deployed_database_from_the_secret_verifies_with_the_shipped_bundle() -> None:
    url = url_from_secret(
        {"username": "app", "password": "pw", "host": "db.abc.us-east-1.rds.amazonaws.com"}
    )
    _, args = connect_args_for(url)
    context = args["ssl_context"]
    assert context.check_hostname is True
    assert context.verify_mode.name == "CERT_REQUIRED"
    # RDS's 118 certificates and the 4 Amazon roots RDS Proxy uses.
    assert context.cert_store_stats()["x509_ca"] == 122
    assert RDS_CA_BUNDLE.is_file()


@pytest.mark.parametrize(
    "host", ["db.abc.us-east-1.rds.amazonaws.com", "10.0.0.5", "127.0.0.1.nip.io"]
)
def test_plaintext_is_refused_for_any_host_that_is_not_local(host: str) -> None:
    url = make_url(f"postgresql+pg8000://u:hunter2@{host}:5432/db?sslmode=disable")
    with pytest.raises(ConfigError, match="only accepted for a local host") as info:
        connect_args_for(url)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("mode", ["require", "prefer", "allow", "verify-ca"])
def test_weaker_sslmodes_are_rejected_by_name(mode: str) -> None:
    with pytest.raises(ConfigError, match=f"sslmode must be verify-full.*{mode}"):
        connect_args_for(make_url(f"postgresql+pg8000://u:p@localhost/db?sslmode={mode}"))


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.2", "localhost", "[::1]", "host.containers.internal"]
)
def test_local_hosts_may_disable_tls(host: str) -> None:
    plain, args = connect_args_for(make_url(f"postgresql+pg8000://u:p@{host}/db?sslmode=disable"))
    assert args["ssl_context"] is False
    assert "sslmode" not in plain.query
