"""The dashboard's data: recent batches' progress per model, latency, tokens and cost per
model, failures by error kind, and a prompt's answers cut into segments with the mentions
marked. The page itself is static (dashboard/static); its charts are SVG drawn here."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Engine, text

from promptrun.brands import brand_rows

RECENT_BATCHES = 10


class ModelProgress(BaseModel):
    model: str
    planned: int
    succeeded: int
    failed: int
    retrying: int = Field(description="queued again after a failed attempt")
    waiting: int = Field(description="queued, not tried yet")
    running: int
    cancelled: int
    skipped: int


class BatchProgress(BaseModel):
    batch_key: str
    created_at: datetime
    planned: int
    finished: int
    models: list[ModelProgress]


class ModelStats(BaseModel):
    model: str
    jobs: int
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    input_tokens: int
    output_tokens: int
    cost_usd: float


class FailureKind(BaseModel):
    error_kind: str
    failed: int
    retrying: int
    example: str | None


class Overview(BaseModel):
    batches: list[BatchProgress]
    models: list[ModelStats] = Field(description="over the recent batches")
    failures: list[FailureKind]
    brands: list[dict[str, Any]]
    prompts: list[str]


def overview(engine: Engine, recent: int = RECENT_BATCHES) -> Overview:
    recent_cte = """
        WITH recent AS (
            SELECT batch_key, min(created_at) AS created_at FROM prompt_jobs
            GROUP BY batch_key ORDER BY min(created_at) DESC, batch_key DESC LIMIT :n
        )"""
    with engine.connect() as conn:
        progress = conn.execute(
            text(
                recent_cte
                + """
                SELECT j.batch_key, r.created_at, mo.slug AS model, count(*) AS planned,
                    count(*) FILTER (WHERE j.status = 'succeeded') AS succeeded,
                    count(*) FILTER (WHERE j.status = 'failed') AS failed,
                    count(*) FILTER (WHERE j.status = 'queued' AND j.attempt_count > 0) AS retrying,
                    count(*) FILTER (WHERE j.status = 'queued' AND j.attempt_count = 0) AS waiting,
                    count(*) FILTER (WHERE j.status = 'processing') AS running,
                    count(*) FILTER (WHERE j.status = 'cancelled') AS cancelled,
                    count(*) FILTER (WHERE j.status = 'skipped') AS skipped
                FROM prompt_jobs j JOIN recent r ON r.batch_key = j.batch_key
                JOIN models mo ON mo.id = j.model_id
                GROUP BY j.batch_key, r.created_at, mo.slug
                ORDER BY r.created_at DESC, j.batch_key DESC, mo.slug"""
            ),
            {"n": recent},
        ).all()
        stats = conn.execute(
            text(
                recent_cte
                + """
                SELECT mo.slug AS model, count(*) AS jobs,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY j.duration_ms) AS p50,
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY j.duration_ms) AS p95,
                    coalesce(sum(j.input_tokens), 0) AS input_tokens,
                    coalesce(sum(j.output_tokens), 0) AS output_tokens,
                    coalesce(sum(j.cost_usd), 0) AS cost_usd
                FROM prompt_jobs j JOIN recent r ON r.batch_key = j.batch_key
                JOIN models mo ON mo.id = j.model_id
                GROUP BY mo.slug ORDER BY mo.slug"""
            ),
            {"n": recent},
        ).all()
        failures = conn.execute(
            text(
                recent_cte
                + """
                SELECT j.error_kind,
                    count(*) FILTER (WHERE j.status = 'failed') AS failed,
                    count(*) FILTER (WHERE j.status = 'queued') AS retrying,
                    min(j.error_message) AS example
                FROM prompt_jobs j JOIN recent r ON r.batch_key = j.batch_key
                WHERE j.error_kind IS NOT NULL AND j.status IN ('failed', 'queued')
                GROUP BY j.error_kind ORDER BY count(*) DESC, j.error_kind"""
            ),
            {"n": recent},
        ).all()
        prompts = conn.execute(text("SELECT slug FROM prompts ORDER BY slug")).scalars().all()
        brands = brand_rows(conn)
    batches: dict[str, BatchProgress] = {}
    for row in progress:
        b = batches.setdefault(
            row.batch_key,
            BatchProgress(
                batch_key=row.batch_key, created_at=row.created_at, planned=0, finished=0, models=[]
            ),
        )
        m = ModelProgress.model_validate(
            {k: v for k, v in row._mapping.items() if k in ModelProgress.model_fields}
        )
        b.models.append(m)
        b.planned += m.planned
        b.finished += m.succeeded + m.failed + m.cancelled + m.skipped
    return Overview(
        batches=list(batches.values()),
        models=[
            ModelStats(
                model=r.model,
                jobs=r.jobs,
                p50_latency_ms=None if r.p50 is None else round(float(r.p50), 1),
                p95_latency_ms=None if r.p95 is None else round(float(r.p95), 1),
                input_tokens=int(r.input_tokens),
                output_tokens=int(r.output_tokens),
                cost_usd=round(float(r.cost_usd), 6),
            )
            for r in stats
        ],
        failures=[
            FailureKind(
                error_kind=r.error_kind, failed=r.failed, retrying=r.retrying, example=r.example
            )
            for r in failures
        ],
        brands=[{k: b[k] for k in ("slug", "name", "own")} for b in brands],
        prompts=list(prompts),
    )


class Segment(BaseModel):
    text: str
    entity: str | None = Field(description="the mention this text is, if any")
    brand: str | None = Field(description="its tracked brand slug, if any")
    own: bool = False


class AnswerView(BaseModel):
    job_id: uuid.UUID
    model: str
    run_index: int
    prompt: str
    mentions: list[dict[str, Any]]
    segments: list[Segment]


class AnswerList(BaseModel):
    batch_key: str
    prompt: str
    items: list[AnswerView]


def highlight(answer: str, needles: dict[str, tuple[str, str | None, bool]]) -> list[Segment]:
    """Cut `answer` at every case-insensitive occurrence of a needle (longest first):
    needles maps a spelling to (entity, brand slug, own)."""
    if not needles:
        return [Segment(text=answer, entity=None, brand=None)]
    ordered = sorted(needles, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(n) for n in ordered), re.IGNORECASE)
    lowered = {n.casefold(): v for n, v in needles.items()}
    segments: list[Segment] = []
    pos = 0
    for match in pattern.finditer(answer):
        if match.start() > pos:
            segments.append(Segment(text=answer[pos : match.start()], entity=None, brand=None))
        entity, brand, own = lowered[match.group(0).casefold()]
        segments.append(Segment(text=match.group(0), entity=entity, brand=brand, own=own))
        pos = match.end()
    if pos < len(answer):
        segments.append(Segment(text=answer[pos:], entity=None, brand=None))
    return segments


def answers(engine: Engine, batch_key: str, prompt: str, limit: int = 50) -> AnswerList:
    with engine.connect() as conn:
        jobs = conn.execute(
            text(
                """SELECT j.id, mo.slug AS model, j.run_index, r.answer_text
                   FROM prompt_jobs j JOIN prompts pr ON pr.id = j.prompt_id
                   JOIN models mo ON mo.id = j.model_id
                   JOIN responses r ON r.job_id = j.id
                   WHERE j.batch_key = :b AND pr.slug = :p
                   ORDER BY mo.slug, j.run_index LIMIT :n"""
            ),
            {"b": batch_key, "p": prompt, "n": limit},
        ).all()
        mentions = conn.execute(
            text(
                """SELECT m.job_id, m.display_name, m.name, m.rank, m.sentiment,
                          b.slug AS brand, coalesce(b.own, false) AS own
                   FROM entity_mentions m
                   LEFT JOIN brand_aliases a ON a.alias = m.name
                   LEFT JOIN brands b ON b.id = a.brand_id
                   WHERE m.job_id IN (SELECT unnest(CAST(:ids AS uuid[])))
                   ORDER BY m.job_id, m.rank"""
            ),
            {"ids": [str(j.id) for j in jobs]},
        ).all()
    by_job: dict[Any, list[Any]] = {}
    for m in mentions:
        by_job.setdefault(m.job_id, []).append(m)
    items = []
    for j in jobs:
        found = by_job.get(j.id, [])
        needles = {m.display_name: (m.display_name, m.brand, bool(m.own)) for m in found}
        items.append(
            AnswerView(
                job_id=j.id,
                model=j.model,
                run_index=j.run_index,
                prompt=prompt,
                mentions=[
                    {
                        "entity": m.display_name,
                        "rank": m.rank,
                        "sentiment": m.sentiment,
                        "brand": m.brand,
                        "own": bool(m.own),
                    }
                    for m in found
                ],
                segments=highlight(j.answer_text, needles),
            )
        )
    return AnswerList(batch_key=batch_key, prompt=prompt, items=items)
