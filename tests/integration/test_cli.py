"""The `promptrun` command: refusals of what cannot work, one-line errors with non-zero exits
(never a traceback), and the operators' verbs against real PostgreSQL and moto."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from promptrun import cli
from promptrun.settings import Settings, get_settings
from tests.integration.test_operator import DAILY, fanned_out, job, message_ids, set_status
from tests.support.sqs import receive_all

REPO = Path(__file__).resolve().parents[2]
PROMPTRUN = str(REPO / ".venv" / "bin" / "promptrun")


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    values = {
        "DATABASE_URL": settings.database_url or "",
        "JOBS_QUEUE_URL": settings.jobs_queue_url or "",
        "API_TOKEN": "t",
        "POWERTOOLS_LOG_LEVEL": "ERROR",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield values
    get_settings.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def batch(
    engine: Engine, settings: Settings, sqs: Any, env: dict[str, str]
) -> dict[str, uuid.UUID]:
    return fanned_out(engine, settings, sqs)


# --- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["run", "--prompt", "crm"], "need --batch-key"),
        (["run", "--model", "alpha"], "need --batch-key"),
        (["run", "--batch-key", "k", "--include-disabled"], "needs --prompt"),
        (["poll", "--until-done"], "needs the batch keys"),
        (["poll", "--until-done", "1999-01-01"], "no such batch: 1999-01-01"),
        (["cancel", "1999-01-01"], "batch 1999-01-01 has no jobs"),
        (["cancel", DAILY, "--model", "gamma"], "unknown model 'gamma'"),
        (["cancel"], "name a batch"),
        (["retry", DAILY, "--job", str(uuid.UUID(int=1))], "not both"),
        (["retry", DAILY, "--status", "succeeded"], "succeeded cannot be retried"),
        (["retry", "--job", "nope"], "not a job id"),
        (["rerun"], "--changed"),
        (["catalog", "check", "examples/catalog.yaml", "--prune"], "--prune goes with sync"),
        (["show", str(uuid.UUID(int=7))], "not found"),
        (["jobs", "--prompt", "nope"], "unknown prompt 'nope'"),
        (["prune", "--older-than", "soon"], "--older-than"),
        # Options that were silently ignored or ended in a traceback or a database error.
        (["prune", "--older-than", "90d", "--chunk", "0"], "--chunk: jobs per transaction"),
        (["prune", "--older-than", "90d", "--chunk", "-5"], "--chunk: jobs per transaction"),
        (["poll", "--timeout", "5"], "--timeout goes with --until-done"),
        (["poll", "--until-done", DAILY, "--function", "F"], "--function names a function"),
        (["poll", "--until-done", DAILY, "--timeout", "-1"], "--timeout: seconds, 0 or more"),
        (["watch", DAILY, "--interval", "-1"], "--interval: seconds, 0 or more"),
        (["watch", DAILY, "--timeout", "nan"], "--timeout: seconds, 0 or more"),
    ],
)
def test_combinations_that_cannot_work_are_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], batch: dict[str, uuid.UUID], argv: list[str], says: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code != 0
    assert says in err, err
    assert err.startswith("promptrun: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["retry", "1999-01-01"],
        ["cancel", DAILY, "--prompt", "nope"],
        ["cancel", "--job", str(uuid.UUID(int=9))],
        ["show", str(uuid.UUID(int=9))],
        ["rerun", "--changed", "--batch-key", "1999-01-01"],
        ["jobs", "--model", "nope"],
        ["poll", "--until-done", "1999-01-01"],
    ],
)
def test_a_name_that_does_not_exist_is_bad_input_exit_2(
    capsys: pytest.CaptureFixture[str], batch: dict[str, uuid.UUID], argv: list[str]
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2, err


def test_every_option_has_help() -> None:
    parser = cli.build_parser()
    missing = []
    subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    for name, sub in subparsers[0].choices.items():  # type: ignore[attr-defined]
        for action in sub._actions:
            if action.dest != "help" and not action.help:
                missing.append(f"{name} {action.dest}")
    assert missing == []


# --- the verbs --------------------------------------------------------------------------------


def test_retry_cancel_and_read_results_from_the_terminal(
    capsys: pytest.CaptureFixture[str],
    engine: Engine,
    settings: Settings,
    sqs: Any,
    batch: dict[str, uuid.UUID],
) -> None:
    code, out, _ = run(capsys, "cancel", DAILY, "--model", "beta")
    assert code == 0 and out.startswith("2 queued jobs cancelled; 0 running"), out
    set_status(engine, batch["alpha0"], "failed", error_kind="server")

    code, out, err = run(capsys, "retry", DAILY, "--status", "cancelled", "--model", "beta")
    assert code == 0 and out.startswith("2 jobs back to queued"), out
    assert "sending retried jobs: 2" in err  # progress, on stderr
    assert {
        json.loads(m["Body"])["job_id"]
        for m in receive_all(sqs, settings.jobs_queue_url, delete=True)
    } == {
        str(batch["beta0"]),
        str(batch["beta1"]),
    }
    assert job(engine, batch["alpha0"])["status"] == "failed"  # filtered out
    code, out, _ = run(capsys, "retry", "--job", str(batch["alpha0"]))
    assert code == 0 and out.startswith("1 jobs back to queued"), out

    code, out, _ = run(capsys, "jobs", "--batch-key", DAILY, "--model", "alpha")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split("\t")[:3] == ["id", "batch", "prompt"]
    assert len(lines) == 1 + 2 + 1 and lines[-1] == "queued 2"

    code, out, _ = run(capsys, "jobs", "--status", "queued", "--limit", "1", "--json")
    page = json.loads(out)
    assert len(page["items"]) == 1 and page["next_cursor"]

    code, out, _ = run(capsys, "show", str(batch["alpha1"]))
    assert code == 0 and "id " in out and "no answer" in out


def test_rerun_dlq_and_prune_from_the_terminal(
    capsys: pytest.CaptureFixture[str],
    engine: Engine,
    settings: Settings,
    sqs: Any,
    batch: dict[str, uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.conftest import sync
    from tests.integration.test_dlq_and_retention import dlq_url_of
    from tests.integration.test_operator import CATALOG

    code, out, _ = run(capsys, "rerun", "--changed")
    assert code == 0 and out.startswith("no prompt needs a re-run"), out
    sync(engine, CATALOG.replace("best CRM tools?", "best CRM tools for a florist?"))
    code, out, _ = run(capsys, "rerun", "--changed")
    assert code == 0 and "re-ran crm: 4 jobs created, 4 sent" in out, out
    assert len(receive_all(sqs, settings.jobs_queue_url, delete=True)) == 4

    dlq_url = dlq_url_of(sqs, settings.jobs_queue_url or "")
    monkeypatch.setenv("JOBS_DLQ_URL", dlq_url)
    get_settings.cache_clear()
    set_status(engine, batch["alpha1"], "succeeded")
    for job_id in (batch["alpha0"], batch["alpha1"]):
        sqs.send_message(QueueUrl=dlq_url, MessageBody=json.dumps({"job_id": str(job_id)}))
    code, out, err = run(capsys, "dlq", "show")
    assert "reading the dead-letter queue: 2" in err  # progress, on stderr
    assert code == 0 and out.strip().splitlines()[-1].startswith(
        "dead-letter queue: 1 finished, 1 runnable (nothing changed"
    ), out
    code, out, _ = run(capsys, "dlq", "redrive")
    assert code == 0 and "1 re-sent, 1 dropped, 0 kept" in out, out
    assert message_ids(sqs, settings.jobs_queue_url) == {str(batch["alpha0"])}
    assert receive_all(sqs, dlq_url) == []

    with engine.begin() as conn:
        conn.execute(
            text("UPDATE prompt_jobs SET finished_at = now() - interval '100 days' WHERE id = :id"),
            {"id": batch["alpha1"]},
        )
    code, out, _ = run(capsys, "prune", "--older-than", "90d", "--dry-run")
    assert code == 0 and out.startswith("would delete 1 finished jobs"), out
    code, out, err = run(capsys, "prune", "--older-than", "90d", "--chunk", "1")
    assert code == 0 and out.startswith("deleted 1 finished jobs"), out
    assert "pruning finished jobs: 1" in err  # progress, on stderr
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM prompt_jobs WHERE id = :id"), {"id": batch["alpha1"]}
            ).scalar_one()
            == 0
        )


def test_show_and_entities_print_the_answer_and_mentions(
    capsys: pytest.CaptureFixture[str],
    engine: Engine,
    settings: Settings,
    batch: dict[str, uuid.UUID],
) -> None:
    from promptrun.processor import JobRunner, Outcome

    runner = JobRunner(engine, settings)
    assert runner.handle(json.dumps({"job_id": str(batch["alpha0"])}), None) == Outcome.SUCCEEDED
    code, out, _ = run(capsys, "show", str(batch["alpha0"]))
    assert code == 0 and "[offline synthetic answer]" in out and "mentions" in out
    code, out, _ = run(capsys, "entities", "--batch-key", DAILY, "--json")
    report = json.loads(out)
    assert report["answers"] == 1 and report["items"]
    code, out, _ = run(capsys, "entities", "--model", "alpha")
    assert code == 0 and out.startswith("1 answers")


def test_catalog_sync_prune_disables_what_the_file_no_longer_has_and_run_by_hand(
    capsys: pytest.CaptureFixture[str], engine: Engine, tmp_path: Path, batch: dict[str, uuid.UUID]
) -> None:
    smaller = tmp_path / "c.yaml"
    smaller.write_text(
        "models:\n  - {slug: alpha, provider: offline, model: alpha-1}\nprompts: []\n"
    )
    code, out, _ = run(capsys, "catalog", "sync", str(smaller))
    assert code == 0 and "disabled" not in out
    code, out, _ = run(capsys, "catalog", "sync", str(smaller), "--prune")
    assert code == 0
    assert (
        "disabled prompt crm (not in the file)" in out
        and "disabled model beta (not in the file)" in out
    )
    with engine.connect() as conn:
        enabled = dict(conn.execute(text("SELECT slug, enabled FROM prompts")).all())
    assert enabled == {"crm": False}

    code, out, err = run(capsys, "run", "--batch-key", "by-hand", "--prompt", "crm")
    assert code != 0 and "disabled: crm" in err
    code, out, err = run(
        capsys, "run", "--batch-key", "by-hand", "--prompt", "crm", "--include-disabled"
    )
    assert code == 0, err
    result = json.loads(out[out.index('{\n  "created"') :])  # after the handler's log lines
    assert result["batches"]["by-hand"]["created"] == 2  # alpha only: beta is disabled


def test_catalog_errors_name_every_problem_on_its_own_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, env: dict[str, str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "models:\n"
        "  - {slug: m, provider: openai, model: x, params: {temperature: hot, timeout: -5, colour: red}}\n"
        "prompts:\n"
        "  - {slug: p, text: hi, schedule: daily}\n"
    )
    code, _, err = run(capsys, "catalog", "check", str(bad))
    lines = err.strip().splitlines()
    assert code == 2 and lines[0] == f"promptrun: {bad}: 3 problems:"
    assert any("params.temperature: must be a number" in x for x in lines)
    assert any("params.timeout: must be >= 0.1" in x for x in lines)
    assert any(
        "params.colour: unknown param for provider openai; put provider-specific keys under extra_body"
        in x
        for x in lines
    )

    dup = tmp_path / "dup.yaml"
    dup.write_text(
        "models: []\nprompts:\n  - slug: p\n    text: a\n    text: b\n    schedule: daily\n"
    )
    code, _, err = run(capsys, "catalog", "check", str(dup))
    assert code == 2 and "duplicate key 'text'" in err and "line 5" in err

    latin = tmp_path / "latin.yaml"
    latin.write_bytes(
        'prompts:\n  - {slug: p, text: "caf\xe9", schedule: daily}\n'.encode("latin-1")
    )
    code, _, err = run(capsys, "catalog", "check", str(latin))
    assert code == 2 and "not UTF-8" in err and "line 2" in err and "Traceback" not in err


# --- never a traceback, in a real process ------------------------------------------------------


def _proc(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "POWERTOOLS_LOG_LEVEL": "ERROR"}
    return subprocess.run(
        [PROMPTRUN, *args], env=full, text=True, capture_output=True, timeout=60, **kw
    )


def test_database_unreachable_is_one_line(tmp_path: Path) -> None:
    from tests.support.stack import free_port

    done = _proc(
        ["jobs"], {"DATABASE_URL": f"postgresql+pg8000://u:secretpw@127.0.0.1:{free_port()}/db"}
    )
    assert done.returncode == 3
    assert (
        done.stderr.startswith("promptrun: database unreachable") and "Traceback" not in done.stderr
    )
    assert len(done.stderr.strip().splitlines()) == 1 and "secretpw" not in done.stderr


def test_broken_pipe_ends_quietly(batch: dict[str, uuid.UUID], env: dict[str, str]) -> None:
    # `promptrun jobs --limit 100 | head -1`: the reader goes away after one line.
    full = {**os.environ, **env}
    proc = subprocess.Popen(
        f"{PROMPTRUN} jobs --limit 100 --json | head -c 10",
        shell=True,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        executable="/bin/bash",
    )
    out, err = proc.communicate(timeout=60)
    assert len(out) == 10 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_watch_timeout_is_an_error_not_success(
    capsys: pytest.CaptureFixture[str], batch: dict[str, uuid.UUID]
) -> None:
    code, _, err = run(capsys, "watch", DAILY, "--timeout", "0", "--interval", "0")
    assert code == 4 and "not finished after 0s" in err


def test_unexpected_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from promptrun.cli_errors import run_guarded

    def boom() -> int:
        raise KeyError("x")

    assert run_guarded(boom) == 1
    assert capsys.readouterr().err == "promptrun: unexpected KeyError: 'x'\n"
    assert sys.stdout is not None
