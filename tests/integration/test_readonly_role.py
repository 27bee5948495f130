"""The README's SQL for the status API's read-only role, run against real PostgreSQL: the
status API works through that role, and the role cannot write."""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from promptrun.api import build_app
from promptrun.db.engine import engine_for_url
from promptrun.local.events import api_gateway_event
from promptrun.local.lambda_runtime import LocalContext

REPO = Path(__file__).resolve().parents[2]
TOKEN = "readonly-test-token"


def readme_sql() -> str:
    match = re.search(
        r"```sql\n(CREATE ROLE promptrun_readonly.*?)```", (REPO / "README.md").read_text(), re.S
    )
    assert match, "the README's read-only role SQL is missing"
    return match[1]


@pytest.fixture
def readonly_url(engine: Engine, db_url: str) -> Iterator[str]:
    # Roles are cluster-wide: a name and password of this test's own.
    role = f"promptrun_readonly_{uuid.uuid4().hex[:8]}"
    password = secrets.token_hex(12)
    database = make_url(db_url).database or ""
    sql = (
        readme_sql()
        .replace("promptrun_readonly", role)
        .replace("'change-me'", f"'{password}'")
        .replace("DATABASE promptrun", f'DATABASE "{database}"')
    )
    with engine.begin() as conn:
        for statement in [s for s in sql.split(";") if s.strip()]:
            body = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
            conn.execute(text(body))
    url = make_url(db_url).set(username=role, password=password)
    yield url.render_as_string(hide_password=False)
    with engine.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{role}"'))
        conn.execute(text(f'DROP ROLE "{role}"'))


def test_the_status_api_reads_through_the_read_only_role(
    readonly_url: str, small_catalog: str
) -> None:
    ro = engine_for_url(readonly_url)
    try:
        app = build_app(lambda: ro, lambda: TOKEN)
        for path in ("/batches", "/jobs", "/entities", "/openapi.json"):
            event = api_gateway_event(path, headers={"Authorization": f"Bearer {TOKEN}"})
            response: dict[str, Any] = app.resolve(event, LocalContext("StatusFunction", 29))  # type: ignore[arg-type]
            assert response["statusCode"] == 200, (path, response["body"])
            json.loads(response["body"])
        with pytest.raises(DBAPIError, match="read-only transaction"), ro.begin() as conn:
            conn.execute(text("DELETE FROM prompts"))
        # A session that asks for read-write still holds no write privilege.
        with pytest.raises(DBAPIError, match="permission denied"), ro.begin() as conn:
            conn.execute(text("SET TRANSACTION READ WRITE"))
            conn.execute(text("UPDATE prompt_jobs SET status = 'cancelled'"))
    finally:
        ro.dispose()
