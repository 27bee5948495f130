"""moto in server mode, as a detached process, for the demo and the tests.

It listens on all addresses so that Lambda containers (sam local) can reach it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1):
            return True
    except Exception:
        return False


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def ensure_running(root: Path, port: int = 5010) -> str:
    """Start moto_server on `port` unless it already answers; return its endpoint URL."""
    root.mkdir(parents=True, exist_ok=True)
    endpoint = f"http://127.0.0.1:{port}"
    if _answers(port):
        return endpoint
    if port_in_use(port):
        raise RuntimeError(f"port {port} is taken by something that is not moto")
    exe = Path(sys.executable).with_name("moto_server")
    log = (root / "moto.log").open("ab")
    proc = subprocess.Popen(
        [str(exe), "-H", "0.0.0.0", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (root / "moto.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 30
    while not _answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"moto_server did not start on {port}; see {root / 'moto.log'}")
        time.sleep(0.2)
    print(f"moto: listening on {port}", file=sys.stderr)
    return endpoint


def stop(root: Path) -> None:
    pid_file = root / "moto.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
            print("moto: stopped", file=sys.stderr)
        except (ProcessLookupError, ValueError):
            pass
        pid_file.unlink()
