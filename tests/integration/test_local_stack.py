"""Two checkouts' local stacks side by side on one machine: ports chosen once and saved, a
server that is not the checkout's own never reused, loopback only, stopped by PID."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptrun.errors import ConfigError
from promptrun.local import moto_server, ports, postgres, stack
from tests.support.stack import REPO


def answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
        return True
    except Exception:
        return False


@pytest.fixture
def two_roots(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    # Under the repo (not /tmp): as root the server runs as `postgres`, which must reach it.
    base = REPO / ".local" / f"stacks-{uuid.uuid4().hex[:8]}"
    for var in ("PROMPTRUN_PG_PORT", "PROMPTRUN_MOTO_PORT", ports.LISTEN_EXTRA_ENV):
        monkeypatch.delenv(var, raising=False)
    a, b = base / "a" / ".local", base / "b" / ".local"
    yield a, b
    for root in (a, b):
        try:
            stack.down(root)
        except Exception as exc:  # already down: fine; anything else shows in the test log
            print(f"down {root}: {exc}", file=sys.stderr)
    shutil.rmtree(base, ignore_errors=True)


def test_two_checkouts_side_by_side(two_roots: tuple[Path, Path]) -> None:
    a, b = two_roots
    env_a = stack.up(a)
    env_b = stack.up(b)
    ports_a, ports_b = ports.saved(a), ports.saved(b)
    assert set(ports_a) == set(ports_b) == {"postgres", "moto"}
    assert not set(ports_a.values()) & set(ports_b.values())  # nothing shared
    assert env_a["AWS_ENDPOINT_URL"] != env_b["AWS_ENDPOINT_URL"]
    assert env_a["JOBS_DLQ_URL"].endswith("promptrun-jobs-dlq")

    # A new shell (a second `up`) finds the same ports and the same servers.
    again = stack.up(a)
    assert ports.saved(a) == ports_a and again["DATABASE_URL"] == env_a["DATABASE_URL"]
    assert again["AWS_ENDPOINT_URL"] == env_a["AWS_ENDPOINT_URL"]

    # Loopback only.
    pg_a = postgres.LocalPostgres(a.resolve() / "pg", ports_a["postgres"])
    assert postgres._listening_on(pg_a) == ["127.0.0.1"]
    pid = json.loads((a / "moto.pid").read_text())["pid"]
    assert "-H 127.0.0.1" in ports.cmdline(pid)

    # a's saved moto port now points at b's moto: a must not reuse b's server.
    (a / "ports.json").write_text(json.dumps({**ports_a, "moto": ports_b["moto"]}))
    stack.down(a)
    assert answers(env_b["AWS_ENDPOINT_URL"])  # b untouched by a's down
    moved = stack.up(a)
    assert moved["AWS_ENDPOINT_URL"] != env_b["AWS_ENDPOINT_URL"]
    assert ports.saved(a)["moto"] not in (ports_b["moto"],)
    assert moto_server.owns(a, ports.saved(a)["moto"])
    assert not moto_server.owns(a, ports_b["moto"])

    # down stops only a's own: b's PostgreSQL and moto still answer.
    stack.down(a)
    assert not answers(moved["AWS_ENDPOINT_URL"])
    assert postgres.running_port(a / "pg") is None
    assert postgres.running_port(b / "pg") == ports_b["postgres"]
    assert answers(env_b["AWS_ENDPOINT_URL"])


def test_down_stops_recorded_sam_processes_by_pid_only(two_roots: tuple[Path, Path]) -> None:
    a, b = two_roots
    # Stand-ins for `sam local start-api` of two checkouts: their argv names sam.
    procs = []
    for root in (a, b):
        (root / "pids").mkdir(parents=True)
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)", "sam", "local", "start-api"],
            start_new_session=True,
        )
        (root / "pids" / "sam-start-api.pid").write_text(f"{proc.pid}\n")
        procs.append(proc)
    # A stale record naming a pid that is not sam is left alone (and the record removed).
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (a / "pids" / "sam-start-lambda.pid").write_text(f"{other.pid}\n")
    try:
        assert stack.stop_recorded(a) == [procs[0].pid]
        procs[0].wait(timeout=10)
        time.sleep(0.2)
        assert procs[1].poll() is None and other.poll() is None
        assert list((a / "pids").iterdir()) == []
    finally:
        for proc in (*procs, other):
            proc.kill()
            proc.wait()


def test_listen_extra_names_an_address_not_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ports.LISTEN_EXTRA_ENV, "10.88.0.1, 127.0.0.1")
    assert ports.listen_addresses() == ["127.0.0.1", "10.88.0.1"]
    assert moto_server.bind_host() == "10.88.0.1"
    assert ports.listen_addresses(["192.168.5.1"]) == ["127.0.0.1", "192.168.5.1"]
    with pytest.raises(ValueError, match=r"not '0\.0\.0\.0'"):
        ports.listen_addresses(["0.0.0.0"])


def test_an_explicit_port_taken_by_another_server_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        monkeypatch.setenv("PROMPTRUN_MOTO_PORT", str(taken))
        with pytest.raises(ConfigError, match="not this checkout's moto"):
            ports.choose(tmp_path, "moto", default=5010, env_var="PROMPTRUN_MOTO_PORT")
        monkeypatch.delenv("PROMPTRUN_MOTO_PORT")
        # Saved, not explicit: a new port is chosen and saved instead.
        (tmp_path / "ports.json").write_text(json.dumps({"moto": taken}))
        chosen = ports.choose(tmp_path, "moto", default=5010)
        assert chosen != taken and ports.saved(tmp_path) == {"moto": chosen}


@pytest.mark.parametrize("value", ["abc", "0", "70000", "-1", ""])
def test_a_port_a_person_gives_is_checked_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PROMPTRUN_API_PORT", value or " ")
    with pytest.raises(ConfigError, match="PROMPTRUN_API_PORT: a port number 1-65535"):
        ports.choose(tmp_path, "api", default=8321, env_var="PROMPTRUN_API_PORT")
    assert ports.saved(tmp_path) == {}  # nothing saved


@pytest.mark.parametrize("value", ["99999", "-1", "0"])
def test_api_port_option_out_of_range_is_one_line_naming_it(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from promptrun import cli

    assert cli.main(["api", "--port", value]) == 2
    assert capsys.readouterr().err == f"promptrun: --port: a port number 1-65535; got {value}\n"
