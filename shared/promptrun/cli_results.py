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


def _local() -> Path:
    return Path(os.environ.get("PROMPTRUN_LOCAL_DIR", ".local"))


def running_api(port: int) -> int | None:
    """The pid of this checkout's `promptrun api` serving on `port` (.local/api.pid), if any."""
    from promptrun.local import ports

    try:
        pid, served = (int(x) for x in (_local() / "api.pid").read_text().split())
    except (OSError, ValueError):
        return None
    alive = ports.pid_alive(pid) and "promptrun" in ports.cmdline(pid)
    return pid if alive and served == port else None


def api_port() -> int:
    """This checkout's port for `promptrun api`: PROMPTRUN_API_PORT, else the saved one (kept
    while this checkout's own server holds it, so the demo prints the URL it answers on)."""
    from promptrun.local import ports

    return ports.choose(
        _local(),
        "api",
        default=API_PORT,
        env_var="PROMPTRUN_API_PORT",
        ours=lambda port: running_api(port) is not None,
    )


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


def _batch_key(value: str) -> str:
    from promptrun.schedule import BATCH_KEY_RE

    if not BATCH_KEY_RE.match(value):
        raise argparse.ArgumentTypeError(
            f"--batch-key: expected a batch key like 2026-11-22, 2026-W47 or 2026-11-22T13, "
            f"got {value!r}"
        )
    return value


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

    own = args.port is None  # the checkout's own port
    port = api_port() if own else port_number("--port", args.port)
    pid = running_api(port)
    if pid is not None:
        raise InputError(
            f"the status API already runs on http://127.0.0.1:{port} (pid {pid}); "
            "use it, stop it, or serve another one with --port N"
        )
    server = LocalApi(status_app_resolver(), host="127.0.0.1", port=port)
    pid_file = _local() / "api.pid"
    if own:  # say who serves the checkout's own port
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()} {port}\n")
    print(f"status API on {server.url} (dashboard: {server.url}/dashboard); Ctrl-C stops it")
    print("token: the API_TOKEN of the environment (.local/api-token for the local stack)")
    try:
        server.serve_forever()
    finally:
        server.server.server_close()
        if running_api(port) == os.getpid():
            pid_file.unlink(missing_ok=True)
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
    vis.add_argument("--batch-key", action="append", type=_batch_key, help="only these batches")
    vis.add_argument(
        "--group-by",
        choices=["batch", "model", "prompt"],
        default="model",
        help="one row per brand and batch, model or prompt (default: model)",
    )
    _slice_args(vis)
    vis.set_defaults(func=cmd_visibility)

    exp = sub.add_parser("export", help="answers or mentions as csv, jsonl or parquet")
    exp.add_argument("--batch-key", type=_batch_key, help="one batch (or --from/--to)")
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
        help="port on 127.0.0.1 (default: this checkout's, chosen once and kept in .local)",
    )
    api.set_defaults(func=cmd_api)
