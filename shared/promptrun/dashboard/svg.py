"""Server-side SVG charts: no script, no CDN, readable by a screen reader (title, desc and
one labelled point per value), so the dashboard works offline and inside the Lambda."""

from __future__ import annotations

from html import escape
from typing import Literal

from promptrun.visibility import TrendReport

Metric = Literal["mention_rate", "share_of_voice"]
# Okabe-Ito: distinguishable with the common colour-vision deficiencies; dark enough on white.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
WIDTH, HEIGHT = 720, 280
LEFT, RIGHT, TOP, BOTTOM = 48, 150, 20, 56
LABELS = {"mention_rate": "mention rate", "share_of_voice": "share of voice"}


def _a(value: object) -> str:
    return escape(str(value), quote=True)


def trend_chart(report: TrendReport, brand: str, metric: Metric) -> str:
    """Lines per model across batches, each point with its 95% interval as a bar."""
    series = [s for s in report.series if s.brand == brand]
    name = series[0].name if series else brand
    label = LABELS[metric]
    # The x axis is time: every batch of every series, by its period start.
    starts = {p.batch_key: p.scheduled_for for s in series for p in s.points}
    batches = sorted(starts, key=lambda k: (str(starts[k]), k))
    several_cadences = len({s.cadence for s in series}) > 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w / 2 if len(batches) == 1 else plot_w * i / (len(batches) - 1))

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v)

    title = f"{name}: {label} per model across batches"
    desc = (
        f"{len(series)} series over {len(batches)} batches; bars show 95% Wilson intervals."
        if batches
        else "No answers yet."
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="t-{_a(metric)} d-{_a(metric)}" class="chart" '
        f'data-metric="{_a(metric)}" data-brand="{_a(brand)}">',
        f'<title id="t-{_a(metric)}">{_a(title)}</title>',
        f'<desc id="d-{_a(metric)}">{_a(desc)}</desc>',
        '<g class="axes" stroke="#595959" stroke-width="1" font-size="11" fill="#222">',
    ]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        ty = y(tick)
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#ddd"/>'
        )
        out.append(
            f'<text x="{LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end" stroke="none">{int(tick * 100)}%</text>'
        )
    step = max(1, len(batches) // 8)
    for i, key in enumerate(batches):
        if i % step == 0 or i == len(batches) - 1:
            out.append(
                f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
                f'stroke="none">{_a(key)}</text>'
            )
    out.append(
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle" stroke="none">batch</text>'
    )
    out.append("</g>")
    for n, s in enumerate(series):
        color = PALETTE[n % len(PALETTE)]
        model = (s.model or "all models") + (f" ({s.cadence})" if several_cadences else "")
        pts = []
        marks = []
        for p in s.points:
            value = getattr(p, metric)
            low = getattr(p, f"{metric}_low")
            high = getattr(p, f"{metric}_high")
            if value is None:
                continue
            i = batches.index(p.batch_key)
            px, py = x(i), y(value)
            pts.append(f"{px:.1f},{py:.1f}")
            interval = f", 95% interval {low:.0%} to {high:.0%}" if low is not None else ""
            changed = (
                f", significant {p.change.direction} (p={p.change.p_value:.3f})"
                if p.change and p.change.significant
                else ""
            )
            if low is not None and high is not None:
                marks.append(
                    f'<line class="interval" x1="{px:.1f}" x2="{px:.1f}" y1="{y(low):.1f}" '
                    f'y2="{y(high):.1f}" stroke="{color}" stroke-width="2" opacity="0.45"/>'
                )
            shape = (
                f'<rect x="{px - 5:.1f}" y="{py - 5:.1f}" width="10" height="10"'
                if changed
                else f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4"'
            )
            marks.append(
                f'{shape} class="point" fill="{color}" data-model="{_a(model)}" '
                f'data-batch="{_a(p.batch_key)}" data-value="{value}" tabindex="0">'
                f"<title>{_a(model)}, {_a(p.batch_key)}: {value:.0%} of {p.answers} answers"
                f"{interval}{_a(changed)}</title></{'rect' if changed else 'circle'}>"
            )
        if pts:
            out.append(
                f'<polyline class="series" fill="none" stroke="{color}" stroke-width="2" '
                f'points="{" ".join(pts)}" data-model="{_a(model)}"/>'
            )
        out.extend(marks)
        ly = TOP + 14 + n * 18
        lx = WIDTH - RIGHT + 12
        out.append(
            f'<g class="legend"><line x1="{lx}" x2="{lx + 18}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{color}" stroke-width="3"/><text x="{lx + 24}" y="{ly}" font-size="12" '
            f'fill="#222">{_a(model)}</text></g>'
        )
    if not batches:
        out.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#222">'
            "No answers in this period yet.</text>"
        )
    out.append("</svg>")
    return "".join(out)
