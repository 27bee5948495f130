"""`promptrun export` (csv, jsonl, parquet), `promptrun visibility`, and `promptrun api`'s
server over real HTTP, against real PostgreSQL."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import Engine

from promptrun.api import build_app
from promptrun.catalog import load_catalog, sync_catalog
from promptrun.cli import main
from promptrun.local.api_server import LocalApi
from promptrun.settings import get_settings
from tests.support.results import BRANDS_CATALOG, Answers, day

TOKEN = "cli-test-token"


@pytest.fixture
def answers(engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Answers:
    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    sync_catalog(engine, load_catalog(BRANDS_CATALOG))
    a = Answers(engine)
    a.add("2026-01-01", day(0), "alpha", "crm", 0, ["Acme CRM", "Globex"])
    a.add("2026-01-01", day(0), "alpha", "crm", 1, ["Initech"])
    a.add("2026-01-02", day(1), "beta", "crm", 0, ["acme.com"])
    return a


def test_export_csv_jsonl_parquet(
    answers: Answers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "answers.csv"
    assert main(["export", "--batch-key", "2026-01-01", "--format", "csv", "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert sorted(r["entities"] for r in rows) == ["Acme CRM; Globex", "Initech"]
    assert {r["entities"]: r["brands"] for r in rows}["Acme CRM; Globex"] == "acme; globex"
    assert (
        main(
            [
                "export",
                "--from",
                "2026-01-02",
                "--to",
                "2026-01-02",
                "--table",
                "mentions",
                "--format",
                "jsonl",
            ]
        )
        == 0
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["entity"], x["brand"], x["own_brand"]) for x in lines] == [
        ("acme.com", "acme", True)
    ]
    pq = pytest.importorskip("pyarrow.parquet")
    target = tmp_path / "mentions.parquet"
    assert main(["export", "--table", "mentions", "--format", "parquet", "-o", str(target)]) == 0
    table = pq.read_table(target)
    assert table.num_rows == 4 and "brand" in table.column_names


def test_export_names_bad_input(answers: Answers, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--batch-key", "2026-01-01", "--from", "2026-01-01"]) == 2
    assert "batch_key: give a batch key or a date range, not both" in capsys.readouterr().err
    assert main(["export", "--format", "parquet"]) == 2
    assert "--format parquet needs --output FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--from", "yesterday"])
    assert "--from: expected a date YYYY-MM-DD" in capsys.readouterr().err


def test_bad_filters_are_named_and_nothing_is_written(
    answers: Answers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = tmp_path / "kept.csv"
    kept.write_text("an earlier export\n")
    for argv, message in (
        (["export", "--model", "nope", "-o", str(kept)], "model: unknown model 'nope'"),
        (["export", "--prompt", "nope"], "prompt: unknown prompt 'nope'"),
        (
            ["export", "--batch-key", "2026-01-01", "--to", "2026-01-01", "-o", str(kept)],
            "batch_key: give a batch key or a date range, not both",
        ),
        (["visibility", "--model", "nope"], "model: unknown model 'nope'"),
    ):
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert message in err and out == "", (argv, out, err)
    assert kept.read_text() == "an earlier export\n"
    for argv, message in (
        (["visibility", "--batch-key", "bad key"], "--batch-key: expected a batch key"),
        (["export", "--batch-key", "a/b"], "--batch-key: expected a batch key"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err, argv


def test_visibility_table(answers: Answers, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["visibility", "--group-by", "model"]) == 0
    out = capsys.readouterr().out
    acme = next(line for line in out.splitlines() if line.startswith("alpha") and "Acme *" in line)
    assert "50%" in acme and "[9%, 91%]" in acme


def get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_local_api_server_over_http(engine: Engine, answers: Answers) -> None:
    api = LocalApi(build_app(lambda: engine, lambda: TOKEN).resolve, port=0, quiet=True).start()
    try:
        status, _, body = get(f"{api.url}/visibility?brand=acme")
        assert status == 401 and json.loads(body)["statusCode"] == 401
        status, headers, body = get(f"{api.url}/visibility?brand=acme&group_by=batch", TOKEN)
        assert status == 200, body
        groups = json.loads(body)["groups"]
        assert [g["key"] for g in groups] == ["2026-01-01", "2026-01-02"]
        status, headers, body = get(f"{api.url}/export?format=csv&table=mentions", TOKEN)
        assert status == 200 and headers["Content-Type"].startswith("text/csv")
        assert body.decode().count("\r\n") == 5  # header + four mentions
        status, headers, body = get(f"{api.url}/dashboard")
        assert status == 200 and b"<h1>promptrun</h1>" in body
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        status, _, body = get(f"{api.url}/visibility?group_by=week", TOKEN)
        assert status == 422 and json.loads(body)["detail"][0]["loc"] == ["query", "group_by"]
    finally:
        api.stop()


def test_make_api_keeps_its_port_while_it_serves(
    answers: Answers, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`promptrun api` records itself: the demo's URL is the one it answers on, and a second
    `promptrun api` says it runs already instead of moving the checkout to another port."""
    from promptrun.cli_results import api_port

    monkeypatch.setenv("PROMPTRUN_LOCAL_DIR", str(tmp_path))
    monkeypatch.delenv("PROMPTRUN_API_PORT", raising=False)
    env = {**os.environ, "DATABASE_URL": db_url, "API_TOKEN": TOKEN}
    promptrun = str(Path(sys.executable).with_name("promptrun"))
    proc: subprocess.Popen[str] = subprocess.Popen(
        [promptrun, "api"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("status API on http://127.0.0.1:"), first
        url = first.split()[3]
        port = int(url.rsplit(":", 1)[1])
        status, _, body = get(f"{url}/visibility?group_by=batch", TOKEN)
        assert status == 200 and json.loads(body)["groups"], body
        assert api_port() == port  # the demo's URL while it serves
        again = subprocess.run(
            [promptrun, "api"], env=env, capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 2
        assert f"already runs on http://127.0.0.1:{port} (pid {proc.pid})" in again.stderr
        assert api_port() == port
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert not (tmp_path / "api.pid").exists()
    assert json.loads((tmp_path / "ports.json").read_text())["api"] == port
