"""Brand visibility: how often, how early and how warmly answers name each tracked brand.

For any slice (prompt, model, batch, period), per brand:
- mention rate: answers that mention the brand / answers, with a 95% Wilson score interval
  (exact enough at the small counts a prompt run 3 times a day gives, never outside 0..1);
- share of voice: the brand's mentioning answers / all tracked brands' mentioning answers;
- average position (its best rank in the answer, 1 = named first) and first-position rate
  (share of its mentioning answers that name it first);
- sentiment counts (the sentiment of its first mention in each answer).

A change between two batches is called significant only when Fisher's exact test on the
two 2x2 tables (mentioning / not mentioning) gives p < alpha (0.05): exact at any count, so
67% -> 33% of three answers is not a change.

Brands are matched at query time through brand_aliases (see promptrun.brands). A
finished batch's counts are summed once into visibility_rollups (at its completion; all
again when aliases change); an unfinished batch's mentions are read through the covering
index ix_entity_mentions_name_batch_key (name, batch_key INCLUDE job/model/prompt/rank/
sentiment). The answer counts read prompt_jobs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import Connection, Engine, bindparam, text

from promptrun.brands import brand_rows
from promptrun.errors import InputError
from promptrun.export import day_after

Z95 = 1.959963984540054
ALPHA = 0.05
GroupBy = Literal["batch", "model", "prompt"]
SENTIMENTS = ("positive", "neutral", "negative", "unknown")


class InvalidVisibilityQuery(InputError):
    """A query value that names nothing here (an unknown brand, prompt or model; from
    after to)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --- statistics ---------------------------------------------------------------------------


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of k successes in n trials; None when n is 0."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exact bounds at the edges (the formula leaves rounding dust there).
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p of Fisher's exact test: k1 of n1 against k2 of n2."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    total, hits = n1 + n2, k1 + k2
    low, high = max(0, n1 - (total - hits)), min(hits, n1)
    base = _log_choose(total, n1)

    def prob(x: int) -> float:
        return math.exp(_log_choose(hits, x) + _log_choose(total - hits, n1 - x) - base)

    observed = prob(k1)
    # Tables as or less likely than the observed one; the factor absorbs rounding.
    p = sum(q for q in (prob(x) for x in range(low, high + 1)) if q <= observed * (1 + 1e-7))
    return min(1.0, p)


class Change(BaseModel):
    previous_batch_key: str
    previous_rate: float
    rate: float
    delta: float
    p_value: float = Field(description="Fisher's exact test, two-sided")
    significant: bool = Field(description="p_value < alpha (0.05)")
    direction: Literal["up", "down", "none"]


def compare(
    previous_key: str, k1: int, n1: int, k2: int, n2: int, alpha: float = ALPHA
) -> Change | None:
    """previous (k1 of n1) -> current (k2 of n2); None when either has no answers."""
    if n1 <= 0 or n2 <= 0:
        return None
    p = fisher_exact_p(k1, n1, k2, n2)
    r1, r2 = k1 / n1, k2 / n2
    significant = p < alpha
    direction: Literal["up", "down", "none"] = (
        "none" if not significant else "up" if r2 > r1 else "down"
    )
    return Change(
        previous_batch_key=previous_key,
        previous_rate=round(r1, 4),
        rate=round(r2, 4),
        delta=round(r2 - r1, 4),
        p_value=round(p, 6),
        significant=significant,
        direction=direction,
    )


# --- response models ----------------------------------------------------------------------


class BrandVisibility(BaseModel):
    brand: str = Field(description="brand slug")
    name: str
    own: bool
    answers: int = Field(description="answers in the slice (the rate's denominator)")
    answers_mentioning: int
    mention_rate: float | None
    mention_rate_low: float | None = Field(description="95% Wilson interval, lower bound")
    mention_rate_high: float | None = Field(description="95% Wilson interval, upper bound")
    share_of_voice: float | None = Field(
        description="its mentioning answers / all tracked brands' mentioning answers"
    )
    average_position: float | None = Field(description="mean best rank, 1 = named first")
    first_position_rate: float | None = Field(
        description="share of its mentioning answers that name it first"
    )
    sentiment: dict[str, int] = Field(description="positive, neutral, negative, unknown")


class VisibilityGroup(BaseModel):
    key: str = Field(description="batch key, model slug or prompt slug")
    scheduled_for: datetime | None = Field(description="the batch's period start (batch only)")
    answers: int
    brands: list[BrandVisibility]


class VisibilityReport(BaseModel):
    group_by: GroupBy
    answers: int = Field(description="answers in the whole slice")
    interval: str = "95% Wilson score interval"
    groups: list[VisibilityGroup]


class TrendPoint(BaseModel):
    batch_key: str
    scheduled_for: datetime | None
    answers: int
    answers_mentioning: int
    mention_rate: float | None
    mention_rate_low: float | None
    mention_rate_high: float | None
    share_of_voice: float | None
    share_of_voice_low: float | None = Field(description="95% Wilson interval over mentions")
    share_of_voice_high: float | None
    average_position: float | None
    change: Change | None = Field(description="against the previous point of the series")


class TrendSeries(BaseModel):
    brand: str
    name: str
    own: bool
    model: str | None = Field(description="model slug; null: all models together")
    cadence: str = Field(description="hourly, daily, weekly or manual batches")
    points: list[TrendPoint]


class TrendReport(BaseModel):
    test: str = "Fisher's exact test, two-sided, alpha 0.05"
    interval: str = "95% Wilson score interval"
    series: list[TrendSeries]


# --- the slice and the aggregation --------------------------------------------------------


@dataclass(frozen=True)
class Slice:
    """Which answers count: all filters optional; dates are inclusive, by batch period."""

    prompt: str | None = None
    model: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    batch_keys: tuple[str, ...] | None = None

    def check(self) -> None:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise InvalidVisibilityQuery("from", "must not be after 'to'")


# Grouped by ids (slugs are looked up after): no join on the 1M-row side.
_GROUP_COLUMN = {"batch": "batch_key", "model": "model_id", "prompt": "prompt_id"}
# Transaction-local (no session state for RDS Proxy to pin): a year of mentions is
# aggregated in memory instead of an external sort.
_WORK_MEM = "SELECT set_config('work_mem', '64MB', true)"


def _job_where(s: Slice, ids: dict[str, int]) -> tuple[str, dict[str, Any]]:
    where = ["j.status = 'succeeded'"]
    params: dict[str, Any] = {}
    if s.prompt:
        where.append("j.prompt_id = :prompt_id")
        params["prompt_id"] = ids["prompt"]
    if s.model:
        where.append("j.model_id = :model_id")
        params["model_id"] = ids["model"]
    if s.date_from:
        where.append("j.scheduled_for >= :t_from")
        params["t_from"] = datetime.combine(s.date_from, time(), UTC)
    if s.date_to:
        where.append("j.scheduled_for < :t_to")
        params["t_to"] = day_after(s.date_to)
    if s.batch_keys is not None:
        where.append("j.batch_key IN :batch_keys")
        params["batch_keys"] = list(s.batch_keys)
    return " AND ".join(where), params


@dataclass
class _Counts:
    answers: int
    scheduled_for: datetime | None


@dataclass
class _BrandCounts:
    answers_mentioning: int = 0
    position_sum: int = 0
    first: int = 0
    positive: int = 0
    neutral: int = 0
    negative: int = 0
    unknown: int = 0


def _slugs(conn: Connection) -> tuple[dict[int, str], dict[int, str]]:
    models: dict[int, str] = {
        int(r[0]): str(r[1]) for r in conn.execute(text("SELECT id, slug FROM models"))
    }
    prompts: dict[int, str] = {
        int(r[0]): str(r[1]) for r in conn.execute(text("SELECT id, slug FROM prompts"))
    }
    return models, prompts


def _aggregate(
    conn: Connection, s: Slice, group: Sequence[GroupBy]
) -> tuple[dict[tuple[str, ...], _Counts], dict[tuple[tuple[str, ...], int], _BrandCounts]]:
    """Answers per group, and per (group, brand id) the counts the metrics come from."""
    models, prompts = _slugs(conn)
    ids: dict[str, int] = {}
    for field, value, table in (("model", s.model, models), ("prompt", s.prompt, prompts)):
        if value is not None:
            found = next((i for i, slug in table.items() if slug == value), None)
            if found is None:  # a filter naming nothing is an error, not an empty report
                raise InvalidVisibilityQuery(field, f"unknown {field} {value!r}")
            ids[field] = found
    names = {"model": models, "prompt": prompts}

    def key_of(values: Sequence[Any]) -> tuple[str, ...]:
        if not group:
            return ("all",)
        return tuple(
            str(v) if g == "batch" else names[g].get(int(v), str(v))
            for g, v in zip(group, values, strict=True)
        )

    where, params = _job_where(s, ids)
    cols = [_GROUP_COLUMN[g] for g in group]
    # Per batch as well, whatever the grouping: the batch keys bound the mention side.
    answer_cols = list(dict.fromkeys([*cols, "batch_key"]))
    stmt = text(
        f"""SELECT {", ".join(f"j.{c}" for c in answer_cols)}, count(*) AS answers,
                   min(j.scheduled_for) AS scheduled_for
            FROM prompt_jobs j WHERE {where}
            GROUP BY {", ".join(f"j.{c}" for c in answer_cols)}"""
    )
    if "batch_keys" in params:
        stmt = stmt.bindparams(bindparam("batch_keys", expanding=True))
    conn.execute(text(_WORK_MEM))
    answers: dict[tuple[str, ...], _Counts] = {}
    batch_keys: set[str] = set()
    for row in conn.execute(stmt, params):
        m = row._mapping
        batch_keys.add(m["batch_key"])
        key = key_of([m[c] for c in cols])
        counts = answers.get(key)
        if counts is None:
            answers[key] = _Counts(int(m["answers"]), m["scheduled_for"])
        else:
            counts.answers += int(m["answers"])
            if m["scheduled_for"] and (
                counts.scheduled_for is None or m["scheduled_for"] < counts.scheduled_for
            ):
                counts.scheduled_for = m["scheduled_for"]
    if not answers:
        return answers, {}
    # Finished batches are read from their rollup; the others from their mentions.
    rolled = _rolled_up(conn, sorted(batch_keys))
    live = sorted(batch_keys - rolled)
    filters: list[str] = []
    f_params: dict[str, Any] = {}
    if s.prompt:
        filters.append("prompt_id = :prompt_id")
        f_params["prompt_id"] = ids["prompt"]
    if s.model:
        filters.append("model_id = :model_id")
        f_params["model_id"] = ids["model"]
    brands: dict[tuple[tuple[str, ...], int], _BrandCounts] = {}
    queries = []
    if live:
        where_m = " AND ".join(["m.batch_key IN :keys", *(f"m.{f}" for f in filters)])
        queries.append((_per_brand_sql(where_m, cols), {**f_params, "keys": live}))
    if rolled:
        where_r = " AND ".join(["batch_key IN :keys", *filters])
        queries.append((_rollup_sql(where_r, cols), {**f_params, "keys": sorted(rolled)}))
    for sql, q_params in queries:
        stmt = text(sql).bindparams(bindparam("keys", expanding=True))
        for row in conn.execute(stmt, q_params):
            m = row._mapping
            key = key_of([m[c] for c in cols])
            if key not in answers:  # a mention of a job outside the slice (not succeeded)
                continue
            c = brands.setdefault((key, int(m["brand_id"])), _BrandCounts())
            c.answers_mentioning += int(m["n"])
            c.position_sum += int(m["position_sum"])
            c.first += int(m["first"])
            c.positive += int(m["positive"])
            c.neutral += int(m["neutral"])
            c.negative += int(m["negative"])
            c.unknown += int(m["unknown"])
    return answers, brands


def _per_answer_sql(where: str, carried: Sequence[str]) -> str:
    """One row per (brand, answer): aliases of one brand in one answer count once."""
    carry = "".join(f"min(m.{c}) AS {c}, " for c in carried)
    return f"""
        SELECT a.brand_id, m.job_id, {carry}min(m.rank) AS position,
               -- The sentiment of its best-ranked mention, as a plain (hashable)
               -- aggregate: an ordered array_agg would force a sort of every row.
               substr(min(lpad(m.rank::text, 6, '0') || coalesce(m.sentiment, '')), 7)
                   AS sentiment
        FROM brand_aliases a
        JOIN entity_mentions m ON m.name = a.alias
        WHERE {where}
        GROUP BY a.brand_id, m.job_id"""


_COUNTS = """count(*) AS n, sum(position) AS position_sum,
               count(*) FILTER (WHERE position = 1) AS first,
               count(*) FILTER (WHERE sentiment = 'positive') AS positive,
               count(*) FILTER (WHERE sentiment = 'neutral') AS neutral,
               count(*) FILTER (WHERE sentiment = 'negative') AS negative,
               count(*) FILTER (WHERE sentiment NOT IN ('positive', 'neutral', 'negative'))
                   AS unknown"""


def _per_brand_sql(where: str, cols: Sequence[str]) -> str:
    lead = "".join(f"{c}, " for c in cols)
    return f"""
        WITH per_answer AS ({_per_answer_sql(where, cols)})
        SELECT {lead}brand_id, {_COUNTS}
        FROM per_answer GROUP BY {lead}brand_id"""


def _rollup_sql(where: str, cols: Sequence[str]) -> str:
    lead = "".join(f"{c}, " for c in cols)
    return f"""
        SELECT {lead}brand_id, sum(answers_mentioning) AS n, sum(position_sum) AS position_sum,
               sum(first_position) AS first, sum(positive) AS positive,
               sum(neutral) AS neutral, sum(negative) AS negative, sum(unknown) AS unknown
        FROM visibility_rollups WHERE {where} GROUP BY {lead}brand_id"""


def _rolled_up(conn: Connection, batch_keys: list[str]) -> set[str]:
    if not batch_keys:
        return set()
    stmt = text(
        "SELECT batch_key FROM batch_completions "
        "WHERE batch_key IN :keys AND rolled_up_at IS NOT NULL"
    ).bindparams(bindparam("keys", expanding=True))
    return {r[0] for r in conn.execute(stmt, {"keys": batch_keys})}


def refresh_rollups(conn: Connection, batch_keys: list[str] | None = None) -> None:
    """Sum finished batches into visibility_rollups: these keys (at completion), or every
    batch with a completion row (None: after brands or aliases changed)."""
    conn.execute(text(_WORK_MEM))
    if batch_keys is None:
        batch_keys = list(conn.execute(text("SELECT batch_key FROM batch_completions")).scalars())
        conn.execute(text("DELETE FROM visibility_rollups"))
    else:
        conn.execute(
            text("DELETE FROM visibility_rollups WHERE batch_key IN :keys").bindparams(
                bindparam("keys", expanding=True)
            ),
            {"keys": batch_keys},
        )
    if not batch_keys:
        return
    keys = ["batch_key", "model_id", "prompt_id"]
    insert = f"""
        INSERT INTO visibility_rollups (batch_key, model_id, prompt_id, brand_id,
            answers_mentioning, position_sum, first_position, positive, neutral, negative,
            unknown)
        {_per_brand_sql("m.batch_key IN :keys", keys)}"""
    stmt = text(insert).bindparams(bindparam("keys", expanding=True))
    conn.execute(stmt, {"keys": batch_keys})
    conn.execute(
        text(
            "UPDATE batch_completions SET rolled_up_at = now() WHERE batch_key IN :keys"
        ).bindparams(bindparam("keys", expanding=True)),
        {"keys": batch_keys},
    )


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _brand_metrics(
    brand: dict[str, Any], answers: int, counts: _BrandCounts, all_mentioning: int
) -> BrandVisibility:
    k = counts.answers_mentioning
    ci = wilson_interval(k, answers)
    return BrandVisibility(
        brand=brand["slug"],
        name=brand["name"],
        own=brand["own"],
        answers=answers,
        answers_mentioning=k,
        mention_rate=_round(k / answers) if answers else None,
        mention_rate_low=_round(ci[0]) if ci else None,
        mention_rate_high=_round(ci[1]) if ci else None,
        share_of_voice=_round(k / all_mentioning) if all_mentioning else None,
        average_position=_round(counts.position_sum / k, 3) if k else None,
        first_position_rate=_round(counts.first / k) if k else None,
        sentiment={s: getattr(counts, s) for s in SENTIMENTS},
    )


def _tracked(
    conn: Connection, brand: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(all tracked brands, the ones to report): an unknown brand names the field."""
    tracked = brand_rows(conn)
    if brand is None:
        return tracked, tracked
    chosen = [b for b in tracked if b["slug"] == brand]
    if not chosen:
        known = (
            ", ".join(b["slug"] for b in tracked) or "none: add a brands section to the catalogue"
        )
        raise InvalidVisibilityQuery("brand", f"unknown brand {brand!r}; tracked: {known}")
    return tracked, chosen


def visibility(
    engine: Engine, s: Slice, *, brand: str | None = None, group_by: GroupBy = "model"
) -> VisibilityReport:
    """Per group (batch, model or prompt) and brand: the metrics in the module doc."""
    s.check()
    with engine.connect() as conn:
        tracked, chosen = _tracked(conn, brand)
        answers, counts = _aggregate(conn, s, [group_by])
    groups = []
    ordered = sorted(
        answers.items(),
        key=lambda kv: (
            (kv[1].scheduled_for or datetime.min.replace(tzinfo=UTC), kv[0])
            if group_by == "batch"
            else kv[0]
        ),
    )
    for key, c in ordered:
        all_mentioning = sum(
            counts[(key, b["id"])].answers_mentioning for b in tracked if (key, b["id"]) in counts
        )
        groups.append(
            VisibilityGroup(
                key=key[0],
                scheduled_for=c.scheduled_for if group_by == "batch" else None,
                answers=c.answers,
                brands=[
                    _brand_metrics(
                        b, c.answers, counts.get((key, b["id"]), _BrandCounts()), all_mentioning
                    )
                    for b in chosen
                ],
            )
        )
    return VisibilityReport(
        group_by=group_by, answers=sum(c.answers for c in answers.values()), groups=groups
    )


def trends(
    engine: Engine,
    s: Slice,
    *,
    brand: str | None = None,
    split: Literal["model", "none"] = "model",
    alpha: float = ALPHA,
) -> TrendReport:
    """Per brand (and model, unless split is none): one point per batch, in period order,
    each with its change against the previous point."""
    s.check()
    group: list[GroupBy] = ["batch", "model"] if split == "model" else ["batch"]
    with engine.connect() as conn:
        tracked, chosen = _tracked(conn, brand)
        answers, counts = _aggregate(conn, s, group)
    # A series never mixes cadences: a weekly batch is not the next point of a daily line.
    series_keys = sorted({(k[1:], key_shape(k[0])) for k in answers})  # ((model,)|(), shape)
    out: list[TrendSeries] = []
    for b in chosen:
        for skey, cadence in series_keys:
            keys = sorted(
                (k for k in answers if k[1:] == skey and key_shape(k[0]) == cadence),
                key=lambda k: (answers[k].scheduled_for or datetime.min.replace(tzinfo=UTC), k[0]),
            )
            points: list[TrendPoint] = []
            previous: tuple[str, int, int] | None = None
            for k in keys:
                n = answers[k].answers
                c = counts.get((k, b["id"]), _BrandCounts())
                all_mentioning = sum(
                    counts[(k, x["id"])].answers_mentioning
                    for x in tracked
                    if (k, x["id"]) in counts
                )
                m = _brand_metrics(b, n, c, all_mentioning)
                sov_ci = wilson_interval(c.answers_mentioning, all_mentioning)
                change = (
                    compare(previous[0], previous[1], previous[2], c.answers_mentioning, n, alpha)
                    if previous
                    else None
                )
                points.append(
                    TrendPoint(
                        batch_key=k[0],
                        scheduled_for=answers[k].scheduled_for,
                        answers=n,
                        answers_mentioning=c.answers_mentioning,
                        mention_rate=m.mention_rate,
                        mention_rate_low=m.mention_rate_low,
                        mention_rate_high=m.mention_rate_high,
                        share_of_voice=m.share_of_voice,
                        share_of_voice_low=_round(sov_ci[0]) if sov_ci else None,
                        share_of_voice_high=_round(sov_ci[1]) if sov_ci else None,
                        average_position=m.average_position,
                        change=change,
                    )
                )
                previous = (k[0], c.answers_mentioning, n)
            out.append(
                TrendSeries(
                    brand=b["slug"],
                    name=b["name"],
                    own=b["own"],
                    model=skey[0] if skey else None,
                    cadence=cadence,
                    points=points,
                )
            )
    return TrendReport(test=f"Fisher's exact test, two-sided, alpha {alpha}", series=out)


# --- significant drops of own brands (used when a batch completes) ------------------------


_KEY_SHAPES = (
    ("hourly", r"^\d{4}-\d{2}-\d{2}T\d{2}$"),
    ("daily", r"^\d{4}-\d{2}-\d{2}$"),
    ("weekly", r"^\d{4}-W\d{2}$"),
)


def key_shape(batch_key: str) -> str:
    """hourly, daily, weekly or manual: only batches of one shape are compared."""
    for name, pattern in _KEY_SHAPES:
        if re.match(pattern, batch_key):
            return name
    return "manual"


def previous_batch(conn: Connection, batch_key: str) -> str | None:
    """The latest earlier batch of the same shape (an hourly batch is not a daily one)."""
    rows = conn.execute(
        text(
            """SELECT batch_key, min(scheduled_for) AS at FROM prompt_jobs
               WHERE scheduled_for < (SELECT min(scheduled_for) FROM prompt_jobs
                                      WHERE batch_key = :k)
                 AND scheduled_for >= (SELECT min(scheduled_for) FROM prompt_jobs
                                       WHERE batch_key = :k) - interval '45 days'
               GROUP BY batch_key ORDER BY at DESC"""
        ),
        {"k": batch_key},
    ).all()
    shape = key_shape(batch_key)
    return next((r.batch_key for r in rows if key_shape(r.batch_key) == shape), None)


class VisibilityDrop(BaseModel):
    brand: str
    name: str
    model: str | None = Field(description="null: all models together")
    batch_key: str
    previous_batch_key: str
    answers: int
    answers_mentioning: int
    previous_answers: int
    previous_answers_mentioning: int
    mention_rate: float
    mention_rate_low: float
    mention_rate_high: float
    previous_mention_rate: float
    previous_mention_rate_low: float
    previous_mention_rate_high: float
    p_value: float
    test: str = "Fisher's exact test, two-sided"


def significant_drops(engine: Engine, batch_key: str, alpha: float = ALPHA) -> list[VisibilityDrop]:
    """Own brands whose mention rate fell significantly from the previous comparable batch,
    per model and for all models together."""
    with engine.connect() as conn:
        own = [b for b in brand_rows(conn) if b["own"]]
        if not own:
            return []
        previous = previous_batch(conn, batch_key)
        if previous is None:
            return []
        s = Slice(batch_keys=(previous, batch_key))
        per_model = _aggregate(conn, s, ["batch", "model"])
        overall = _aggregate(conn, s, ["batch"])
    drops: list[VisibilityDrop] = []
    for answers, counts, models in (
        (per_model[0], per_model[1], sorted({k[1] for k in per_model[0]})),
        (overall[0], overall[1], [None]),
    ):
        for b in own:
            for model in models:
                tail = (model,) if model is not None else ()
                before, now = (previous, *tail), (batch_key, *tail)
                if before not in answers or now not in answers:
                    continue
                n1, n2 = answers[before].answers, answers[now].answers
                k1 = counts.get((before, b["id"]), _BrandCounts()).answers_mentioning
                k2 = counts.get((now, b["id"]), _BrandCounts()).answers_mentioning
                change = compare(previous, k1, n1, k2, n2, alpha)
                if change is None or change.direction != "down":
                    continue
                ci1, ci2 = wilson_interval(k1, n1), wilson_interval(k2, n2)
                assert ci1 and ci2
                drops.append(
                    VisibilityDrop(
                        brand=b["slug"],
                        name=b["name"],
                        model=model,
                        batch_key=batch_key,
                        previous_batch_key=previous,
                        answers=n2,
                        answers_mentioning=k2,
                        previous_answers=n1,
                        previous_answers_mentioning=k1,
                        mention_rate=round(k2 / n2, 4),
                        mention_rate_low=round(ci2[0], 4),
                        mention_rate_high=round(ci2[1], 4),
                        previous_mention_rate=round(k1 / n1, 4),
                        previous_mention_rate_low=round(ci1[0], 4),
                        previous_mention_rate_high=round(ci1[1], 4),
                        p_value=change.p_value,
                    )
                )
    return drops
