"""`promptrun pause|resume --model SLUG | --provider NAME` and `promptrun models`: flow control
from the command line (the same operations as the status API's /models routes)."""

from __future__ import annotations

import argparse
from typing import Any


def _engine() -> Any:
    from promptrun.db.engine import engine_from_env

    return engine_from_env()


def _target(args: argparse.Namespace) -> Any:
    from promptrun.flow_status import Target

    return Target(model=args.model, provider=args.provider)


def cmd_pause(args: argparse.Namespace) -> int:
    from promptrun.flow_status import pause

    result = pause(_engine(), _target(args), args.reason)
    print(f"paused {', '.join(result.models)}: their jobs wait (queued, no attempt used)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from promptrun.aws import JobQueue
    from promptrun.flow_status import resume
    from promptrun.settings import get_settings

    url = get_settings().jobs_queue_url
    result = resume(_engine(), _target(args), JobQueue(url) if url else None)
    sent = (
        "JOBS_QUEUE_URL unset: waiting jobs run at their next re-check (within 15 min)"
        if result.requeued is None
        else f"{result.requeued} waiting jobs sent back"
    )
    print(f"resumed {', '.join(result.models)}; {sent}")
    return 0


def after_budgets_changed(engine: Any, keys: list[str]) -> str:
    """`catalog sync` changed budgets: the jobs waiting on one are sent back to look again."""
    from promptrun.aws import JobQueue
    from promptrun.flow_status import requeue_budget_waits
    from promptrun.settings import get_settings

    url = get_settings().jobs_queue_url
    sent = requeue_budget_waits(engine, keys, JobQueue(url) if url else None)
    if sent is None:
        return "budgets changed; JOBS_QUEUE_URL unset: waiting jobs look again within 15 min"
    return f"budgets changed; {sent} jobs waiting on a budget sent back"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def cmd_models(args: argparse.Namespace) -> int:
    from promptrun.flow_status import list_models

    header = (
        "model",
        "conc",
        "rpm",
        "tpm",
        "eff rpm",
        "factor",
        "in flight",
        "429s",
        "waiting",
        "paused",
    )
    rows = [header]
    for m in list_models(_engine()).items:
        rows.append(
            (
                m.slug,
                _fmt(m.limits.max_concurrency),
                _fmt(m.limits.rpm),
                _fmt(m.limits.tpm),
                _fmt(m.effective.rpm),
                _fmt(m.effective.rate_factor),
                str(m.in_flight),
                str(m.throttled),
                str(m.waiting),
                (m.paused_reason or "yes") if m.paused else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def add_commands(sub: Any) -> None:
    """Hook the verbs into cli.py's subparsers."""
    for name, func, helptext in (
        ("pause", cmd_pause, "pause a model or a provider: its jobs wait, no attempt used"),
        ("resume", cmd_resume, "resume a model or a provider: its waiting jobs run now"),
    ):
        p = sub.add_parser(name, help=helptext)
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--model", help="a model slug")
        which.add_argument("--provider", help="every model of this provider (openai, ...)")
        if name == "pause":
            p.add_argument("--reason", help="shown on the waiting jobs")
        p.set_defaults(func=func)
    models = sub.add_parser("models", help="models: limits, effective rates, in flight, paused")
    models.set_defaults(func=cmd_models)
