"""Flow control: whether a model call may start now, decided in PostgreSQL for every processor.

One row per model (`model:<slug>`) and per limit group (`group:<name>`) in `flow_limits`
holds the configured limits (max_concurrency, rpm, tpm, budgets, paused) and the shared state:

- live calls: `in_flight`, raised by admission and lowered by release in the same
  transactions that claim and finish the job, so it equals the live jobs; a worker that
  died leaks a count until its lease expires, then a recount under the row lock repairs it;
- requests and tokens: GCRA, a theoretical arrival time per row (`request_tat`,
  `token_tat`, epoch seconds of the database clock) that each admission pushes forward by
  cost x emission interval; tokens are estimated before the call and reconciled after it;
- adaptive rate: `rate_factor` scales the configured rpm/tpm; a 429 cuts it by 30% (at most once
  per cooldown) and pushes the arrival time past the provider's Retry-After; every success
  adds a small step back (AIMD);
- budgets: USD per batch and per day in `budget_spend`, the estimate of a call reserved at
  admission and reconciled with the real cost after it.

An admission is one transaction: the rows of the model and its group locked in key order
(`SELECT ... FOR UPDATE`: row locks end with the transaction, nothing pins a session),
the grant computed here, one UPDATE of those rows. O(1) statements, however many calls are
in flight. `admit` grants up to `wanted` jobs of one model at once (a whole SQS batch).

The quick admission (QUICK_TAKE_SQL, for a whole batch) is decided inside the statement
that claims the jobs: when all they need is a free slot, the rows are locked for that
statement alone, checked, and the slots taken as relative updates; when a row asks for more
(a rate, a budget, a pause) or has too few slots, nothing is claimed and the batch takes the
locked way above.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from promptrun.db.sql import Conn, text

CATALOG_KEY = "catalog"
# Seconds of rate a row may spend at once (GCRA burst tolerance).
BURST_SECONDS = 1.0
# A full row recounts its live jobs at most this often (repairs counts leaked by dead workers).
RECOUNT_SECONDS = 5.0
# Rate decreases closer together than this are one event (a burst of 429s from one overload).
DECREASE_COOLDOWN = 2.0
MIN_RATE_FACTOR = 0.05
# Multiplicative decrease on a 429; additive increase per success, in steps of
# 1 / max(INCREASE_MIN_STEPS, rpm / INCREASE_DIVISOR).
DECREASE_FACTOR = 0.7
INCREASE_MIN_STEPS = 10.0
INCREASE_DIVISOR = 8.0
# How long a paused or over-budget job waits before it looks again (SQS's longest delay).
RECHECK_SECONDS = 900.0
# Share of a configured rate aimed at: a provider counts calls as they arrive (an extraction
# follows its answer by the answer's latency), so admission keeps a little room.
TARGET_SHARE = 0.95
# A turn this close is due (clocks and message delays are not exact).
TURN_TOLERANCE = 0.05
# Wait for a free concurrency slot: a model call's typical length, backed off by the caller.
SLOT_WAIT_SECONDS = 2.0
SLOT_REASON = "max_concurrency:"  # how a refusal for want of a slot starts its reason
DEFAULT_MAX_TOKENS = 1024
CHARS_PER_TOKEN = 4


def model_key(slug: str) -> str:
    return f"model:{slug}"


def group_key(name: str) -> str:
    return f"group:{name}"


@dataclass(frozen=True)
class Demand:
    """What one job of a model will use: requests, estimated tokens and cost (for budgets)."""

    requests: int = 1
    tokens: int = 0
    cost_usd: Decimal = Decimal(0)


@dataclass(frozen=True)
class Admission:
    granted: int
    # When granted < wanted: seconds until the next job may start, and why it may not now.
    wait_seconds: float = 0.0
    reason: str | None = None
    keys: tuple[str, ...] = ()
    budget_periods: tuple[tuple[str, str], ...] = ()
    # A job held back by a rate gets a turn (epoch seconds, database clock): come back then
    # and pass it to admit, to go ahead of jobs that arrived after it.
    turn: float | None = None


def estimate_tokens(prompt: str, system: str | None, params: dict[str, Any]) -> int:
    """Input by length, output at its cap: what a provider's limiter counts before the call."""
    chars = len(prompt) + len(system or "")
    out = params.get("max_tokens") or params.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
    return math.ceil(chars / CHARS_PER_TOKEN) + int(out)


# --- the arithmetic (pure, unit-tested) ---------------------------------------------------------


def gcra_grant(
    tat: float, now: float, per_minute: float | None, cost: float, wanted: int
) -> tuple[int, float]:
    """(jobs admitted, seconds until one more fits) for a row limited to `per_minute` units,
    each job costing `cost` units. Without a limit only a pushed-back tat (a Retry-After) waits."""
    start = max(tat, now)
    if per_minute is None or cost <= 0:
        return (wanted, 0.0) if start <= now else (0, start - now)
    interval = 60.0 / per_minute
    capacity = max(cost, per_minute / 60.0 * BURST_SECONDS) * interval
    room = capacity - (start - now)
    fits = math.floor(room / (cost * interval) + 1e-9) if room > 0 else 0
    granted = max(0, min(wanted, fits))
    if granted == wanted:
        return granted, 0.0
    wait = start + (granted + 1) * cost * interval - capacity - now
    return granted, max(wait, 0.001)


def effective(per_minute: int | None, factor: float) -> float | None:
    """The rate admitted now: the configured one, less the headroom, times the adaptive factor."""
    return None if per_minute is None else max(per_minute * TARGET_SHARE * factor, 1e-3)


# --- admission -------------------------------------------------------------------------------

_LOCK_ROWS = text(
    """
    WITH locked AS (
        SELECT * FROM flow_limits
        WHERE key = ANY(CAST(:mks AS text[]))
           OR key IN (SELECT group_key FROM flow_limits WHERE key = ANY(CAST(:mks AS text[])))
        ORDER BY key FOR UPDATE
    )
    SELECT l.*, EXTRACT(EPOCH FROM clock_timestamp())::float8 AS now_s,
           to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS today
    FROM locked l
    UNION ALL
    SELECT c.*, EXTRACT(EPOCH FROM clock_timestamp())::float8,
           to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD')
    FROM flow_limits c WHERE c.key = 'catalog'
    """
)
_RECOUNT = text(
    """
    SELECT count(*) FROM prompt_jobs j
    WHERE j.status = 'processing' AND j.lease_expires_at >= now()
      AND j.model_id IN (
          SELECT m.id FROM models m JOIN flow_limits f ON f.key = 'model:' || m.slug
          WHERE f.key = :key OR f.group_key = :key)
    """
)
_SPENT = text(
    "SELECT scope, period, spent_usd FROM budget_spend WHERE (scope || ' ' || period) = ANY(:pairs)"
)
# Also run inside the statement that claims a batch's jobs (promptrun.batch_jobs).
TAKE_SQL = """
    UPDATE flow_limits AS f SET
        in_flight = v.in_flight, request_tat = v.request_tat, token_tat = v.token_tat,
        recounted_at = v.recounted_at, queue_tat = v.queue_tat
    FROM (SELECT unnest(CAST(:keys AS text[])) AS key,
                 unnest(CAST(:in_flight AS int[])) AS in_flight,
                 unnest(CAST(:request_tat AS float8[])) AS request_tat,
                 unnest(CAST(:token_tat AS float8[])) AS token_tat,
                 unnest(CAST(:recounted_at AS float8[])) AS recounted_at,
                 unnest(CAST(:queue_tat AS float8[])) AS queue_tat) v
    WHERE f.key = v.key
"""
_TAKE = text(TAKE_SQL)
_RESERVE = text(
    """
    INSERT INTO budget_spend (scope, period, spent_usd, updated_at)
    SELECT s, p, :amount, now() FROM unnest(CAST(:scopes AS text[]), CAST(:periods AS text[])) AS t(s, p)
    ORDER BY s, p
    ON CONFLICT (scope, period) DO UPDATE
    SET spent_usd = budget_spend.spent_usd + EXCLUDED.spent_usd, updated_at = now()
    """
)


def _money(value: Any) -> str:
    return f"${Decimal(value):.2f}"


def admit(
    conn: Conn,
    model_slug: str,
    batch_key: str,
    wanted: int,
    demand: Demand,
    *,
    claimed: bool = False,
    turn: float | None = None,
) -> Admission:
    """Admit up to `wanted` jobs of one model (and its group) now, inside the caller's
    transaction (roll it back and nothing was taken). `claimed`: the caller has already
    marked these jobs processing in this transaction (a recount sees them). `turn`: the turn
    an earlier admission gave these jobs. Rows missing (a model synced before limits
    existed): no limits."""
    request = Request(model_slug, batch_key, wanted, demand, claimed=claimed, turn=turn)
    return admit_many(conn, [request])[0]


@dataclass(frozen=True)
class Request:
    """Jobs of one model and batch to admit (the arguments of `admit`)."""

    model_slug: str
    batch_key: str
    wanted: int
    demand: Demand
    claimed: bool = False
    turn: float | None = None


def admit_many(conn: Conn, requests: Sequence[Request]) -> list[Admission]:
    """`admit` for several models at once (a whole SQS batch): one statement locks every row
    they need in key order, each request is decided on the rows as the ones before it left
    them, one statement writes them all. An Admission per request, in order."""
    taken = decide_many(conn, requests)
    write(conn, taken)
    return taken.admissions


@dataclass(frozen=True)
class Taken:
    """Admissions decided on locked rows whose new state is not written yet: `write` it, or
    run TAKE_SQL with `params` in another statement of the same transaction."""

    admissions: list[Admission]
    params: dict[str, list[Any]] | None  # None: no row changed


def write(conn: Conn, taken: Taken) -> None:
    if taken.params:
        conn.execute(_TAKE, taken.params)


def decide_many(conn: Conn, requests: Sequence[Request]) -> Taken:
    """`admit_many` without its last statement: the rows locked and decided on."""
    keys = sorted({model_key(r.model_slug) for r in requests})
    rows = {r["key"]: dict(r) for r in conn.execute(_LOCK_ROWS, {"mks": keys}).mappings()}
    changed: dict[str, dict[str, Any]] = {}
    # Jobs admitted by earlier requests and not yet claimed: a recount cannot see them.
    unclaimed: Counter[str] = Counter()
    admissions = []
    for request in requests:
        model = rows.get(model_key(request.model_slug))
        group = rows.get(model["group_key"]) if model and model["group_key"] else None
        mine = sorted((r for r in (model, group) if r is not None), key=lambda r: r["key"])
        admission = _decide(conn, mine, rows.get(CATALOG_KEY), request, changed, unclaimed)
        if not request.claimed:
            for key in admission.keys:
                unclaimed[key] += admission.granted
        admissions.append(admission)
    updates = [
        _row_update(r, r["in_flight"], r["request_tat"], r["token_tat"]) for r in changed.values()
    ]
    return Taken(admissions, _columns(updates) if updates else None)


def _decide(
    conn: Conn,
    limit_rows: list[dict[str, Any]],
    catalog: dict[str, Any] | None,
    request: Request,
    changed: dict[str, dict[str, Any]],
    unclaimed: Counter[str],
) -> Admission:
    """One request on locked rows: the rows are updated in place and put in `changed`."""
    wanted, demand, turn = request.wanted, request.demand, request.turn
    if not limit_rows:
        return Admission(granted=wanted)
    rows = limit_rows + ([catalog] if catalog is not None else [])
    now = float(rows[0]["now_s"])
    keys = tuple(r["key"] for r in limit_rows)

    paused = next((r for r in limit_rows if r["paused"]), None)
    if paused is not None:
        why = paused["paused_reason"] or f"{paused['key']} paused"
        return Admission(0, RECHECK_SECONDS, f"paused: {why}", keys)

    # Budgets: a scope over its cap starts nothing; spend includes the reserved estimates.
    periods: list[tuple[str, str, Decimal]] = []
    for r in rows:
        if r["key"].startswith("group:"):
            continue
        if r["budget_batch_usd"] is not None:
            periods.append((r["key"], f"batch:{request.batch_key}", Decimal(r["budget_batch_usd"])))
        if r["budget_day_usd"] is not None:
            periods.append((r["key"], f"day:{rows[0]['today']}", Decimal(r["budget_day_usd"])))
    granted, wait, reason = wanted, 0.0, None
    if periods:
        spent = {
            (s, p): Decimal(v)
            for s, p, v in conn.execute(_SPENT, {"pairs": [f"{s} {p}" for s, p, _ in periods]})
        }
        for scope, period, cap in periods:
            used = spent.get((scope, period), Decimal(0))
            if used >= cap:
                what = "catalogue" if scope == CATALOG_KEY else scope
                label = "batch" if period.startswith("batch:") else "day"
                return Admission(
                    0,
                    RECHECK_SECONDS,
                    f"budget: {what} spent {_money(used)} of its {_money(cap)} per {label}",
                    keys,
                )
            if demand.cost_usd > 0:
                fits = math.ceil((cap - used) / demand.cost_usd)
                if fits < granted:
                    granted, wait = fits, RECHECK_SECONDS
                    reason = f"budget: {scope} near its {_money(cap)} cap"

    rate_held = False
    for r in limit_rows:
        own = (wanted if request.claimed else 0) - unclaimed[r["key"]]
        free, recounted_at = _free_slots(conn, r, now, granted, own)
        r["recounted_at"] = recounted_at
        if free < granted:
            granted, wait = max(free, 0), SLOT_WAIT_SECONDS
            reason = f"{SLOT_REASON} {r['key']} has {r['max_concurrency']} calls in flight"
        if turn is not None and now < turn - TURN_TOLERANCE:
            granted, wait, reason = 0, turn - now, f"rate: {r['key']}: waiting for its turn"
        elif turn is None and _rated(r) and r["queue_tat"] > now + TURN_TOLERANCE:
            # Jobs already hold turns for this rate: a newcomer queues behind them.
            granted, wait, reason = 0, r["queue_tat"] - now, f"rate: {r['key']}: jobs ahead"
            rate_held = True
        n_req, req_wait = gcra_grant(
            r["request_tat"], now, effective(r["rpm"], r["rate_factor"]), demand.requests, granted
        )
        if n_req < granted:
            granted, wait = n_req, req_wait
            rate_held = True
            reason = (
                f"rpm: {r['key']} at its request rate"
                if r["rpm"] is not None
                else f"rate_limit: {r['key']} told to wait by the provider (Retry-After)"
            )
        n_tok, tok_wait = gcra_grant(
            r["token_tat"], now, effective(r["tpm"], r["rate_factor"]), demand.tokens, granted
        )
        if n_tok < granted:
            granted, wait, reason = n_tok, tok_wait, f"tpm: {r['key']} at its token rate"
            rate_held = True
    new_turn: float | None = None
    if rate_held and turn is None:
        # Hand the held jobs the next turns: each comes back when there is room for it.
        held = wanted - granted
        start = now + wait
        for r in limit_rows:
            if _rated(r):
                start = max(start, r["queue_tat"])
        for r in limit_rows:
            if _rated(r):
                r["queue_tat"] = start + held * _job_interval(r, demand)
        new_turn, wait = start, start - now
    elif turn is not None and granted < wanted:
        new_turn = now + wait  # keeps its place: only the rate itself holds it now
    if granted == 0:
        for r in limit_rows:  # a repaired count or handed-out turns are kept, nothing starts
            if r["recounted_at"] == now or (rate_held and _rated(r)):
                changed[r["key"]] = r
        return Admission(0, wait, reason, keys, turn=new_turn)
    for r in limit_rows:
        req_rate = effective(r["rpm"], r["rate_factor"])
        tok_rate = effective(r["tpm"], r["rate_factor"])
        request_tat = r["request_tat"]
        if req_rate is not None:
            request_tat = max(request_tat, now) + granted * demand.requests * 60.0 / req_rate
        token_tat = r["token_tat"]
        if tok_rate is not None:
            token_tat = max(token_tat, now) + granted * demand.tokens * 60.0 / tok_rate
        r["in_flight"] += granted
        r["request_tat"], r["token_tat"] = request_tat, token_tat
        changed[r["key"]] = r
    budget_periods = tuple((s, p) for s, p, _ in periods)
    if budget_periods and demand.cost_usd > 0:
        _add_spend(conn, budget_periods, demand.cost_usd * granted)
    return Admission(granted, wait, reason, keys, budget_periods, new_turn)


def _rated(row: dict[str, Any]) -> bool:
    return row["rpm"] is not None or row["tpm"] is not None


def _job_interval(row: dict[str, Any], demand: Demand) -> float:
    """Seconds of the row's rate one job uses."""
    seconds = 0.0
    rpm, tpm = effective(row["rpm"], row["rate_factor"]), effective(row["tpm"], row["rate_factor"])
    if rpm is not None:
        seconds = max(seconds, demand.requests * 60.0 / rpm)
    if tpm is not None:
        seconds = max(seconds, demand.tokens * 60.0 / tpm)
    return seconds


def _free_slots(
    conn: Conn, row: dict[str, Any], now: float, wanted: int, own_claims: int
) -> tuple[int, float]:
    limit = row["max_concurrency"]
    if limit is None:
        return wanted, row["recounted_at"]
    free = limit - row["in_flight"]
    if free >= wanted or now - row["recounted_at"] < RECOUNT_SECONDS:
        return free, row["recounted_at"]
    # Full by the count: recount the live leases (a dead worker's count is released).
    live = int(conn.execute(_RECOUNT, {"key": row["key"]}).scalar_one())
    row["in_flight"] = max(0, live - own_claims)
    return limit - row["in_flight"], now


def _row_update(
    row: dict[str, Any], in_flight: int, request_tat: float, token_tat: float
) -> dict[str, Any]:
    return {
        "key": row["key"],
        "in_flight": in_flight,
        "request_tat": request_tat,
        "token_tat": token_tat,
        "recounted_at": row["recounted_at"],
        "queue_tat": row["queue_tat"],
    }


def _columns(updates: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {
        "keys": [u["key"] for u in updates],
        "in_flight": [u["in_flight"] for u in updates],
        "request_tat": [float(u["request_tat"]) for u in updates],
        "token_tat": [float(u["token_tat"]) for u in updates],
        "recounted_at": [float(u["recounted_at"]) for u in updates],
        "queue_tat": [float(u["queue_tat"]) for u in updates],
    }


def _add_spend(conn: Conn, periods: Sequence[tuple[str, str]], amount: Decimal) -> None:
    conn.execute(
        _RESERVE,
        {
            "scopes": [s for s, _ in periods],
            "periods": [p for _, p in periods],
            "amount": amount,
        },
    )


# --- the quick admission: free slots only, decided in the claiming statement -------------------

# A locked row `r` that grants its want `w` (key, calls, group key the claim read) now for a
# free slot alone: no pause, rate, budget or provider's Retry-After, and room for the calls.
_QUICK_ROW_SQL = """
    NOT r.paused AND r.rpm IS NULL AND r.tpm IS NULL
    AND r.budget_batch_usd IS NULL AND r.budget_day_usd IS NULL
    AND r.request_tat <= EXTRACT(EPOCH FROM clock_timestamp())
    AND r.token_tat <= EXTRACT(EPOCH FROM clock_timestamp())
    AND (r.max_concurrency IS NULL OR r.in_flight + w.calls <= r.max_concurrency)
    AND r.group_key IS NOT DISTINCT FROM w.group_key
"""
# CTEs for a statement that defines `quick_want` (key, calls, group_key: the rows of the
# models and groups its jobs need, and how many calls each) and claims its jobs only
# `WHERE (SELECT ok FROM quick_ok)`: the rows locked in key order for the length of that
# statement, checked, and their slots taken as relative updates (nothing else about them
# changes). A row missing or changed, one that needs the locked way (the catalogue's budgets
# included), or too few free slots: ok is false and nothing is taken.
QUICK_TAKE_SQL = f"""
    quick_rows AS MATERIALIZED (
        SELECT f.* FROM flow_limits f WHERE f.key IN (SELECT key FROM quick_want)
        ORDER BY f.key FOR UPDATE
    ), quick_ok AS MATERIALIZED (
        SELECT NOT EXISTS (SELECT 1 FROM quick_want)  -- no slot wanted: nothing to check
               OR (count(*) = (SELECT count(*) FROM quick_want)
                   AND coalesce(bool_and({_QUICK_ROW_SQL}), true)
                   AND NOT EXISTS (SELECT 1 FROM flow_limits c WHERE c.key = 'catalog'
                                   AND (c.budget_batch_usd IS NOT NULL
                                        OR c.budget_day_usd IS NOT NULL)))
               AS ok
        FROM quick_rows r JOIN quick_want w ON w.key = r.key
    ), quick_take AS (
        UPDATE flow_limits AS f SET in_flight = f.in_flight + w.calls
        FROM quick_want w WHERE f.key = w.key AND (SELECT ok FROM quick_ok)
    )
"""


# --- after the call ----------------------------------------------------------------------------

_THROTTLE = text(
    """
    UPDATE flow_limits AS f SET
        rate_factor = CASE WHEN f.decreased_at < EXTRACT(EPOCH FROM clock_timestamp()) - :cooldown
                           THEN GREATEST(:min_factor, f.rate_factor * CAST(:decrease AS float8))
                           ELSE f.rate_factor END,
        decreased_at = CASE WHEN f.decreased_at < EXTRACT(EPOCH FROM clock_timestamp()) - :cooldown
                            THEN EXTRACT(EPOCH FROM clock_timestamp()) ELSE f.decreased_at END,
        -- the burst tolerance on top: nothing starts before the provider's Retry-After
        request_tat = GREATEST(f.request_tat, EXTRACT(EPOCH FROM clock_timestamp())
            + CAST(:wait AS float8) + CASE WHEN f.rpm IS NULL THEN 0 ELSE CAST(:burst AS float8) END),
        throttled = f.throttled + 1,
        updated_at = now()
    WHERE f.key IN (
        SELECT key FROM flow_limits WHERE key = ANY(CAST(:keys AS text[])) ORDER BY key FOR UPDATE)
    """
)


_HOLD = text(
    """
    UPDATE flow_limits AS f SET
        request_tat = GREATEST(f.request_tat,
                               EXTRACT(EPOCH FROM clock_timestamp()) + CAST(:wait AS float8)),
        updated_at = now()
    WHERE f.key IN (
        SELECT key FROM flow_limits WHERE key = ANY(CAST(:keys AS text[])) ORDER BY key FOR UPDATE)
    """
)


@dataclass(frozen=True)
class Lease:
    """What one admitted job holds: released once, in the transaction that ends its attempt."""

    keys: tuple[str, ...]
    budget_periods: tuple[tuple[str, str], ...]
    demand: Demand

    @classmethod
    def of(cls, admission: Admission, demand: Demand) -> Lease:
        return cls(admission.keys, admission.budget_periods, demand)


def release(
    conn: Conn,
    lease: Lease | None,
    *,
    tokens_used: int,
    cost_usd: Decimal,
    succeeded: bool,
    throttled_for: float | None = None,
    quota_wait: float | None = None,
) -> None:
    """The call is over: free its slot, reconcile tokens and spend with what was reported,
    and adapt the rate (a 429: `throttled_for` seconds of Retry-After, and a decrease;
    `quota_wait`: the provider's headers said its quota is used up for that long)."""
    if lease is not None:
        release_many(
            conn, [Ended(lease, tokens_used, cost_usd, succeeded, throttled_for, quota_wait)]
        )


_RELEASE_MANY = text(
    """
    UPDATE flow_limits AS f SET
        in_flight = GREATEST(f.in_flight - v.calls, 0),
        token_tat = CASE WHEN f.tpm IS NULL THEN f.token_tat
                         ELSE f.token_tat + v.token_delta * 60.0
                              / (f.tpm * CAST(:share AS float8) * f.rate_factor) END,
        rate_factor = CASE WHEN v.successes > 0
                           THEN LEAST(1.0, f.rate_factor
                                + v.successes / GREATEST(CAST(:min_steps AS float8),
                                                         COALESCE(f.rpm, 40) / CAST(:divisor AS float8)))
                           ELSE f.rate_factor END,
        updated_at = now()
    FROM (SELECT unnest(CAST(:keys AS text[])) AS key, unnest(CAST(:calls AS int[])) AS calls,
                 unnest(CAST(:token_delta AS float8[])) AS token_delta,
                 unnest(CAST(:successes AS int[])) AS successes) v
    WHERE f.key = v.key AND f.key IN (
        SELECT key FROM flow_limits WHERE key = ANY(CAST(:keys AS text[])) ORDER BY key FOR UPDATE)
    """
)
_RECONCILE_SPEND = text(
    """
    INSERT INTO budget_spend (scope, period, spent_usd, updated_at)
    SELECT s, p, sum(a), now()
    FROM unnest(CAST(:scopes AS text[]), CAST(:periods AS text[]), CAST(:amounts AS numeric[]))
         AS t(s, p, a)
    GROUP BY s, p ORDER BY s, p
    ON CONFLICT (scope, period) DO UPDATE
    SET spent_usd = budget_spend.spent_usd + EXCLUDED.spent_usd, updated_at = now()
    """
)


# The release of a finishing batch's calls as CTEs of the statement that completes their jobs
# (promptrun.batch_jobs), after a CTE `{done}` of the ids it completed (only those release).
# Their rows are locked in key order, after the jobs (as every writer of both does). Slots,
# tokens and the rate's increase only: a 429, a quota hint or a budget takes release_many.
RELEASE_DONE_SQL = """
    ended AS (
        SELECT r.key, count(*) AS calls, sum(r.token_delta) AS token_delta
        FROM json_to_recordset(CAST(:releases AS json)) AS r(job_id uuid, key text,
                                                              token_delta float8)
        WHERE r.job_id IN (SELECT id FROM {done}) GROUP BY r.key
    ), released AS (
        UPDATE flow_limits AS f SET
            in_flight = GREATEST(f.in_flight - e.calls, 0),
            token_tat = CASE WHEN f.tpm IS NULL THEN f.token_tat
                             ELSE f.token_tat + e.token_delta * 60.0
                                  / (f.tpm * CAST(:share AS float8) * f.rate_factor) END,
            rate_factor = LEAST(1.0, f.rate_factor
                                + e.calls / GREATEST(CAST(:min_steps AS float8),
                                                     COALESCE(f.rpm, 40) / CAST(:divisor AS float8))),
            updated_at = now()
        FROM ended e
        WHERE f.key = e.key AND f.key IN (
            SELECT key FROM flow_limits WHERE key IN (SELECT key FROM ended) ORDER BY key FOR UPDATE)
    )
"""


@dataclass(frozen=True)
class Ended:
    """One call's release (the arguments of `release`), for `release_many`."""

    lease: Lease
    tokens_used: int
    cost_usd: Decimal
    succeeded: bool
    throttled_for: float | None = None
    quota_wait: float | None = None


def release_done_params(ended: Sequence[tuple[Any, Ended]]) -> dict[str, Any] | None:
    """RELEASE_DONE_SQL's parameters for these (job id, release) pairs; None when one of them
    needs more than it does (release_many then): a 429, a quota hint, a budget to reconcile."""
    rows: list[dict[str, Any]] = []
    for job_id, e in ended:
        if e.throttled_for is not None or e.quota_wait or not e.succeeded:
            return None
        if e.lease.budget_periods and e.cost_usd != e.lease.demand.cost_usd:
            return None
        delta = float(e.tokens_used - e.lease.demand.tokens) if e.tokens_used else 0.0
        rows.extend({"job_id": str(job_id), "key": k, "token_delta": delta} for k in e.lease.keys)
    return {
        "releases": json.dumps(rows),
        "share": TARGET_SHARE,
        "min_steps": INCREASE_MIN_STEPS,
        "divisor": INCREASE_DIVISOR,
    }


def release_many(conn: Conn, ended: Sequence[Ended]) -> None:
    """`release` for many calls at once: one statement for every row's slots, tokens and
    rate (rows locked in key order), one for the budgets; a 429 or a quota hint adds its own."""
    ended = [e for e in ended if e.lease.keys]
    if not ended:
        return
    rows: dict[str, list[float]] = {}  # key -> [calls, token delta, successes]
    spend: dict[tuple[str, str], Decimal] = {}
    for e in ended:
        delta = float(e.tokens_used - e.lease.demand.tokens) if e.tokens_used else 0.0
        for key in e.lease.keys:
            row = rows.setdefault(key, [0, 0.0, 0])
            row[0] += 1
            row[1] += delta
            row[2] += 1 if e.succeeded else 0
        cost_delta = e.cost_usd - e.lease.demand.cost_usd
        for period in e.lease.budget_periods if cost_delta != 0 else ():
            spend[period] = spend.get(period, Decimal(0)) + cost_delta
    conn.execute(
        _RELEASE_MANY,
        {
            "keys": list(rows),
            "calls": [int(r[0]) for r in rows.values()],
            "token_delta": [r[1] for r in rows.values()],
            "successes": [int(r[2]) for r in rows.values()],
            "share": TARGET_SHARE,
            "min_steps": INCREASE_MIN_STEPS,
            "divisor": INCREASE_DIVISOR,
        },
    )
    for e in ended:  # rare: the rows are already locked by the statement above
        keys = list(e.lease.keys)
        if e.quota_wait and e.throttled_for is None:
            conn.execute(_HOLD, {"keys": keys, "wait": float(e.quota_wait)})
        if e.throttled_for is not None:
            conn.execute(
                _THROTTLE,
                {
                    "keys": keys,
                    "cooldown": DECREASE_COOLDOWN,
                    "min_factor": MIN_RATE_FACTOR,
                    "decrease": DECREASE_FACTOR,
                    "wait": float(e.throttled_for),
                    "burst": BURST_SECONDS,
                },
            )
    if spend:
        conn.execute(
            _RECONCILE_SPEND,
            {
                "scopes": [s for s, _ in spend],
                "periods": [p for _, p in spend],
                "amounts": list(spend.values()),
            },
        )


# --- pause and resume ---------------------------------------------------------------------------


def set_paused(
    conn: Conn,
    *,
    paused: bool,
    model: str | None = None,
    provider: str | None = None,
    reason: str | None = None,
) -> list[str]:
    """Pause or resume one model or every model of a provider; the slugs it applied to."""
    if (model is None) == (provider is None):
        raise ValueError("name exactly one of model or provider")
    result = conn.execute(
        text(
            "UPDATE flow_limits SET paused = :paused, paused_reason = :reason, updated_at = now() "
            "WHERE key LIKE 'model:%' AND (key = CAST(:key AS text) OR provider = CAST(:provider AS text)) "
            "RETURNING key"
        ),
        {
            "paused": paused,
            "reason": reason if paused else None,
            "key": model_key(model) if model else None,
            "provider": provider,
        },
    )
    return sorted(k.removeprefix("model:") for (k,) in result)


def waiting_jobs(conn: Conn, slugs: Iterable[str], reason_prefix: str) -> list[str]:
    """Queued jobs of these models that wait for `reason_prefix` (e.g. after a resume)."""
    rows = conn.execute(
        text(
            "SELECT j.id FROM prompt_jobs j JOIN models m ON m.id = j.model_id "
            "WHERE j.status = 'queued' AND m.slug = ANY(CAST(:slugs AS text[])) "
            "AND j.wait_reason LIKE :prefix"
        ),
        {"slugs": list(slugs), "prefix": reason_prefix + "%"},
    )
    return [str(r[0]) for r in rows]


def note_wait(conn: Conn, job_ids: Sequence[Any], reason: str | None) -> None:
    """Show why queued jobs wait. Also marks them enqueued now (their message is being sent
    back), so the fan-out's repair pass does not take a long wait for a lost message.
    Written when the reason changes, or every few minutes."""
    conn.execute(
        text(
            "UPDATE prompt_jobs SET wait_reason = :reason, enqueued_at = now(), updated_at = now() "
            "WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'queued' "
            "AND (wait_reason IS DISTINCT FROM CAST(:reason AS text) "
            "     OR enqueued_at IS NULL OR enqueued_at < now() - interval '5 minutes')"
        ),
        {"ids": [str(i) for i in job_ids], "reason": reason},
    )


# --- configuration, from the catalogue ------------------------------------------------------------


@dataclass(frozen=True)
class LimitConfig:
    key: str
    provider: str | None = None
    group_key: str | None = None
    max_concurrency: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_batch_usd: Decimal | None = None
    budget_day_usd: Decimal | None = None


_CONFIG_FIELDS = (
    "provider",
    "group_key",
    "max_concurrency",
    "rpm",
    "tpm",
    "budget_batch_usd",
    "budget_day_usd",
)


def sync_config(conn: Conn, configs: Sequence[LimitConfig]) -> dict[str, list[str]]:
    """Upsert the configured limits, keeping the live state (in flight, rates, paused).
    Returns the changed fields per key; rows of groups no longer named lose their limits."""
    current = {
        r["key"]: r
        for r in conn.execute(text("SELECT * FROM flow_limits ORDER BY key FOR UPDATE")).mappings()
    }
    changed: dict[str, list[str]] = {}
    for c in configs:
        values = {f: getattr(c, f) for f in _CONFIG_FIELDS}
        old = current.get(c.key)
        diff = [f for f in _CONFIG_FIELDS if old is None or _differs(old[f], values[f])]
        if old is not None and not diff:
            continue
        changed[c.key] = diff if old is not None else ["created"]
        conn.execute(
            text(
                "INSERT INTO flow_limits (key, provider, group_key, max_concurrency, rpm, tpm, "
                "budget_batch_usd, budget_day_usd, paused, in_flight, request_tat, token_tat, "
                "rate_factor, decreased_at, recounted_at, throttled, queue_tat) VALUES (:key, :provider, "
                ":group_key, :max_concurrency, :rpm, :tpm, :budget_batch_usd, :budget_day_usd, "
                "false, 0, 0, 0, 1, 0, 0, 0, 0) ON CONFLICT (key) DO UPDATE SET "
                + ", ".join(f"{f} = EXCLUDED.{f}" for f in _CONFIG_FIELDS)
                + ", updated_at = now()"
            ),
            {"key": c.key, **values},
        )
    named = {c.key for c in configs}
    for key in current:
        if key.startswith("group:") and key not in named:
            conn.execute(
                text(
                    "UPDATE flow_limits SET max_concurrency = NULL, rpm = NULL, tpm = NULL "
                    "WHERE key = :key"
                ),
                {"key": key},
            )
    return changed


def _differs(old: Any, new: Any) -> bool:
    if old is None or new is None:
        return old is not new
    if isinstance(new, Decimal) or isinstance(old, Decimal):
        return Decimal(old) != Decimal(new)
    return bool(old != new)
