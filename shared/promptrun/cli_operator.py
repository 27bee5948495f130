"""CLI verbs for operators: read results (jobs, show, entities) and act on them (retry, cancel,
rerun --changed, dlq show|redrive, prune). Each refuses what cannot work, with one line."""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from promptrun.errors import InputError


def _engine() -> Any:
    from promptrun.db.engine import engine_from_env

    return engine_from_env()


def _settings() -> Any:
    from promptrun.settings import get_settings

    return get_settings()


def _sender() -> Any:
    """The SQS sender when JOBS_QUEUE_URL is set; otherwise the next fan-out sends the jobs."""
    from promptrun.aws import JobQueue

    url = _settings().jobs_queue_url
    return JobQueue(url).send_jobs if url else None


def _batch_key(value: str) -> str:
    from promptrun.schedule import validate_batch_key

    return validate_batch_key(value)


def _job_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InputError(f"not a job id (a UUID): {value!r}") from None


def _print_json(model: Any) -> None:
    print(json.dumps(model.model_dump(mode="json"), indent=2))


# --- reading ------------------------------------------------------------------------------


def cmd_jobs(args: argparse.Namespace) -> int:
    from promptrun import operator, queries
    from promptrun.cli_output import table

    engine = _engine()
    operator.check_filters(engine, prompt=args.prompt, model=args.model)
    page = queries.list_jobs(
        engine,
        batch_key=_batch_key(args.batch_key) if args.batch_key else None,
        prompt=args.prompt,
        model=args.model,
        status=args.status,
        limit=args.limit,
        cursor=args.cursor,
    )
    if args.json:
        _print_json(page)
        return 0
    table(
        ["id", "batch", "prompt", "model", "run", "status", "attempts", "error", "cost USD"],
        [
            [
                j.id,
                j.batch_key,
                j.prompt,
                j.model,
                j.run_index,
                j.status.value,
                f"{j.attempt_count}/{j.max_attempts}",
                j.error_kind or "",
                f"{j.cost_usd:.6f}" if j.cost_usd is not None else "",
            ]
            for j in page.items
        ],
    )
    counts = ", ".join(f"{k} {v}" for k, v in page.summary.items() if v) or "no jobs"
    more = f"; more: --cursor {page.next_cursor}" if page.next_cursor else ""
    print(f"{counts}{more}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from promptrun import queries
    from promptrun.cli_output import table
    from promptrun.operator import NotFound

    job = queries.get_job(_engine(), _job_id(args.job_id))
    if job is None:
        raise NotFound(f"job {args.job_id} not found", "job_id")
    if args.json:
        _print_json(job)
        return 0
    fields = job.model_dump(mode="json", exclude={"response", "mentions"})
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        if value is not None:
            print(f"{key.ljust(width)}  {value}")
    if job.response is None:
        print("\n(no answer: the job has not succeeded)")
        return 0
    print("\nanswer:\n" + job.response.answer_text)
    print()
    table(
        ["rank", "entity", "type", "sentiment"],
        [[m.rank, m.display_name, m.type, m.sentiment] for m in job.mentions],
        title=f"{len(job.mentions)} mentions",
    )
    return 0


def cmd_entities(args: argparse.Namespace) -> int:
    from promptrun import operator, queries
    from promptrun.cli_output import table

    engine = _engine()
    operator.check_filters(engine, prompt=args.prompt, model=args.model)
    report = queries.entity_counts(
        engine,
        batch_key=_batch_key(args.batch_key) if args.batch_key else None,
        prompt=args.prompt,
        model=args.model,
        limit=args.limit,
    )
    if args.json:
        _print_json(report)
        return 0
    table(
        ["entity", "type", "mentions", "answers", "share", "avg rank"],
        [
            [
                e.display_name,
                e.type,
                e.mentions,
                e.jobs,
                "" if e.share is None else f"{e.share:.0%}",
                e.average_rank,
            ]
            for e in report.items
        ],
        title=f"{report.answers} answers",
    )
    return 0


# --- acting --------------------------------------------------------------------------------


def _one_target(args: argparse.Namespace, verb: str) -> None:
    if bool(args.batch_key) == bool(args.job):
        raise InputError(
            f"{verb}: name a batch (BATCH) or one job (--job JOB_ID), not both or neither"
        )
    if args.job and (args.model or args.prompt or getattr(args, "status", None)):
        raise InputError(f"{verb}: --model, --prompt and --status filter a batch, not --job")


def cmd_retry(args: argparse.Namespace) -> int:
    from promptrun import operator
    from promptrun.cli_output import progress

    _one_target(args, "retry")
    fresh = _settings().max_attempts
    if args.job:
        result = operator.retry_job(_engine(), _sender(), _job_id(args.job), fresh)
    else:
        statuses = [s.strip() for s in args.status.split(",") if s.strip()] if args.status else None
        with progress("sending retried jobs") as shown:
            result = operator.retry_batch(
                _engine(),
                _sender(),
                _batch_key(args.batch_key),
                statuses=statuses,
                model=args.model,
                prompt=args.prompt,
                fresh_attempts=fresh,
                on_progress=shown.update,
            )
    later = result.retried - result.sent
    print(
        f"{result.retried} jobs back to queued with {fresh} fresh attempts; {result.sent} sent"
        + (f", {later} left for the next fan-out" if later else "")
    )
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from promptrun import operator

    _one_target(args, "cancel")
    if args.job:
        result = operator.cancel_job(_engine(), _job_id(args.job))
    else:
        result = operator.cancel_batch(
            _engine(), _batch_key(args.batch_key), model=args.model, prompt=args.prompt
        )
    print(
        f"{result.cancelled} queued jobs cancelled; {result.cancel_requested} running jobs will "
        f"finish their call, then stop; {result.already_finished} already finished"
    )
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    from promptrun import operator
    from promptrun.aws import JobQueue

    if not args.changed:
        raise InputError("rerun: say what to re-run: --changed (prompts whose text changed)")
    settings = _settings().require("database", "queue")
    result = operator.rerun_changed(
        _engine(),
        JobQueue(settings.jobs_queue_url or ""),
        settings,
        _batch_key(args.batch_key) if args.batch_key else None,
    )
    if not result.prompts:
        print("no prompt needs a re-run: every latest batch ran the current version")
        return 0
    for key, counts in sorted(result.batches.items()):
        print(f"batch {key}: {counts['created']} jobs created, {counts['existing']} already there")
    print(f"re-ran {', '.join(result.prompts)}: {result.created} jobs created, {result.sent} sent")
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from promptrun import dlq
    from promptrun.aws import JobQueue, client
    from promptrun.cli_output import progress

    settings = _settings().require("database", "dlq")
    queue = None
    if args.action == "redrive":
        queue = JobQueue(settings.require("queue").jobs_queue_url or "")
    with progress("reading the dead-letter queue") as shown:
        report = dlq.check_dead_letters(
            _engine(),
            client("sqs"),
            settings.jobs_dlq_url or "",
            queue,
            redrive=args.action == "redrive",
            on_progress=shown.update,
        )
    for line in report.lines():
        print(line)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from promptrun import retention
    from promptrun.cli_output import progress

    age = retention.parse_age(args.older_than)
    if not 1 <= args.chunk <= retention.MAX_CHUNK:
        raise InputError(
            f"--chunk: jobs per transaction, 1-{retention.MAX_CHUNK}; got {args.chunk}"
        )
    if args.dry_run:
        print(retention.prune(_engine(), age, dry_run=True).line())
        return 0
    with progress("pruning finished jobs") as shown:
        report = retention.prune(
            _engine(), age, chunk=args.chunk, on_progress=lambda r: shown.update(r.jobs)
        )
    print(report.line())
    return 0


# --- the parser --------------------------------------------------------------------------


def _filters(p: argparse.ArgumentParser, batch_help: str = "only this batch") -> None:
    p.add_argument("--batch-key", help=batch_help)
    p.add_argument("--prompt", metavar="SLUG", help="only this prompt's jobs")
    p.add_argument("--model", metavar="SLUG", help="only this model's jobs")


def add_commands(sub: Any) -> None:
    """Hook the operator verbs into the `promptrun` parser."""
    from promptrun.db.models import JobStatus

    jobs = sub.add_parser("jobs", help="list jobs, newest first, with counts per status")
    _filters(jobs)
    jobs.add_argument("--status", choices=[s.value for s in JobStatus], help="only this status")
    jobs.add_argument("--limit", type=int, default=50, help="jobs per page, 1-100 (default 50)")
    jobs.add_argument("--cursor", help="the cursor printed after the previous page")
    jobs.add_argument(
        "--json", action="store_true", help="the status API's JSON instead of a table"
    )
    jobs.set_defaults(func=cmd_jobs)

    show = sub.add_parser("show", help="one job: its fields, answer and mentions")
    show.add_argument("job_id", help="the job's id (a UUID)")
    show.add_argument("--json", action="store_true", help="the status API's JSON")
    show.set_defaults(func=cmd_show)

    ent = sub.add_parser("entities", help="mention counts per entity")
    _filters(ent)
    ent.add_argument("--limit", type=int, default=50, help="entities, 1-1000 (default 50)")
    ent.add_argument("--json", action="store_true", help="the status API's JSON")
    ent.set_defaults(func=cmd_entities)

    retry = sub.add_parser(
        "retry",
        help="put failed/cancelled/skipped jobs back to queued with fresh attempts, and send them",
    )
    retry.add_argument(
        "batch_key", nargs="?", metavar="BATCH", help="the batch whose jobs to retry"
    )
    retry.add_argument("--job", metavar="JOB_ID", help="retry this one job instead of a batch")
    retry.add_argument(
        "--status",
        metavar="S1,S2",
        help="statuses to retry, comma-separated: failed, cancelled, skipped (default: all three)",
    )
    retry.add_argument("--model", metavar="SLUG", help="only this model's jobs")
    retry.add_argument("--prompt", metavar="SLUG", help="only this prompt's jobs")
    retry.set_defaults(func=cmd_retry)

    cancel = sub.add_parser(
        "cancel", help="cancel queued jobs; running ones finish their call, then stop"
    )
    cancel.add_argument("batch_key", nargs="?", metavar="BATCH", help="the batch to cancel")
    cancel.add_argument("--job", metavar="JOB_ID", help="cancel this one job instead of a batch")
    cancel.add_argument("--model", metavar="SLUG", help="only this model's jobs")
    cancel.add_argument("--prompt", metavar="SLUG", help="only this prompt's jobs")
    cancel.set_defaults(func=cmd_cancel)

    rerun = sub.add_parser(
        "rerun", help="re-run prompts whose text changed since their latest batch"
    )
    rerun.add_argument(
        "--changed",
        action="store_true",
        help="prompts whose latest batch ran an older version (required: the only kind of re-run)",
    )
    rerun.add_argument(
        "--batch-key",
        help="compare with this batch instead of each prompt's latest; new jobs go to BATCH.v<version>",
    )
    rerun.set_defaults(func=cmd_rerun)

    dlq = sub.add_parser(
        "dlq", help="the dead-letter queue checked against the database (JOBS_DLQ_URL)"
    )
    dlq.add_argument(
        "action",
        choices=["show", "redrive"],
        help="show: judge each message, change nothing; redrive: re-send runnable jobs, drop finished ones",
    )
    dlq.set_defaults(func=cmd_dlq)

    prune = sub.add_parser(
        "prune", help="delete finished jobs older than an age, with their answers and mentions"
    )
    prune.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 90d, 12h, 2w")
    prune.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    prune.add_argument(
        "--chunk",
        type=int,
        default=1000,
        help="jobs deleted per transaction, 1-10000 (default 1000)",
    )
    prune.set_defaults(func=cmd_prune)
