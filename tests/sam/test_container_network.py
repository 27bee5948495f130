"""The engine set-up's readiness check: a Lambda container either reaches a port on this
machine, or the set-up stops with a message that names the port and the address."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.sam.conftest import REPO, ContainerEngine
from tests.support import stack

pytestmark = pytest.mark.sam


def _reach(port: int, timeout_s: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts" / "container_engine.sh"), "--reach", str(port)],
        env={**os.environ, "PROMPTRUN_REACH_TIMEOUT": str(timeout_s)},
        text=True,
        capture_output=True,
        timeout=120,
    )


def test_a_lambda_container_reaches_the_tests_postgresql(
    container_engine: ContainerEngine, pg: Any
) -> None:
    done = _reach(pg.port, 30)
    assert done.returncode == 0, done.stderr
    assert f"reached {container_engine.host_name}:{pg.port}" in done.stderr


def test_an_unreachable_port_stops_the_set_up_with_the_reason(
    container_engine: ContainerEngine,
) -> None:
    port = stack.free_port()  # nothing listens there
    done = _reach(port, 2)
    assert done.returncode != 0
    assert f"cannot reach this machine's port {port} as {container_engine.host_name}" in done.stderr
    assert "unreachable for 2 s" in done.stderr


def _bridge_device(engine: ContainerEngine) -> str:
    if engine.kind == "podman":
        cmd = ["podman", "network", "inspect", "podman", "--format", "{{.NetworkInterface}}"]
    else:
        fmt = '{{index .Options "com.docker.network.bridge.name"}}'
        cmd = ["docker", "network", "inspect", "bridge", "--format", fmt]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    device = done.stdout.strip()
    assert done.returncode == 0 and device, f"{' '.join(cmd)}: {done.stderr.strip()}"
    return device


def test_the_bridge_keeps_its_mac_address_when_a_port_with_a_lower_one_joins(
    container_engine: ContainerEngine,
) -> None:
    """A bridge left to itself takes the lowest MAC address of its ports, so a container
    starting (or a build's RUN step) could change it under a container that had already
    resolved the gateway, whose connections to this machine then time out. A veth with the
    lowest possible address joins the bridge here: the bridge's address must not move."""
    device = _bridge_device(container_engine)
    sys_dir = Path("/sys/class/net") / device
    before = (sys_dir / "address").read_text().strip()
    port = f"prt{uuid.uuid4().hex[:8]}"  # interface names are at most 15 characters

    def ip(*args: str) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"

    ip("link", "add", port, "type", "veth", "peer", "name", f"{port}p")
    try:
        ip("link", "set", port, "address", "02:00:00:00:00:01")
        ip("link", "set", port, "master", device)
        ip("link", "set", port, "up")
        after = (sys_dir / "address").read_text().strip()
    finally:
        ip("link", "del", port)
    assert after == before, (
        f"the bridge {device} changed its MAC address from {before} to {after} when a port "
        "joined: scripts/container_engine.sh pins it"
    )


def test_the_built_layer_carries_the_runtime_and_nothing_for_operators(sam: Any) -> None:
    """What `sam build` made (the fixture rebuilds a stale build): the locked runtime
    packages, the package without the CLI, the local stack, migrations or the YAML reader,
    and nothing that would shadow the Lambda runtime's boto3."""
    site = REPO / ".aws-sam" / "build" / "SharedLayer" / "python"
    package = site / "promptrun"
    assert (package / "processor.py").is_file() and (package / "db" / "pg8000_fast.py").is_file()
    assert (package / "db" / "rds-ca-bundle.pem").is_file()
    # Bytecode (a read-only /opt cannot cache it) and the CA bundle filed by subject hash.
    assert (package / "__pycache__" / "processor.cpython-313.pyc").is_file()
    assert len(list((package / "db" / "rds-ca").iterdir())) == 122
    for dropped in ("local", "cli.py", "cli_operator.py", "db/migrations", "catalog_yaml.py"):
        assert not (package / dropped).exists(), dropped
    top = {p.name.split("-")[0].lower() for p in site.iterdir()}
    assert {"pg8000", "sqlalchemy", "pydantic", "openai", "anthropic"} <= top
    assert not top & {"boto3", "botocore", "yaml", "alembic", "rich", "s3transfer"}
