"""What a handler's cold start imports and builds: the heavy modules it must not pull in.

Each handler is imported the way Lambda does (a fresh process, its function directory and the
layer's package on the path, tracing off); the figures themselves are `make bench`'s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Never at import, in any handler: the ORM (Core tables do), X-Ray, boto3 (the first AWS call
# imports it), provider SDKs (the first job of that provider), PyYAML (catalogue files).
NEVER = (
    "sqlalchemy.orm",
    "aws_xray_sdk",
    "boto3",
    "botocore.session",  # Powertools imports the bare package for its version: cheap
    "openai",
    "anthropic",
    "httpx",
    "yaml",
)
# Extraction's validators are built on first use (pydantic defer_build), not at import.
LAZY_MODELS = ("Entity", "ExtractionResult", "NormalizedEntity")


def imported(function: str) -> dict[str, object]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_XRAY")},
        "PYTHONPATH": str(REPO / "shared"),
        "DATABASE_URL": "postgresql+pg8000://u:p@127.0.0.1:1/d?sslmode=disable",
        "JOBS_QUEUE_URL": "http://127.0.0.1:1/queue/jobs",
        "API_TOKEN": "not-a-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import app; "
        "x = sys.modules.get('promptrun.extraction'); "
        "built = [n for n in sys.argv[2:] if x and getattr(x, n).__pydantic_complete__]; "
        "print(json.dumps({'modules': sorted(sys.modules), 'built': built}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "functions" / function), *LAZY_MODELS],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO / "functions" / function,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def heavy(modules: object, prefixes: tuple[str, ...]) -> set[str]:
    assert isinstance(modules, list)
    return {m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)}


def test_the_processor_imports_no_sqlalchemy_and_builds_no_extraction_validators() -> None:
    found = imported("processor")
    assert "pg8000.core" in found["modules"]  # the check sees what was imported
    # Its statements are text on its own pool (promptrun.db.pool): no SQLAlchemy at all,
    # until a batch it finished needs the visibility comparison.
    assert heavy(found["modules"], (*NEVER, "sqlalchemy")) == set()
    # The batch path writes with its own SQL: the tables' definitions are the per-job path's.
    assert "promptrun.db.schema" not in found["modules"]
    assert found["built"] == []


def test_the_status_api_imports_core_only_and_not_the_catalogue() -> None:
    found = imported("status")
    assert "promptrun.queries" in found["modules"]
    # The catalogue (its models, brands' sync) is an operator's; the API needs a slug pattern.
    # Powertools' OpenAPI models: the first /openapi.json imports them, no request needs them.
    openapi = "aws_lambda_powertools.event_handler.openapi.models"
    assert heavy(found["modules"], (*NEVER, "promptrun.catalog", openapi)) == set()


@pytest.mark.parametrize("function", ["fanout", "maintenance"])
def test_the_scheduled_functions_import_core_only(function: str) -> None:
    found = imported(function)
    assert f"promptrun.{function}" in found["modules"]
    assert heavy(found["modules"], NEVER) == set()


def test_the_layer_ships_bytecode_that_needs_no_timestamps() -> None:
    """/opt is read-only in Lambda: a layer without bytecode compiles every module it imports
    in every cold start. The build removes what pip and the checkout left, then compiles."""
    build = (REPO / "shared" / "Makefile").read_text()
    removed = build.index("-name __pycache__ -prune -exec rm -rf")
    compiled = build.index("-m compileall")
    assert removed < compiled
    step = build[compiled : build.index("\n", build.index("\\\n", compiled) + 2)]
    assert "--invalidation-mode unchecked-hash" in step and "-p /opt/python" in step
    # The RDS CA bundle filed by subject hash for the functions (tests/integration/
    # test_db_tls_ca_dir.py checks the directory against a real server).
    assert 'ca_index.py promptrun/db/rds-ca-bundle.pem "$(SITE)/promptrun/db/rds-ca"' in build
