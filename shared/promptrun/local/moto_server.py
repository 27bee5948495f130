"""moto in server mode, as a detached process of this checkout, for the demo and `make up`.

It listens on loopback, or on the one address PROMPTRUN_LISTEN_EXTRA names first (e.g. the
container bridge's, which this machine reaches too) when Lambda containers need it. A moto on
the port that this checkout did not start (its pid file says which) is never reused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from promptrun.local import ports


def _answers(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/moto-api/", timeout=1):
            return True
    except Exception:
        return False


def port_in_use(port: int) -> bool:
    return ports.in_use(port)


def bind_host() -> str:
    addresses = ports.listen_addresses()
    return addresses[1] if len(addresses) > 1 else ports.LOOPBACK


def _pid_record(root: Path) -> dict[str, object]:
    try:
        data = json.loads((root / "moto.pid").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def owns(root: Path, port: int) -> bool:
    """Whether the moto on `port` is the one this checkout started (by its pid file)."""
    record = _pid_record(root)
    pid = record.get("pid")
    if not isinstance(pid, int) or record.get("port") != port or not ports.pid_alive(pid):
        return False
    return "moto_server" in ports.cmdline(pid) and str(port) in ports.cmdline(pid).split()


def ensure_running(root: Path, port: int = 5010, host: str | None = None) -> str:
    """Start moto_server on `port` unless this checkout's own already runs there; return its
    endpoint URL. A port held by anything else is an error (choose the port with
    `ports.choose(..., ours=lambda p: owns(root, p))` to move instead)."""
    root.mkdir(parents=True, exist_ok=True)
    host = host or bind_host()
    endpoint = f"http://{host}:{port}"
    if owns(root, port):
        record_host = str(_pid_record(root).get("host") or host)
        return f"http://{record_host}:{port}"
    if port_in_use(port) or _answers(host, port):
        raise RuntimeError(f"port {port} is taken by a server that this checkout did not start")
    exe = Path(sys.executable).with_name("moto_server")
    log = (root / "moto.log").open("ab")
    proc = subprocess.Popen(
        [str(exe), "-H", host, "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (root / "moto.pid").write_text(json.dumps({"pid": proc.pid, "port": port, "host": host}))
    deadline = time.monotonic() + 30
    while not _answers(host, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"moto_server did not start on {port}; see {root / 'moto.log'}")
        time.sleep(0.2)
    print(f"moto: listening on {host}:{port}", file=sys.stderr)
    return endpoint


def stop(root: Path) -> None:
    """Stop the moto this checkout started, by its pid (checked to still be that moto)."""
    pid_file = root / "moto.pid"
    record = _pid_record(root)
    pid, port = record.get("pid"), record.get("port")
    if isinstance(pid, int) and isinstance(port, int) and owns(root, port):
        os.kill(pid, signal.SIGTERM)
        print("moto: stopped", file=sys.stderr)
    pid_file.unlink(missing_ok=True)
