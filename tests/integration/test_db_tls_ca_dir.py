"""The layer's CA directory (shared/ca_index.py: the bundle filed by subject hash) verifies a
real PostgreSQL server's certificate exactly as the bundle does, and costs nothing to load."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from promptrun.db import connect as db_connect
from promptrun.db.engine import RDS_CA_BUNDLE, engine_for_url, tls_context
from tests.support.tls_postgres import (
    Pem,
    TlsPostgres,
    make_ca,
    make_server_cert,
    ssl_in_use,
)

REPO = Path(__file__).resolve().parents[2]


def ca_index(bundle: Path, out: Path) -> Path:
    """The layer build's own step, run as the Makefile runs it."""
    subprocess.run(
        [sys.executable, str(REPO / "shared" / "ca_index.py"), str(bundle), str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def test_ca() -> tuple[Pem, object]:
    return make_ca()


@pytest.fixture(scope="module")
def server(test_ca: tuple[Pem, object]) -> Iterator[TlsPostgres]:
    running = TlsPostgres(cert=make_server_cert("localhost", issuer=test_ca))  # type: ignore[arg-type]
    yield running
    running.stop()


def test_a_directory_holding_the_servers_ca_among_the_rds_ones_verifies_it(
    tmp_path: Path, server: TlsPostgres, test_ca: tuple[Pem, object]
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(RDS_CA_BUNDLE.read_bytes() + test_ca[0].cert)
    directory = ca_index(bundle, tmp_path / "ca")
    assert len(list(directory.iterdir())) == 123
    assert ssl_in_use(server.url(host="localhost", query=f"sslrootcert={directory}")) is True


def test_the_rds_directory_alone_refuses_a_server_of_another_ca(
    tmp_path: Path, server: TlsPostgres
) -> None:
    directory = ca_index(RDS_CA_BUNDLE, tmp_path / "ca")
    engine = engine_for_url(server.url(host="localhost", query=f"sslrootcert={directory}"))
    try:
        with pytest.raises((DBAPIError, ssl.SSLError), match="unable to get local issuer"):
            engine.connect()
    finally:
        engine.dispose()


def test_the_functions_use_the_directory_when_the_layer_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tls_context().cert_store_stats()["x509_ca"] == 122  # no directory here: the bundle
    monkeypatch.setattr(db_connect, "RDS_CA_DIR", ca_index(RDS_CA_BUNDLE, tmp_path / "ca"))
    # Nothing parsed up front: OpenSSL reads the issuer a server names, at the handshake.
    assert tls_context().cert_store_stats()["x509_ca"] == 0
