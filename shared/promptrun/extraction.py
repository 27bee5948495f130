"""The strict structured result of a job: the entities an answer mentions, normalised."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EntityType = Literal["brand", "product", "person", "organization", "place", "other"]
Sentiment = Literal["positive", "neutral", "negative"]


# defer_build everywhere: validators are built on first use, not in every cold start (the
# status API imports this module for clean_name and never validates).


class Entity(BaseModel):
    """One entity as a model reports it."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    name: str = Field(min_length=1, max_length=300)
    type: EntityType = "other"
    rank: int = Field(ge=1, description="order of first appearance in the answer, from 1")
    sentiment: Sentiment | None = None
    snippet: str | None = Field(default=None, max_length=1000)


class ExtractionResult(BaseModel):
    """The schema extraction must produce; anything else is a validation error."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    entities: list[Entity] = Field(max_length=200)


class NormalizedEntity(BaseModel):
    model_config = ConfigDict(defer_build=True)
    name: str  # the match key: case-folded
    display_name: str
    type: EntityType
    rank: int
    sentiment: Sentiment | None = None
    snippet: str | None = None


_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MARKDOWN = re.compile(r"[*_`~#>\[\]]+")
_SPACES = re.compile(r"\s+")
# Straight and typographic quotes (U+2018, U+2019, U+201C, U+201D) alike.
_TRAILING = re.compile(r"[\s.,;:!?)\]\"'\u2019\u201d-]+$")
_LEADING = re.compile(r"^[\s(\[\"'\u2018\u201c-]+")


def clean_name(raw: str) -> str:
    """Trimmed, markdown and surrounding punctuation stripped, inner spaces folded."""
    name = _LINK.sub(r"\1", raw)  # [Hooli](https://...) -> Hooli
    name = _MARKDOWN.sub("", name)
    name = _SPACES.sub(" ", name)
    name = _TRAILING.sub("", name)
    name = _LEADING.sub("", name)
    return name.strip()


def normalize_entities(entities: list[Entity]) -> list[NormalizedEntity]:
    """Merge the same entity written two ways; ranks re-numbered by first appearance."""
    merged: dict[str, NormalizedEntity] = {}
    for entity in sorted(entities, key=lambda e: e.rank):
        display = clean_name(entity.name)
        if not display:
            continue
        key = display.casefold()
        if key in merged:
            kept = merged[key]
            if kept.sentiment is None and entity.sentiment is not None:
                kept.sentiment = entity.sentiment
            if kept.snippet is None and entity.snippet:
                kept.snippet = entity.snippet
            continue
        merged[key] = NormalizedEntity(
            name=key[:300],
            display_name=display[:300],
            type=entity.type,
            rank=len(merged) + 1,
            sentiment=entity.sentiment,
            snippet=entity.snippet,
        )
    return list(merged.values())
