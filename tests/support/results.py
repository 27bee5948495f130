"""Known answers for the results tests: jobs, responses and mentions inserted directly."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, select

from promptrun.db.models import EntityMention, Model, Prompt, PromptJob, Response
from promptrun.extraction import clean_name

BRANDS_CATALOG = """
models:
  - {slug: alpha, provider: offline, model: alpha-1, price_per_mtok: {input: 1.0, output: 2.0}}
  - {slug: beta, provider: offline, model: beta-1}
prompts:
  - {slug: crm, text: "What are the best CRM tools?", schedule: daily, runs: 2}
  - {slug: laptops, text: "Which laptops do developers like?", schedule: hourly, runs: 1, models: [alpha]}
brands:
  - {slug: acme, name: Acme, own: true, aliases: ["Acme CRM", "acme.com"]}
  - {slug: globex, name: Globex, aliases: ["Globex Corp"]}
  - {slug: initech, name: Initech}
"""


def day(n: int) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=n)


class Answers:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with engine.connect() as conn:
            self.prompts = dict(conn.execute(select(Prompt.slug, Prompt.id)).all())
            self.models = dict(conn.execute(select(Model.slug, Model.id)).all())

    def add(
        self,
        batch_key: str,
        scheduled_for: datetime,
        model: str,
        prompt: str,
        run_index: int,
        names: list[str],
        status: str = "succeeded",
        **job: Any,
    ) -> uuid.UUID:
        """One job; when succeeded, an answer naming `names` in that order (rank 1 first)."""
        job_id = uuid.uuid4()
        with self.engine.begin() as conn:
            conn.execute(
                insert(PromptJob).values(
                    id=job_id,
                    prompt_id=self.prompts[prompt],
                    model_id=self.models[model],
                    run_index=run_index,
                    batch_key=batch_key,
                    prompt_version="v1",
                    status=status,
                    attempt_count=1,
                    scheduled_for=scheduled_for,
                    **{
                        "finished_at": None
                        if status in ("queued", "processing")
                        else scheduled_for,
                        **job,
                    },
                )
            )
            if status != "succeeded":
                return job_id
            text = "Picks: " + ", ".join(f"**{n}**" for n in names) + "."
            conn.execute(
                insert(Response).values(
                    job_id=job_id, answer_text=text, structured={"entities": []}
                )
            )
            for rank, name in enumerate(names, 1):
                conn.execute(
                    insert(EntityMention).values(
                        job_id=job_id,
                        prompt_id=self.prompts[prompt],
                        model_id=self.models[model],
                        batch_key=batch_key,
                        name=clean_name(name).casefold(),
                        display_name=name,
                        entity_type="brand",
                        rank=rank,
                        sentiment=("positive", "neutral", "negative")[rank % 3],
                    )
                )
        return job_id
