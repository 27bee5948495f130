"""A real PostgreSQL server in a folder of the project's own (initdb/pg_ctl).

PostgreSQL refuses to run as root; as root the server runs as the `postgres` account,
which then owns the data folder. It listens on loopback, plus the addresses given (or
PROMPTRUN_LISTEN_EXTRA), e.g. the container bridge's for sam local.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from promptrun.local import ports

SEARCH_DIRS = [
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
]


@dataclass(frozen=True)
class LocalPostgres:
    root: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    def url(self, database: str = "promptrun", host: str = "127.0.0.1") -> str:
        password = self.password_file.read_text().strip()
        return f"postgresql+pg8000://promptrun:{password}@{host}:{self.port}/{database}"

    def app_url(self, database: str = "promptrun", host: str = "127.0.0.1") -> str:
        """The URL promptrun's engine gets: this server is plaintext, and the URL says so
        (the engine accepts that only for a local host)."""
        return self.url(database, host) + "?sslmode=disable"


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in SEARCH_DIRS:
        candidate = Path(d) / name
        if candidate.exists():
            return str(candidate)
    raise RuntimeError(
        f"PostgreSQL's {name} was not found: install the server (Debian: apt-get install postgresql)"
    )


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(_as_server_user(cmd), text=True, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(cmd[0]).name} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done


def running_port(root: Path) -> int | None:
    """The port of the server kept in `root` when it is running (its postmaster.pid names a
    live process), else None."""
    pid_file = root.resolve() / "data" / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    return port if ports.pid_alive(pid) else None


def port_owner_is(root: Path, port: int) -> bool:
    """Whether the server answering on `port` (if any) is the one kept in `root`."""
    if not _port_open(port):
        return True
    return running_port(root) == port


def choose_port(root: Path, default: int = 54329) -> int:
    """This checkout's PostgreSQL port: the running server's, else the one saved under
    `.local` (PROMPTRUN_PG_PORT overrides), else `default` when free, else a free one."""
    running = running_port(root)
    if running is not None and not os.environ.get("PROMPTRUN_PG_PORT"):
        ports.remember(root.resolve().parent, "postgres", running)
        return running
    return ports.choose(
        root.resolve().parent,
        "postgres",
        default=default,
        env_var="PROMPTRUN_PG_PORT",
        ours=lambda port: port_owner_is(root, port),
    )


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _log(msg: str) -> None:
    print(f"postgres: {msg}", file=sys.stderr, flush=True)


def ensure_running(
    root: Path, port: int | None = None, listen: Sequence[str] | None = None
) -> LocalPostgres:
    """Initialise (once) and start (if stopped) a server on `port` (default: this checkout's,
    see choose_port), listening on loopback and
    on the `listen` addresses (default: PROMPTRUN_LISTEN_EXTRA), e.g. the container bridge's
    so that Lambda containers reach it; access needs the generated password. A running server
    that lacks one of these addresses is restarted with it added (never narrowed while up).
    Safe to call from several processes at once (parallel test workers)."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    addresses = ports.listen_addresses(None if listen is None else list(listen))
    with (root.parent / f".{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Chosen under the lock: a server another worker is restarting has no port meanwhile.
        return _ensure_running(root, port or choose_port(root), addresses)


def _server_options(port: int, addresses: list[str]) -> str:
    return f"-p {port} -c listen_addresses='{','.join(addresses)}'"


def _ensure_running(root: Path, port: int, addresses: list[str]) -> LocalPostgres:
    pg = LocalPostgres(root=root, port=port)
    if os.geteuid() == 0:
        shutil.chown(pg.root, "postgres", "postgres")
    if not (pg.data_dir / "PG_VERSION").exists():
        _log(f"initdb into {pg.data_dir}")
        password = secrets.token_hex(16)
        pw_tmp = pg.root / "pwfile"
        pw_tmp.write_text(password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pw_tmp, "postgres", "postgres")
        _run(
            [
                _bin("initdb"),
                "-D",
                str(pg.data_dir),
                "-U",
                "promptrun",
                "--pwfile",
                str(pw_tmp),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-instructions",
            ]
        )
        pw_tmp.unlink()
        pg.password_file.write_text(password + "\n")
        pg.password_file.chmod(0o600)
        with (pg.data_dir / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
        # Tuned for tests: durability is not the point of a throwaway local server.
        with (pg.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "listen_addresses = '127.0.0.1'\n"
                f"port = {port}\n"
                f"unix_socket_directories = '{pg.root}'\n"
                "max_connections = 300\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
    if not port_owner_is(root, port):
        raise RuntimeError(
            f"port {port} is taken by a server that is not the one in {pg.data_dir}; "
            "stop it or choose another port (PROMPTRUN_PG_PORT)"
        )
    running = running_port(root)
    if running is not None and running != port:
        raise RuntimeError(
            f"the server in {pg.data_dir} already runs on port {running}, not {port}; "
            "use that port or stop it (promptrun local down)"
        )
    current = _listening_on(pg) if running is not None else []
    if {"*", "0.0.0.0", "::"} & set(current):  # an older set-up listened everywhere
        current = []
    if running is not None and not (current and set(addresses) <= set(current)):
        # Widened, never narrowed: another run of this checkout may need the addresses it has.
        addresses = [*current, *(a for a in addresses if a not in current)]
        _log(f"restarting to listen on {', '.join(addresses)}")
        _run(
            [_bin("pg_ctl"), "-D", str(pg.data_dir), "-l", str(pg.root / "server.log"),
             "-o", _server_options(port, addresses), "-m", "fast", "-w", "-t", "60", "restart"]
        )  # fmt: skip
    if not _port_open(port):
        _log(f"starting on port {port}")
        _run(
            [
                _bin("pg_ctl"),
                "-D",
                str(pg.data_dir),
                "-l",
                str(pg.root / "server.log"),
                "-o",
                _server_options(port, addresses),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        deadline = time.monotonic() + 30
        while not _port_open(port):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL did not listen on {port}; see {pg.root / 'server.log'}"
                )
            time.sleep(0.2)
    _ensure_database(pg, "promptrun")
    return pg


def _listening_on(pg: LocalPostgres) -> list[str]:
    shown = _run([*_psql(pg), "SHOW listen_addresses"]).stdout.strip()
    return [a.strip() for a in shown.split(",") if a.strip()]


def _psql(pg: LocalPostgres) -> list[str]:
    return [
        _bin("psql"),
        "-h",
        str(pg.root),
        "-p",
        str(pg.port),
        "-U",
        "promptrun",
        "-d",
        "postgres",
        "-tAc",
    ]


def _ensure_database(pg: LocalPostgres, name: str) -> None:
    psql = _psql(pg)
    exists = _run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"]).stdout.strip()
    if not exists:
        _run([*psql, f'CREATE DATABASE "{name}"'])


def stop(root: Path) -> None:
    data = root.resolve() / "data"
    if (data / "postmaster.pid").exists():
        _log("stopping")
        _run([_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
