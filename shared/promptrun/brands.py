"""Brands in the catalogue: the user's own and competitors, each with aliases.

Matching is done at query time: `brand_aliases` maps a normalized mention name (the same
key `entity_mentions.name` holds: markdown and punctuation stripped, case-folded) to its
brand. Mentions are never rewritten, and an unmatched entity simply stays as it is. A
sync that changes brands or aliases recomputes the finished batches' rollups in the same
transaction, so every past answer is re-matched at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, insert, select

from promptrun.db import schema
from promptrun.extraction import clean_name

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

BRAND_SLUG_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,199}$"


class BrandEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: str = Field(pattern=BRAND_SLUG_PATTERN)
    name: str = Field(min_length=1, max_length=300)
    own: bool = False
    aliases: list[str] = Field(default_factory=list, description="names, domains, products")


def alias_key(raw: str) -> str:
    """The match key of a name, exactly as extraction normalizes mention names."""
    return clean_name(raw).casefold()[:300]


def brand_keys(entry: BrandEntry) -> dict[str, str]:
    """{match key: spelling} for the brand's name and every alias."""
    keys: dict[str, str] = {}
    for spelling in [entry.name, *entry.aliases]:
        key = alias_key(spelling)
        if key:
            keys.setdefault(key, spelling)
    return keys


def check_brands(brands: list[BrandEntry]) -> list[str]:
    """Problems, each naming the entry and field: duplicate slugs, empty or shared aliases."""
    problems: list[str] = []
    owner: dict[str, str] = {}
    seen: set[str] = set()
    for i, entry in enumerate(brands):
        where = f"brands[{i}] ({entry.slug})"
        if entry.slug in seen:
            problems.append(f"{where}.slug: duplicate slug")
        seen.add(entry.slug)
        if not alias_key(entry.name):  # a brand no mention could ever match
            problems.append(f"{where}.name: empty after normalization ({entry.name!r})")
        for j, alias in enumerate(entry.aliases):
            if not alias_key(alias):
                problems.append(f"{where}.aliases[{j}]: empty after normalization ({alias!r})")
        for key in brand_keys(entry):
            other = owner.setdefault(key, entry.slug)
            if other != entry.slug:
                problems.append(
                    f"{where}.aliases: {key!r} already names brand {other!r}; an alias names one brand"
                )
    return problems


@dataclass
class BrandChanges:
    created: list[str]
    updated: list[str]
    removed: list[str]
    unchanged: list[str]


def sync_brands(session: Session, brands: list[BrandEntry]) -> BrandChanges:
    """Make the tables hold exactly the file's brands (the section, when present, is the
    whole set: a brand left out is no longer tracked; no mention is touched either way)."""
    # The ORM only here (the catalogue sync): the status API reads brands through Core.
    from promptrun.db.models import Brand, BrandAlias

    changes = BrandChanges([], [], [], [])
    rows = {b.slug: b for b in session.scalars(select(Brand).with_for_update())}
    current: dict[int, dict[str, str]] = {}
    for alias in session.scalars(select(BrandAlias)):
        current.setdefault(alias.brand_id, {})[alias.alias] = alias.spelling
    wanted = {b.slug for b in brands}
    for slug, gone in rows.items():
        if slug not in wanted:
            session.delete(gone)
            changes.removed.append(f"brand {slug}")
    session.flush()
    for entry in brands:
        found = rows.get(entry.slug)
        keys = brand_keys(entry)
        if found is not None:
            row = found
            changed = [f for f in ("name", "own") if getattr(row, f) != getattr(entry, f)]
            if current.get(row.id, {}) != keys:
                changed.append("aliases")
            if changed:
                row.name, row.own = entry.name, entry.own
                row.updated_at = func.now()
                changes.updated.append(f"brand {entry.slug} ({', '.join(changed)})")
            else:
                changes.unchanged.append(f"brand {entry.slug}")
        else:
            row = Brand(slug=entry.slug, name=entry.name, own=entry.own)
            session.add(row)
            session.flush()
            changes.created.append(f"brand {entry.slug}")
            current[row.id] = {}
        if current.get(row.id, {}) != keys:
            # Aliases can move between brands in one sync: clear this brand's, and any
            # other brand's that now belongs here, before inserting.
            session.execute(delete(BrandAlias).where(BrandAlias.brand_id == row.id))
            session.execute(delete(BrandAlias).where(BrandAlias.alias.in_(list(keys))))
            session.flush()
            if keys:
                session.execute(
                    insert(BrandAlias),
                    [{"alias": k, "brand_id": row.id, "spelling": v} for k, v in keys.items()],
                )
    if changes.created or changes.updated or changes.removed:
        # Rollups hold matches: sum every finished batch again under the new aliases.
        from promptrun.visibility import refresh_rollups

        session.flush()
        refresh_rollups(session.connection())
    return changes


def brand_rows(session_or_conn: Any) -> list[dict[str, Any]]:
    """Every tracked brand with its aliases, own brands first."""
    brand, alias_of = schema.brands.c, schema.brand_aliases.c
    brands = session_or_conn.execute(
        select(brand.id, brand.slug, brand.name, brand.own).order_by(brand.own.desc(), brand.slug)
    ).all()
    aliases = session_or_conn.execute(
        select(alias_of.brand_id, alias_of.alias).order_by(alias_of.alias)
    ).all()
    by_brand: dict[int, list[str]] = {}
    for brand_id, alias in aliases:
        by_brand.setdefault(brand_id, []).append(alias)
    return [
        {
            "id": b.id,
            "slug": b.slug,
            "name": b.name,
            "own": b.own,
            "aliases": by_brand.get(b.id, []),
        }
        for b in brands
    ]
