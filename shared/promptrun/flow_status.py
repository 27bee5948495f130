"""Flow control as operators see and steer it: each model's limits, effective rates, calls in
flight and paused state; pause and resume (a resume sends the paused jobs back at once); after
a budget changed, the jobs waiting on one sent back at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field
from sqlalchemy import Engine, text

from promptrun import limits
from promptrun.aws import JobQueue
from promptrun.errors import InputError
from promptrun.observability import logger


class Limits(BaseModel):
    max_concurrency: int | None
    rpm: int | None = Field(description="requests per minute, as configured")
    tpm: int | None = Field(description="tokens per minute, as configured")


class Effective(BaseModel):
    rpm: float | None = Field(
        description="the rate admitted now: 95% of the configured one, lowered after 429s"
    )
    tpm: float | None
    rate_factor: float = Field(description="share of the configured rates in use, 0-1")


class Budgets(BaseModel):
    per_batch_usd: float | None
    per_day_usd: float | None
    spent_today_usd: float = Field(description="spent and reserved for calls in flight, UTC day")


class ModelFlow(BaseModel):
    slug: str
    provider: str
    enabled: bool
    limits: Limits
    limit_group: str | None
    group_limits: Limits | None
    effective: Effective
    in_flight: int
    throttled: int = Field(description="429s and overload answers seen")
    paused: bool
    paused_reason: str | None
    budgets: Budgets
    waiting: int = Field(description="queued jobs waiting on a limit, a pause or a budget")


class ModelList(BaseModel):
    items: list[ModelFlow]


_MODELS = text(
    """
    SELECT m.slug, m.provider, m.enabled,
           f.max_concurrency, f.rpm, f.tpm, f.rate_factor, f.in_flight, f.throttled,
           COALESCE(f.paused, false) AS paused, f.paused_reason,
           f.budget_batch_usd, f.budget_day_usd, f.group_key,
           g.max_concurrency AS g_max_concurrency, g.rpm AS g_rpm, g.tpm AS g_tpm,
           COALESCE(s.spent_usd, 0) AS spent_today,
           (SELECT count(*) FROM prompt_jobs j WHERE j.model_id = m.id AND j.status = 'queued'
              AND j.wait_reason IS NOT NULL) AS waiting
    FROM models m
    LEFT JOIN flow_limits f ON f.key = 'model:' || m.slug
    LEFT JOIN flow_limits g ON g.key = f.group_key
    LEFT JOIN budget_spend s ON s.scope = f.key
         AND s.period = 'day:' || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD')
    ORDER BY m.slug
    """
)


def _num(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def list_models(engine: Engine) -> ModelList:
    with engine.connect() as conn:
        rows = conn.execute(_MODELS).mappings().all()
    items = []
    for r in rows:
        factor = float(r["rate_factor"] or 1.0)
        items.append(
            ModelFlow(
                slug=r["slug"],
                provider=r["provider"],
                enabled=r["enabled"],
                limits=Limits(max_concurrency=r["max_concurrency"], rpm=r["rpm"], tpm=r["tpm"]),
                limit_group=(r["group_key"] or "").removeprefix("group:") or None,
                group_limits=Limits(
                    max_concurrency=r["g_max_concurrency"], rpm=r["g_rpm"], tpm=r["g_tpm"]
                )
                if r["group_key"]
                else None,
                effective=Effective(
                    rpm=_round(limits.effective(r["rpm"], factor)),
                    tpm=_round(limits.effective(r["tpm"], factor)),
                    rate_factor=round(factor, 4),
                ),
                in_flight=r["in_flight"] or 0,
                throttled=r["throttled"] or 0,
                paused=r["paused"],
                paused_reason=r["paused_reason"],
                budgets=Budgets(
                    per_batch_usd=_num(r["budget_batch_usd"]),
                    per_day_usd=_num(r["budget_day_usd"]),
                    spent_today_usd=float(r["spent_today"]),
                ),
                waiting=r["waiting"],
            )
        )
    return ModelList(items=items)


class PauseResult(BaseModel):
    models: list[str] = Field(description="the models it applied to")
    paused: bool
    requeued: int | None = Field(
        default=None, description="paused jobs sent back at a resume (None: no queue configured)"
    )


@dataclass(frozen=True)
class Target:
    model: str | None = None
    provider: str | None = None

    def describe(self) -> str:
        return f"model {self.model}" if self.model else f"provider {self.provider}"


def pause(engine: Engine, target: Target, reason: str | None = None) -> PauseResult:
    why = reason or f"{target.describe()} paused by an operator"
    with engine.begin() as conn:
        slugs = limits.set_paused(
            conn, paused=True, model=target.model, provider=target.provider, reason=why
        )
    if not slugs:
        raise InputError(f"no {target.describe()} in the catalogue")
    logger.info("paused", extra={"models": slugs, "reason": why})
    return PauseResult(models=slugs, paused=True)


def resume(engine: Engine, target: Target, queue: JobQueue | None) -> PauseResult:
    """Resume, then send every job that waited on the pause back at once: they run within
    the queue's next poll, not at their next re-check (up to 15 minutes later)."""
    with engine.begin() as conn:
        slugs = limits.set_paused(conn, paused=False, model=target.model, provider=target.provider)
        waiting = limits.waiting_jobs(conn, slugs, "paused") if slugs else []
    if not slugs:
        raise InputError(f"no {target.describe()} in the catalogue")
    requeued: int | None = None
    if queue is not None and waiting:
        # The delayed copies still out there arrive later and find the jobs done: absorbed.
        requeued = len(queue.send_jobs(waiting).sent)
    elif queue is not None:
        requeued = 0
    logger.info("resumed", extra={"models": slugs, "requeued": requeued})
    return PauseResult(models=slugs, paused=False, requeued=requeued)


def requeue_budget_waits(engine: Engine, keys: Sequence[str], queue: JobQueue | None) -> int | None:
    """After budgets changed (`keys`: the flow_limits rows whose budget a catalogue sync
    changed): send the jobs waiting on a budget back at once, so a raised budget lets them run
    now rather than at their next re-check (up to 15 minutes later). Those still over a budget
    wait again. None: no queue configured."""
    if not keys:
        return 0 if queue is not None else None
    with engine.connect() as conn:
        if limits.CATALOG_KEY in keys:
            slugs = [s for (s,) in conn.execute(text("SELECT slug FROM models"))]
        else:
            slugs = [k.removeprefix("model:") for k in keys if k.startswith("model:")]
        waiting = limits.waiting_jobs(conn, slugs, "budget") if slugs else []
    if queue is None:
        return None
    sent = len(queue.send_jobs(waiting).sent) if waiting else 0
    logger.info("budgets changed", extra={"budgets": list(keys), "requeued": sent})
    return sent
