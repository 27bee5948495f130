"""CLI verbs for results: `promptrun visibility`, `promptrun export`, `promptrun api`
(hooked into promptrun.cli by one line), and the demo's closing visibility table."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date
from pathlib import Path
from typing import Any

from promptrun.errors import InputError

API_PORT = 8321  # the first choice; each checkout keeps the port it got in .local/ports.json


def api_port() -> int:
    """This checkout's port for `promptrun api`: PROMPTRUN_API_PORT, else the saved one."""
    from promptrun.local import ports

    local = Path(os.environ.get("PROMPTRUN_LOCAL_DIR", ".local"))
    return ports.choose(local, "api", default=API_PORT, env_var="PROMPTRUN_API_PORT")


def _engine() -> Any:
    from promptrun.db.engine import engine_from_env

    return engine_from_env()


def _day(field: str) -> Any:
    def parse(value: str) -> date:
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{field}: expected a date YYYY-MM-DD, got {value!r}"
            ) from None

    return parse


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def visibility_table(report: Any) -> str:
    """Rows per group and brand: rate with its interval, share of voice, position."""
    header = (
        f"{report.group_by:<18} {'brand':<16} {'answers':>7} {'rate':>5}  {'95% interval':<12} "
        f"{'voice':>5} {'pos':>5} {'first':>5}"
    )
    lines = [header, "-" * len(header)]
    for g in report.groups:
        for b in g.brands:
            interval = (
                f"[{_pct(b.mention_rate_low)}, {_pct(b.mention_rate_high)}]"
                if b.mention_rate_low is not None
                else "-"
            )
            name = b.name + (" *" if b.own else "")
            position = "-" if b.average_position is None else f"{b.average_position:.1f}"
            lines.append(
                f"{g.key:<18} {name:<16} {b.answers:>7} {_pct(b.mention_rate):>5}  {interval:<12} "
                f"{_pct(b.share_of_voice):>5} {position:>5} {_pct(b.first_position_rate):>5}"
            )
    lines.append(
        "* your brand. rate: answers naming the brand (95% Wilson interval); voice: its share of "
        "the tracked brands' mentions; pos: average position (1 = named first)."
    )
    return "\n".join(lines)


def cmd_visibility(args: argparse.Namespace) -> int:
    from promptrun import visibility

    s = visibility.Slice(
        prompt=args.prompt,
        model=args.model,
        date_from=args.date_from,
        date_to=args.date_to,
        batch_keys=tuple(args.batch_key) if args.batch_key else None,
    )
    report = visibility.visibility(_engine(), s, brand=args.brand, group_by=args.group_by)
    print(visibility_table(report))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from promptrun import export

    if args.format == "parquet" and not args.output:
        raise InputError("--format parquet needs --output FILE")
    f = export.ExportFilter(
        batch_key=args.batch_key,
        date_from=args.date_from,
        date_to=args.date_to,
        prompt=args.prompt,
        model=args.model,
    )
    out = Path(args.output) if args.output else None
    n = export.write(_engine(), args.table, f, args.format, out)
    if out:
        print(f"{n} {args.table} rows written to {out} ({args.format})", file=sys.stderr)
    return 0


def dashboard_url(port: int | None = None) -> str:
    return f"http://127.0.0.1:{port or api_port()}/dashboard"


def cmd_api(args: argparse.Namespace) -> int:
    from promptrun.local.api_server import LocalApi, status_app_resolver
    from promptrun.local.ports import port_number

    port = api_port() if args.port is None else port_number("--port", args.port)
    server = LocalApi(status_app_resolver(), host="127.0.0.1", port=port)
    print(f"status API on {server.url} (dashboard: {server.url}/dashboard); Ctrl-C stops it")
    print("token: the API_TOKEN of the environment (.local/api-token for the local stack)")
    try:
        server.serve_forever()
    finally:
        server.server.server_close()
    return 0


def demo_epilogue(batch_keys: list[str]) -> None:
    """The demo's last words: who the models name, how surely, and where to look."""
    from promptrun import visibility

    engine = _engine()
    report = visibility.visibility(
        engine, visibility.Slice(batch_keys=tuple(batch_keys)), group_by="model"
    )
    print()
    if report.groups and report.groups[0].brands:
        print(f"visibility in {', '.join(batch_keys)} ({report.answers} answers):")
        print(visibility_table(report))
    else:
        print("visibility: no brands in the catalogue (add a `brands:` section)")
    print()
    print(f"dashboard: `make api`, then open {dashboard_url()} (token: .local/api-token)")


def _slice_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", help="prompt slug")
    p.add_argument("--model", help="model slug")
    p.add_argument("--from", dest="date_from", type=_day("--from"), help="YYYY-MM-DD")
    p.add_argument("--to", dest="date_to", type=_day("--to"), help="YYYY-MM-DD")


def register(sub: Any) -> None:
    vis = sub.add_parser("visibility", help="mention rate, share of voice, position per brand")
    vis.add_argument("--brand", help="brand slug (default: every tracked brand)")
    vis.add_argument("--batch-key", action="append", help="only these batches")
    vis.add_argument(
        "--group-by",
        choices=["batch", "model", "prompt"],
        default="model",
        help="one row per brand and batch, model or prompt (default: model)",
    )
    _slice_args(vis)
    vis.set_defaults(func=cmd_visibility)

    exp = sub.add_parser("export", help="answers or mentions as csv, jsonl or parquet")
    exp.add_argument("--batch-key", help="one batch (or --from/--to)")
    exp.add_argument(
        "--format", choices=["csv", "jsonl", "parquet"], default="csv", help="default: csv"
    )
    exp.add_argument(
        "--table",
        choices=["answers", "mentions"],
        default="answers",
        help="one row per answer, or one per mention (default: answers)",
    )
    exp.add_argument("--output", "-o", help="file (default: standard output; parquet needs one)")
    _slice_args(exp)
    exp.set_defaults(func=cmd_export)

    api = sub.add_parser("api", help="serve the status API and the dashboard on 127.0.0.1")
    api.add_argument(
        "--port",
        type=int,
        help="port on 127.0.0.1 (default: this checkout's, chosen once and kept in .local)",
    )
    api.set_defaults(func=cmd_api)
