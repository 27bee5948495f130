"""`promptrun`: the operator's command line.

promptrun db upgrade
promptrun catalog check FILE | sync FILE [--prune]
promptrun run [--batch-key K [--prompt SLUG ...] [--model SLUG ...] [--include-disabled]]
promptrun poll [--until-done BATCH ...] [--lambda-endpoint URL]
promptrun summary BATCH            promptrun watch BATCH
promptrun local up | down          promptrun demo
Operators' verbs (jobs, show, entities, retry, cancel, rerun, dlq, prune): cli_operator.py.
Flow control (pause|resume --model SLUG | --provider NAME, models): cli_flow.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from promptrun import cli_flow, cli_operator, cli_results
from promptrun.cli_errors import run_guarded
from promptrun.cli_output import StatusLine
from promptrun.errors import InputError, PromptrunError
from promptrun.local.events import api_gateway_event, bearer, scheduled_event

LOCAL_ROOT = Path(os.environ.get("PROMPTRUN_LOCAL_DIR", ".local"))


def _engine() -> Any:
    from promptrun.db.engine import engine_from_env

    return engine_from_env()


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from promptrun.db import migrate

    engine = _engine()
    before = migrate.current(engine)
    migrate.upgrade(engine)
    after = migrate.current(engine)
    print(f"database at revision {after}" + ("" if before == after else f" (was {before})"))
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from promptrun.catalog import load_catalog_file, sync_catalog

    if args.prune and args.action != "sync":
        raise InputError("catalog: --prune goes with sync (check changes nothing)")
    catalog = load_catalog_file(Path(args.file))
    if args.action == "check":
        print(f"{args.file}: {len(catalog.models)} models, {len(catalog.prompts)} prompts, valid")
        return 0
    engine = _engine()
    report = sync_catalog(engine, catalog, prune=args.prune)
    for line in report.lines():
        print(line)
    if report.budgets_changed:
        print(cli_flow.after_budgets_changed(engine, report.budgets_changed))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from promptrun.local.lambda_runtime import invoke

    if not args.batch_key and (args.prompt or args.model or args.include_disabled):
        # Without a batch key the run is the scheduled one, for every due prompt and model.
        raise InputError("run: --prompt, --model and --include-disabled need --batch-key")
    if args.include_disabled and not args.prompt:
        raise InputError("run: --include-disabled needs --prompt naming the disabled prompts")
    if args.batch_key:
        event: dict[str, Any] = {"batch_key": args.batch_key}
        if args.prompt:
            event["prompts"] = args.prompt
        if args.model:
            event["models"] = args.model
        if args.include_disabled:
            event["include_disabled"] = True
    else:
        event = scheduled_event(datetime.now(UTC))
    print(json.dumps(invoke("fanout", event), indent=2))
    return 0


def _require_batches(batch_keys: list[str]) -> None:
    from sqlalchemy import text

    from promptrun.schedule import validate_batch_key

    for key in batch_keys:
        validate_batch_key(key)
    with _engine().connect() as conn:
        known = set(
            conn.execute(
                text("SELECT DISTINCT batch_key FROM prompt_jobs WHERE batch_key = ANY(:k)"),
                {"k": batch_keys},
            ).scalars()
        )
    unknown = sorted(set(batch_keys) - known)
    if unknown:
        raise InputError(f"no such batch: {', '.join(unknown)}")


def _batch_finished(batch_keys: list[str]) -> bool:
    from sqlalchemy import text

    with _engine().connect() as conn:
        left = conn.execute(
            text(
                "SELECT count(*) FROM prompt_jobs WHERE batch_key = ANY(:k) AND status IN ('queued', 'processing')"
            ),
            {"k": batch_keys},
        ).scalar_one()
    return left == 0


# In a log: a line when the counts change, at most every second (the flow bench reads the last).
_poll_line = StatusLine(every=1.0)


def _progress(stats: Any, final: bool = False) -> None:
    _poll_line.show(
        f"poller: {stats.batches} batches, {stats.acknowledged} done, {stats.failed} to retry",
        final=final,
    )


def cmd_poll(args: argparse.Namespace) -> int:
    from promptrun.aws import client
    from promptrun.local.lambda_runtime import invoke
    from promptrun.local.poller import LocalPoller, lambda_invoker
    from promptrun.settings import get_settings

    settings = get_settings().require("queue")
    if args.timeout is not None and args.until_done is None:
        raise InputError(
            "poll: --timeout goes with --until-done (without it the poller runs until Ctrl-C)"
        )
    if args.function is not None and not args.lambda_endpoint:
        raise InputError("poll: --function names a function at --lambda-endpoint; give both")
    timeout = _seconds("--timeout", args.timeout, 600)
    if args.until_done is not None:
        if not args.until_done:
            raise InputError("poll: --until-done needs the batch keys to wait for")
        _require_batches(args.until_done)
    if args.lambda_endpoint:
        import boto3
        from botocore.config import Config

        lam = boto3.client(
            "lambda",
            endpoint_url=args.lambda_endpoint,
            config=Config(read_timeout=900, retries={"max_attempts": 0}),
        )
        invoker = lambda_invoker(lam, args.function or "ProcessorFunction")
    else:

        def invoker(event: dict[str, Any]) -> dict[str, Any]:
            return dict(invoke("processor", event, timeout_seconds=60))

    poller = LocalPoller(client("sqs"), settings.jobs_queue_url or "", invoker, wait_seconds=1)
    if args.until_done:
        try:
            poller.run_until(
                lambda: _batch_finished(args.until_done),
                timeout=timeout,
                on_progress=_progress,
            )
        finally:
            _progress(poller.stats, final=True)
            _poll_line.close()
    else:
        while True:
            poller.poll_once()
            _progress(poller.stats)
    return 0


def batch_summary(batch_key: str) -> dict[str, Any]:
    """The summary, from the status API handler (the same JSON a client gets)."""
    from promptrun.local.lambda_runtime import invoke
    from promptrun.settings import get_settings

    token = get_settings().api_token or ""
    event = api_gateway_event(
        f"/batches/{batch_key}",
        resource="/batches/{batch_key}",
        path_params={"batch_key": batch_key},
        headers=bearer(token),
    )
    resp = invoke("status", event)
    if resp["statusCode"] != 200:
        raise PromptrunError(f"status API answered {resp['statusCode']}: {resp['body']}")
    return dict(json.loads(resp["body"]))


def render_summary(s: dict[str, Any]) -> str:
    from promptrun.summary_table import render

    return render(s)


def cmd_summary(args: argparse.Namespace) -> int:
    print(render_summary(batch_summary(args.batch_key)))
    return 0


def _seconds(option: str, value: float | None, default: float) -> float:
    """A duration option: not negative (a negative sleep or deadline is a traceback or a lie)."""
    if value is None:
        return default
    if not value >= 0:  # NaN too
        raise InputError(f"{option}: seconds, 0 or more; got {value:g}")
    return value


def cmd_watch(args: argparse.Namespace) -> int:
    _seconds("--interval", args.interval, 3)
    deadline = time.monotonic() + _seconds("--timeout", args.timeout, 3600)
    while True:
        s = batch_summary(args.batch_key)
        print(render_summary(s))
        if _batch_finished([args.batch_key]):
            return 0
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {args.batch_key} not finished after {args.timeout:.0f}s")
        time.sleep(args.interval)


def cmd_local(args: argparse.Namespace) -> int:
    from promptrun.local import stack

    if args.action == "up":
        env = stack.up(LOCAL_ROOT)
        saved = stack.ports.saved(LOCAL_ROOT)
        print(
            f"local stack up: PostgreSQL :{saved.get('postgres')}, moto {env['AWS_ENDPOINT_URL']}; source {LOCAL_ROOT}/env.sh"
        )
    else:
        stack.down(LOCAL_ROOT)
        print("local stack down")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Fan out the scheduled event for now, process every job, print the batch summaries."""
    from promptrun.local.lambda_runtime import invoke

    event = scheduled_event(datetime.now(UTC))
    print(f"fan-out for {event['time']} ...")
    result = invoke("fanout", event)
    print(
        f"  {result['created']} jobs created, {result['existing']} already there, {result['sent']} sent"
    )
    keys = sorted(result["batches"])
    args.until_done = keys
    args.lambda_endpoint = args.lambda_endpoint or None
    if keys:
        cmd_poll(args)
    for key in keys:
        print()
        print(render_summary(batch_summary(key)))
    cli_results.demo_epilogue(keys)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptrun", description="Run LLM prompts on a schedule.")
    sub = parser.add_subparsers(dest="command", required=True)
    db = sub.add_parser("db", help="database schema")
    db.add_argument(
        "action", choices=["upgrade"], help="upgrade: apply the migrations (safe to repeat)"
    )
    db.set_defaults(func=cmd_db_upgrade)
    cat = sub.add_parser("catalog", help="validate or sync a catalogue file")
    cat.add_argument("action", choices=["check", "sync"], help="check: validate only; sync: upsert")
    cat.add_argument("file", help="the catalogue YAML file")
    cat.add_argument(
        "--prune",
        action="store_true",
        help="with sync: disable the prompts and models the file no longer has",
    )
    cat.set_defaults(func=cmd_catalog)
    run = sub.add_parser("run", help="fan out a batch now (the fan-out handler, in this process)")
    run.add_argument(
        "--batch-key", help="a manual batch under this key (default: the scheduled run for now)"
    )
    run.add_argument(
        "--prompt", action="append", metavar="SLUG", help="only this prompt (repeat for more)"
    )
    run.add_argument(
        "--model", action="append", metavar="SLUG", help="only this model (repeat for more)"
    )
    run.add_argument(
        "--include-disabled",
        action="store_true",
        help="run the named prompts even when disabled in the catalogue",
    )
    run.set_defaults(func=cmd_run)
    for name, func, helptext in (
        ("poll", cmd_poll, "the local SQS -> processor poller"),
        ("demo", cmd_demo, "fan out now, process, summarise"),
    ):
        p = sub.add_parser(name, help=helptext)
        if name == "poll":
            p.add_argument(
                "--until-done",
                nargs="*",
                metavar="BATCH",
                help="stop once these batches are finished (default: poll until interrupted)",
            )
        p.add_argument(
            "--lambda-endpoint",
            help="invoke the processor through this Lambda API (sam local start-lambda)",
        )
        p.add_argument(
            "--function",
            help="the function name at --lambda-endpoint (default ProcessorFunction)",
        )
        p.add_argument(
            "--timeout",
            type=float,
            help="with --until-done: give up after this many seconds (600)",
        )
        p.set_defaults(func=func)
    summ = sub.add_parser("summary", help="a batch's summary, from the status API")
    summ.add_argument("batch_key", help="the batch key, e.g. 2026-11-22")
    summ.set_defaults(func=cmd_summary)
    watch = sub.add_parser(
        "watch", help="the summary every few seconds until the batch is finished"
    )
    watch.add_argument("batch_key", help="the batch key, e.g. 2026-11-22")
    watch.add_argument("--interval", type=float, default=3, help="seconds between summaries (3)")
    watch.add_argument(
        "--timeout", type=float, default=3600, help="give up after this many seconds (3600)"
    )
    watch.set_defaults(func=cmd_watch)
    cli_operator.add_commands(sub)
    cli_flow.add_commands(sub)
    local = sub.add_parser("local", help="start or stop the local PostgreSQL and moto")
    local.add_argument("action", choices=["up", "down"], help="up: start (idempotent); down: stop")
    local.set_defaults(func=cmd_local)
    cli_results.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: int(args.func(args)))


if __name__ == "__main__":
    sys.exit(main())
