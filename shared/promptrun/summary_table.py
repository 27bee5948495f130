"""A batch summary (the status API's JSON) as a table for a terminal."""

from __future__ import annotations

from typing import Any


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _row(cells: list[str], widths: list[int]) -> str:
    first, *rest = cells
    return "  ".join(
        [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
    )


def render(s: dict[str, Any]) -> str:
    counts = s.get("counts", {})
    finished = sum(v for k, v in counts.items() if k not in ("queued", "processing"))
    lines = [
        f"batch {s['batch_key']}: {s['progress'] * 100:.0f}% finished ({finished}/{s['total']} jobs)"
        f"  started {s.get('started_at') or '-'}  ended {s.get('ended_at') or '-'}",
        "status: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "status: none",
    ]
    head = [
        "model",
        "jobs",
        "ok",
        "failed",
        "p50 ms",
        "p95 ms",
        "tokens in",
        "tokens out",
        "cost USD",
    ]
    rows = []
    for m in [*s.get("by_model", []), {**s, "model": "total"}]:
        c = m.get("counts", {})
        rows.append(
            [
                m["model"],
                str(m["total"]),
                str(c.get("succeeded", 0)),
                str(c.get("failed", 0)),
                _ms(m.get("p50_duration_ms")),
                _ms(m.get("p95_duration_ms")),
                f"{m.get('input_tokens', 0):,}",
                f"{m.get('output_tokens', 0):,}",
                f"{m.get('cost_usd', 0):.6f}",
            ]
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines.append(_row(head, widths))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(_row(r, widths) for r in rows)
    errors = s.get("top_errors") or []
    if errors:
        lines.append("top errors:")
        lines.extend(f"  {e['jobs']} x {e['error_kind']}: {e['error_message']}" for e in errors)
    return "\n".join(lines)
