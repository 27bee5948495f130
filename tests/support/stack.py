"""Real parts for the tests: the local PostgreSQL server, template databases, moto in server mode."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from promptrun.db import migrate
from promptrun.local import moto_server, postgres

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "shared" / "promptrun" / "db" / "migrations" / "versions"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _running_port(root: Path) -> int | None:
    """The port of this checkout's server when its postmaster is alive."""
    pid_file = root / "data" / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        os.kill(int(lines[0]), 0)
        return int(lines[3])
    except (OSError, ValueError, IndexError):
        return None


def start_postgres() -> postgres.LocalPostgres:
    """This checkout's server: the port chosen once and saved under .local (every test worker
    and every later run agree on it), on loopback plus PROMPTRUN_LISTEN_EXTRA."""
    root = Path(os.environ.get("PROMPTRUN_PG_ROOT", REPO / ".local" / "pg"))
    return postgres.ensure_running(root)


def template_database(pg: postgres.LocalPostgres) -> str:
    """The migrated schema, built once per set of migrations; tests copy it."""
    digest = hashlib.sha256()
    for f in sorted(MIGRATIONS.glob("*.py")):
        digest.update(f.read_bytes())
    name = f"tpl_{digest.hexdigest()[:12]}"
    admin = create_engine(pg.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(4242)"))
        try:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            if not exists:
                build = f"{name}_build_{uuid.uuid4().hex[:6]}"
                conn.execute(text(f'CREATE DATABASE "{build}"'))
                engine = create_engine(pg.url(build))
                migrate.upgrade(engine)
                engine.dispose()
                conn.execute(text(f'ALTER DATABASE "{build}" RENAME TO "{name}"'))
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(4242)"))
    admin.dispose()
    return name


def create_test_database(pg: postgres.LocalPostgres, template: str) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(pg.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for _ in range(20):  # a template in use by another CREATE is briefly locked
            try:
                conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
                break
            except Exception as exc:
                if "being accessed by other users" not in str(exc):
                    raise
                time.sleep(0.1)
    admin.dispose()
    return name


def drop_database(pg: postgres.LocalPostgres, name: str) -> None:
    admin = create_engine(pg.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def url_for(pg: postgres.LocalPostgres, database: str, host: str = "127.0.0.1") -> str:
    return pg.app_url(database, host=host)


class MotoServer:
    """moto_server in its own process, on a free port, on loopback; with `host` (default: the
    first PROMPTRUN_LISTEN_EXTRA address) on that address instead, e.g. the container bridge's,
    which Lambda containers and this machine both reach."""

    def __init__(self, host: str | None = None) -> None:
        self.port = free_port()
        self.host = host or moto_server.bind_host()
        self.endpoint = f"http://{self.host}:{self.port}"
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen(
            [str(exe), "-H", self.host, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=5).close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
