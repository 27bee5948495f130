"""The SAM CLI against real Lambda containers: the container engine, the built application,
and the environment the containers get (the test's PostgreSQL database and the moto server,
reached through the engine's name for this machine).

Nothing here skips: without a container engine these tests fail and say what is missing.
`make test` provides it (scripts/container_engine.sh); by hand:

    eval "$(scripts/container_engine.sh)" && SAM=.tools/sam/bin/sam .venv/bin/pytest -m sam tests/sam
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import requests
import yaml

from tests.support import stack

REPO = Path(__file__).resolve().parents[2]
EVENTS = REPO / "events"
BUILT_TEMPLATE = REPO / ".aws-sam" / "build" / "template.yaml"
# What `sam build` reads: when one is newer than the build, the build is redone.
BUILD_SOURCES = [REPO / "template.yaml", REPO / "functions", REPO / "shared"]
API_TOKEN = "sam-local-test-token-not-secret"
INVOKE_TIMEOUT = 300


def _fail(message: str) -> None:
    pytest.fail(message, pytrace=False)


# --- the container engine ----------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def engine_request(
    docker_host: str, path: str, method: str = "GET", timeout: float = 10
) -> tuple[int, bytes]:
    """A request to the Docker API of DOCKER_HOST (unix:// or tcp://)."""
    url = urlsplit(docker_host)
    conn: http.client.HTTPConnection
    if url.scheme == "unix":
        conn = _UnixHTTPConnection(url.path, timeout)
    elif url.scheme in ("tcp", "http"):
        conn = http.client.HTTPConnection(
            url.hostname or "127.0.0.1", url.port or 2375, timeout=timeout
        )
    else:
        raise ValueError(f"DOCKER_HOST={docker_host!r}: only unix:// and tcp:// are supported here")
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass(frozen=True)
class ContainerEngine:
    docker_host: str
    image: str
    kind: str  # "podman" or "docker"
    host_name: str  # how a Lambda container reaches services on this machine

    def sam_args(self) -> list[str]:
        """The `sam local` options every command here needs."""
        args = ["--invoke-image", self.image, "--skip-pull-image"]
        if self.kind == "docker" and self.host_name == "host.docker.internal":
            # Docker Desktop resolves it by itself; Docker on Linux needs the mapping.
            args += ["--add-host", "host.docker.internal:host-gateway"]
        return args

    def to_container(self, url: str) -> str:
        """The same URL, with 127.0.0.1/localhost replaced by the name containers use."""
        parts = urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost", "0.0.0.0"):
            return url
        netloc = self.host_name + (f":{parts.port}" if parts.port else "")
        if parts.username:
            userinfo = parts.username + (f":{parts.password}" if parts.password else "")
            netloc = f"{userinfo}@{netloc}"
        return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture(scope="session")
def container_engine() -> ContainerEngine:
    missing = [
        name for name in ("DOCKER_HOST", "PROMPTRUN_LAMBDA_IMAGE") if not os.environ.get(name)
    ]
    if missing:
        _fail(
            f"the SAM tests need a container engine, and {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set: run `make test`, or "
            '`eval "$(scripts/container_engine.sh)"` before pytest'
        )
    docker_host = os.environ["DOCKER_HOST"]
    image = os.environ["PROMPTRUN_LAMBDA_IMAGE"]
    try:
        status, body = engine_request(docker_host, "/version")
    except (OSError, ValueError) as exc:
        _fail(
            f"the container engine at DOCKER_HOST={docker_host} does not answer ({exc}); "
            "start it with scripts/container_engine.sh"
        )
    if status != 200:
        _fail(f"the container engine at DOCKER_HOST={docker_host} answered {status} to /version")
    version = json.loads(body)
    components = " ".join(c.get("Name", "") for c in version.get("Components") or [])
    kind = "podman" if "podman" in components.lower() else "docker"
    status, _ = engine_request(docker_host, f"/images/{quote(image, safe='')}/json")
    if status != 200:
        _fail(
            f"PROMPTRUN_LAMBDA_IMAGE={image} is not in the container engine at {docker_host}; "
            "scripts/container_engine.sh builds it"
        )
    host_name = os.environ.get("PROMPTRUN_CONTAINER_HOST_NAME") or (
        "host.containers.internal" if kind == "podman" else "host.docker.internal"
    )
    return ContainerEngine(docker_host=docker_host, image=image, kind=kind, host_name=host_name)


# --- the SAM CLI and the build ------------------------------------------------------------


@dataclass(frozen=True)
class Sam:
    exe: str
    engine: ContainerEngine
    env: dict[str, str] = field(repr=False)

    def run(self, *args: str, timeout: float = INVOKE_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.exe, *args],
            cwd=REPO,
            env=self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
        )

    def invoke(self, function: str, event: Path, env_vars: Path) -> Any:
        """`sam local invoke` in a Lambda container; the function's return value."""
        proc = self.run(
            "local", "invoke", function,
            "--template", str(BUILT_TEMPLATE),
            "--event", str(event),
            "--env-vars", str(env_vars),
            *self.engine.sam_args(),
        )  # fmt: skip
        assert proc.returncode == 0, f"sam local invoke {function} failed:\n{tail(proc.stderr)}"
        lines = proc.stdout.strip().splitlines()
        assert lines, f"sam local invoke {function} printed no result:\n{tail(proc.stderr)}"
        result = json.loads(lines[-1])
        if isinstance(result, dict) and "errorType" in result:
            report = network_report()
            raise AssertionError(
                f"{function} raised {result.get('errorType')}: {result.get('errorMessage')}\n"
                f"{tail(proc.stderr)}\n--- this machine's network at the failure ---\n{report}"
            )
        return result

    def start(self, command: str, port: int, env_vars: Path, log: Path) -> subprocess.Popen[bytes]:
        """`sam local start-api` or `start-lambda` in the background, its output in `log`."""
        with log.open("wb") as out:
            return subprocess.Popen(
                [
                    self.exe, "local", command,
                    "--template", str(BUILT_TEMPLATE),
                    "--host", "127.0.0.1",
                    "--port", str(port),
                    "--env-vars", str(env_vars),
                    "--warm-containers", "EAGER",
                    *self.engine.sam_args(),
                ],
                cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip


def network_report() -> str:
    """What a container's failed connection to this machine needs looked at: addresses,
    routes, neighbours, listening sockets, the firewall and the containers."""
    out = []
    for cmd in (
        ["ip", "-4", "addr"],
        ["ip", "route"],
        ["ip", "neigh"],
        ["ss", "-ltn"],
        ["iptables-save"],
        ["podman", "ps", "-a", "--format", "{{.Names}} {{.Status}} {{.Networks}}"],
    ):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
            out.append(f"$ {' '.join(cmd)}\n{(done.stdout + done.stderr).strip()}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            out.append(f"$ {' '.join(cmd)}\n({exc})")
    return "\n".join(out)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _newest_source_mtime() -> float:
    newest = 0.0
    for src in BUILD_SOURCES:
        paths = [src] if src.is_file() else src.rglob("*")
        for p in paths:
            if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p):
                newest = max(newest, p.stat().st_mtime)
    return newest


def clear_dead_build_locks(lock_dir: Path | None = None) -> list[Path]:
    """SAM serialises image builds with a lock file in the temp folder (the pid of the builder
    on its first line) and waits up to 5 minutes for one it finds. A `sam` killed mid-build
    (a stopped `start-api`, an aborted run) leaves its lock behind: remove those whose
    process is gone; a live builder's lock stays."""
    removed = []
    for lock in (lock_dir or Path(tempfile.gettempdir())).glob("*.building.lock"):
        try:
            pid = int(lock.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # being written, or not SAM's
        try:
            os.kill(pid, 0)
            continue  # the builder is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, someone else's
        lock.unlink(missing_ok=True)
        lock.with_suffix(".status").unlink(missing_ok=True)
        removed.append(lock)
    return removed


@pytest.fixture(scope="session")
def sam(container_engine: ContainerEngine) -> Sam:
    exe = os.environ.get("SAM") or str(REPO / ".tools" / "sam" / "bin" / "sam")
    if not os.access(exe, os.X_OK):
        _fail(f"the SAM CLI was not found at {exe}: run `make sam-cli` or set SAM=/path/to/sam")
    env = dict(os.environ)
    env.update(
        DOCKER_HOST=container_engine.docker_host,
        SAM_CLI_TELEMETRY="0",
        # `sam build` for python3.13 needs python3.13 on PATH: the project's venv has it.
        PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        # The credentials SAM hands to the containers: fake ones, whatever the shell has.
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
    )
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        env.pop(name, None)
    cli = Sam(exe=exe, engine=container_engine, env=env)
    clear_dead_build_locks()
    # `make test` has just built; a build older than its sources (or none) is redone.
    if not BUILT_TEMPLATE.exists() or BUILT_TEMPLATE.stat().st_mtime < _newest_source_mtime():
        proc = cli.run("build", "--cached", "--parallel", timeout=900)
        if proc.returncode != 0:
            _fail(f"sam build failed:\n{tail(proc.stdout + proc.stderr)}")
    return cli


# --- what the containers are given ---------------------------------------------------------


def write_env_vars(
    path: Path,
    engine: ContainerEngine,
    *,
    pg: Any,
    database: str,
    moto_endpoint: str,
    queue_url: str,
) -> Path:
    """An --env-vars file for every function: the local services under the containers' name
    for this machine, the secrets' ARNs emptied so that the plain values are used."""
    variables = {
        "DATABASE_URL": stack.url_for(pg, database, host=engine.host_name),
        "DATABASE_SECRET_ARN": "",
        "JOBS_QUEUE_URL": engine.to_container(queue_url),
        # sam local resolves !Ref FanoutContinueQueue to its logical id: no continuation queue
        # here (the fan-out tests send everything within one invocation).
        "FANOUT_QUEUE_URL": "",
        "AWS_ENDPOINT_URL": engine.to_container(moto_endpoint),
        "API_TOKEN": API_TOKEN,
        "API_TOKEN_SECRET_ARN": "",
        "PROVIDER_SECRETS_ARN": "",
    }
    path.write_text(json.dumps({"Parameters": variables}, indent=2))
    return path


@pytest.fixture
def lambda_env(
    tmp_path: Path,
    container_engine: ContainerEngine,
    pg: Any,
    database: str,
    moto_server: stack.MotoServer,
    queue_url: str,
) -> Path:
    """The --env-vars file pointing the functions at this test's database and queue."""
    return write_env_vars(
        tmp_path / "env.json",
        container_engine,
        pg=pg,
        database=database,
        moto_endpoint=moto_server.endpoint,
        queue_url=queue_url,
    )


# --- sam local start-api ------------------------------------------------------------------


@dataclass
class LocalApi:
    """`sam local start-api` running in the background."""

    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, sam: Sam, env_vars: Path, folder: Path) -> LocalApi:
        """Start it and return at once: its image builds can overlap other work."""
        port = stack.free_port()
        log = folder / "start-api.log"
        return cls(f"http://127.0.0.1:{port}", sam.start("start-api", port, env_vars, log), log)

    def log_tail(self) -> str:
        return tail(self.log.read_text(errors="replace"))

    def wait_until_listening(self, timeout: float) -> None:
        """Bounded poll: until anything answers, the process dies, or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"sam exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                # The first request also starts the function (a cold start takes seconds).
                requests.get(f"{self.base_url}/openapi.json", timeout=(2, 60))
                return
            except requests.ConnectionError:
                pass  # not listening yet: poll again until the deadline
            if time.monotonic() > deadline:
                raise RuntimeError(f"sam did not listen within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def warm_every_function(self, timeout: float) -> None:
        """One request (without a token: answered 401 or a public page) to the first route
        of each function behind the API. A function's first request waits while SAM builds its
        image (40 s and more after the layer changed); made here, none of the tests' requests
        (with their own timeouts, schemathesis' 30 s) is the one that waits."""
        for method, path in first_api_routes():
            url = self.base_url + re.sub(r"\{[^}]+\}", "warm-up", path)
            try:
                requests.request(method.upper(), url, timeout=(2, timeout))
            except requests.RequestException as exc:
                raise RuntimeError(
                    f"{method} {path} did not answer: {exc}\n{self.log_tail()}"
                ) from exc

    def stop(self, engine: ContainerEngine) -> None:
        stop_process_group(self.process)
        # SAM removes its warm containers when stopped, except one it was still starting.
        for container_id in re.findall(r"SAM_CONTAINER_ID: ([0-9a-f]+)", self.log.read_text()):
            engine_request(engine.docker_host, f"/containers/{container_id}?force=true", "DELETE")


def first_api_routes() -> list[tuple[str, str]]:
    """(method, path) of each function's first API event in template.yaml."""
    from tests.unit.test_template import CfnLoader

    template = yaml.load((REPO / "template.yaml").read_text(), Loader=CfnLoader)
    routes = []
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        events = resource["Properties"].get("Events") or {}
        api = [e["Properties"] for e in events.values() if e["Type"] == "Api"]
        if api:
            routes.append((api[0]["Method"], api[0]["Path"]))
    return routes


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM first: SAM then removes its warm containers on the way out."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
