"""Throwaway PostgreSQL servers with chosen TLS set-ups (plaintext only, self-signed, signed by
a test CA), and the certificates for them, made here with `cryptography`."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import text

from promptrun.db.engine import engine_for_url
from promptrun.local import postgres
from tests.support.stack import free_port


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: str, issuer: str, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    return Pem(
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def make_ca(common_name: str = "promptrun test CA") -> tuple[Pem, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, common_name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _pem(cert, key), key


def make_server_cert(
    host: str, issuer: tuple[Pem, ec.EllipticCurvePrivateKey] | None = None
) -> Pem:
    """A server certificate for DNS name `host`: signed by `issuer`, or self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    if issuer is None:
        issuer_name, signing_key = host, key
    else:
        ca_cert = x509.load_pem_x509_certificate(issuer[0].cert)
        issuer_name = ca_cert.subject.rfc4514_string().removeprefix("CN=")
        signing_key = issuer[1]
    cert = (
        _builder(host, issuer_name, key.public_key())
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
            critical=False,
        )
        .sign(signing_key, hashes.SHA256())
    )
    return _pem(cert, key)


class TlsPostgres:
    """A PostgreSQL server on 127.0.0.1 with TLS off (`cert=None`) or on with `cert`.
    Host connections are trusted (no password): it listens on loopback only and lives for
    one test module."""

    def __init__(self, cert: Pem | None) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="promptrun-tls-pg-"))
        self.data = self.root / "data"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        postgres._run(
            [
                postgres._bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "promptrun",
                "--auth-local=trust",
                "--auth-host=trust",
                "--no-instructions",
            ]
        )
        conf = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.root}'",
            "fsync = off",
        ]
        if cert is None:
            conf.append("ssl = off")
        else:
            (self.data / "server.crt").write_bytes(cert.cert)
            (self.data / "server.key").write_bytes(cert.key)
            (self.data / "server.key").chmod(0o600)
            if os.geteuid() == 0:
                for f in ("server.crt", "server.key"):
                    shutil.chown(self.data / f, "postgres", "postgres")
            conf += ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\n".join(conf) + "\n")
        postgres._run(
            [
                postgres._bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def url(self, host: str = "127.0.0.1", query: str = "") -> str:
        return f"postgresql+pg8000://promptrun@{host}:{self.port}/postgres" + (
            f"?{query}" if query else ""
        )

    def stop(self) -> None:
        subprocess.run(
            postgres._as_server_user(
                [postgres._bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]
            ),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def ssl_in_use(url: str) -> bool:
    """Connect with promptrun's TLS policy; whether the session is encrypted (the server's
    own view). A refused connection raises."""
    engine = engine_for_url(url)
    try:
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                ).scalar()
            )
    finally:
        engine.dispose()
