"""Each checkout's local ports, chosen once and kept in `.local/ports.json`, so a new shell and
a second checkout on the same machine both find their own servers.

A saved port held by a server that is not this checkout's own is never reused: a new free port
is chosen and saved instead (an explicit PROMPTRUN_*_PORT is an error then, not a silent move).
Also: which addresses the local services listen on (loopback, plus PROMPTRUN_LISTEN_EXTRA).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from promptrun.errors import ConfigError

LOOPBACK = "127.0.0.1"
# Comma-separated extra addresses to listen on, e.g. the container bridge's (10.88.0.1).
LISTEN_EXTRA_ENV = "PROMPTRUN_LISTEN_EXTRA"


def listen_addresses(extra: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """Loopback first, then `extra` (or PROMPTRUN_LISTEN_EXTRA), without duplicates."""
    if extra is None:
        extra = [a.strip() for a in os.environ.get(LISTEN_EXTRA_ENV, "").split(",") if a.strip()]
    out = [LOOPBACK]
    for address in extra:
        if address in ("0.0.0.0", "::", "*"):
            raise ValueError(
                f"{LISTEN_EXTRA_ENV}: name an address (e.g. the container bridge's), not {address!r}"
            )
        if address not in out:
            out.append(address)
    return out


def in_use(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


@contextmanager
def _locked(local: Path) -> Iterator[Path]:
    local.mkdir(parents=True, exist_ok=True)
    with (local / ".ports.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield local / "ports.json"


def saved(local: Path) -> dict[str, int]:
    path = local / "ports.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items() if isinstance(v, int)}


def choose(
    local: Path,
    name: str,
    *,
    default: int,
    env_var: str | None = None,
    ours: Callable[[int], bool] = lambda port: False,
) -> int:
    """This checkout's port for `name`: PROMPTRUN_*_PORT, else the saved one, else `default`
    when free, else any free port; saved for next time. `ours(port)` says whether the server
    answering on a port in use is this checkout's own."""
    with _locked(local) as path:
        ports = saved(local)
        explicit = os.environ.get(env_var or "") if env_var else None
        if explicit:
            port = port_number(f"{env_var}", explicit)
            if in_use(port) and not ours(port):
                raise ConfigError(
                    f"{env_var}={port} is taken by a server that is not this checkout's {name}; "
                    "choose another port"
                )
        else:
            port = ports.get(name, default)
            if (in_use(port) and not ours(port)) or (not in_use(port) and not _bindable(port)):
                port = free_port()
        if ports.get(name) != port:
            _write(path, {**ports, name: port})
        return port


def port_number(option: str, value: object) -> int:
    """A port given by a person (an option or a variable): 1-65535, or an error naming it."""
    try:
        port = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{option}: a port number 1-65535; got {value!r}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{option}: a port number 1-65535; got {port}")
    return port


def remember(local: Path, name: str, port: int) -> None:
    with _locked(local) as path:
        _write(path, {**saved(local), name: port})


def _write(path: Path, ports: dict[str, int]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ports, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (postgres as root runs as `postgres`)
        return True
    return True


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""
