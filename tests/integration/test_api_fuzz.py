"""schemathesis against the status API served over HTTP from this process (real resolver,
real PostgreSQL, moto's SQS): over a thousand generated requests, the POST routes included,
and not one 5xx or response outside the documented schema."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from promptrun.api import app_from_settings
from promptrun.aws import JobQueue
from promptrun.fanout import FanoutRequest, run_fanout
from promptrun.settings import Settings
from tests.conftest import sync
from tests.integration.test_operator import AT, CATALOG
from tests.support.http_api import serve

REPO = Path(__file__).resolve().parents[2]
MIN_CASES = 1000


def test_schemathesis_finds_no_server_error(
    engine: Engine, settings: Settings, sqs: Any, tmp_path: Path
) -> None:
    sync(engine, CATALOG)
    run_fanout(engine, JobQueue(settings.jobs_queue_url or ""), FanoutRequest(at=AT), settings)
    with serve(app_from_settings(settings)) as api:
        proc = subprocess.run(
            [
                str(REPO / ".venv" / "bin" / "schemathesis"), "run", f"{api.base_url}/openapi.json",
                "--url", api.base_url,
                "--header", f"Authorization: Bearer {settings.api_token}",
                "--checks", "not_a_server_error,response_schema_conformance",
                "--phases", "examples,coverage,fuzzing",
                "--max-examples", "110",
                "--workers", "2",
                "--seed", "20261123",
                "--generation-database", "none",
                "--request-timeout", "30",
                "--no-color",
            ],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        statuses = Counter(api.statuses)
    summary = f"{proc.stdout[-3000:]}\n{proc.stderr[-1000:]}\nstatuses: {dict(statuses)}"
    assert proc.returncode == 0, summary
    assert sum(statuses.values()) >= MIN_CASES, summary
    assert not [s for s in statuses if s >= 500], summary
    # The POST routes were exercised for real: some changed something (200) and some were refused.
    assert statuses[200] and statuses[404] and statuses[422], summary
