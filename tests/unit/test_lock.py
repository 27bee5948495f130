"""One lock: requirements.lock (with hashes) pins the development environment, and the layer's
shared/requirements.txt is a subset of it at exactly the same versions, without boto3/botocore
(the Lambda runtime's own) and without what only operators' machines use."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"
LAYER = REPO / "shared" / "requirements.txt"
RUNTIME_OWN = {"boto3", "botocore", "s3transfer", "jmespath", "urllib3"}
OPERATOR_ONLY = {"alembic", "mako", "markupsafe"}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line; each must carry a hash."""
    text = path.read_text()
    found: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s\\;]+)", block)
        if match:
            assert "--hash=sha256:" in block, f"{path.name}: {match[1]} has no hash"
            found[normalized(match[1])] = match[2]
    return found


def test_the_layer_pins_exactly_the_locks_versions() -> None:
    lock, layer = pins(LOCK), pins(LAYER)
    assert layer, "the layer pins nothing"
    mismatched = {n: (v, lock.get(n)) for n, v in layer.items() if lock.get(n) != v}
    assert mismatched == {}


def test_the_layer_ships_neither_the_runtimes_boto3_nor_operator_tools() -> None:
    layer = pins(LAYER)
    assert not (RUNTIME_OWN | OPERATOR_ONLY) & set(layer)
    needed = {"aws-lambda-powertools", "aws-xray-sdk", "pydantic", "sqlalchemy", "pg8000"}
    assert needed | {"openai", "anthropic"} <= set(layer)


def test_the_lock_pins_every_declared_dependency_and_one_boto3() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["providers"]
    dev = [
        line
        for line in (REPO / "requirements-dev.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    lock = pins(LOCK)
    for requirement in declared + dev:
        name = normalized(re.split(r"[\[<>=~!; ]", requirement, maxsplit=1)[0])
        assert name in lock, f"{requirement} is not in requirements.lock: run `make lock`"
    assert lock["boto3"].split(".")[:2] == lock["botocore"].split(".")[:2]


def test_the_venv_and_the_layer_install_from_the_pins_with_hashes() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "pip install -q --require-hashes -r requirements.lock" in makefile
    assert "pip install -q --no-deps -e ." in makefile
    layer_build = (REPO / "shared" / "Makefile").read_text()
    assert "--require-hashes" in layer_build and "--no-deps" in layer_build
    assert "-r requirements.txt" in layer_build
    for dropped in ("promptrun/local", "promptrun/cli*.py", "promptrun/db/migrations"):
        assert dropped in layer_build
    assert "BuildMethod: makefile" in (REPO / "template.yaml").read_text()


@pytest.mark.parametrize("function", ["fanout", "processor", "status"])
def test_handlers_import_nothing_the_layer_leaves_out(function: str) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql+pg8000://u:p@127.0.0.1:1/d?sslmode=disable",
        "JOBS_QUEUE_URL": "http://127.0.0.1:1/queue/jobs",
        "API_TOKEN": "not-a-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import app; "
        "print('\\n'.join(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "functions" / function)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    modules = set(done.stdout.split())
    left_out = {
        m
        for m in modules
        # PyYAML reads catalogue files, an operator's work: the layer does not ship it.
        if m.split(".")[0] in {"alembic", "mako", "yaml", "rich"}
        or m.startswith(
            ("promptrun.local", "promptrun.cli", "promptrun.db.migrate", "promptrun.catalog_yaml")
        )
    }
    assert left_out == set()
    if function != "status":
        # Visibility (brands, exports) is read when a batch completes, not at every cold start.
        assert "promptrun.visibility" not in modules
