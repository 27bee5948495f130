"""The catalogue file (YAML): validated whole, then synced idempotently into prompts and models."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Engine, select

from promptrun.db.engine import session_scope
from promptrun.db.models import Model, Prompt
from promptrun.errors import InputError

PROVIDERS = ("openai", "anthropic", "bedrock", "offline")
SLUG_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,199}$"


class Prices(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Decimal = Field(default=Decimal(0), ge=0)
    output: Decimal = Field(default=Decimal(0), ge=0)


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: str = Field(pattern=SLUG_PATTERN)
    provider: Literal["openai", "anthropic", "bedrock", "offline"]
    model: str = Field(min_length=1, max_length=300)
    base_url: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    price_per_mtok: Prices = Field(default_factory=Prices)
    max_concurrency: int = Field(default=4, ge=1, le=1000)
    enabled: bool = True
    # The model that extracts entities from this model's answers (default: the catalogue's
    # extraction_model, else this model itself).
    extraction_model: str | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v


class PromptEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: str = Field(pattern=SLUG_PATTERN)
    text: str = Field(min_length=1)
    system: str | None = None
    schedule: Literal["hourly", "daily", "weekly"]
    runs: int = Field(default=1, ge=1, le=100)
    models: Literal["all"] | list[str] = "all"
    enabled: bool = True


class CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    extraction_model: str | None = None
    models: list[ModelEntry] = Field(default_factory=list)
    prompts: list[PromptEntry] = Field(default_factory=list)


def prompt_version(text: str, system: str | None) -> str:
    """A changed prompt is a new version: a hash of what the model is sent."""
    digest = hashlib.sha256()
    digest.update((system or "").encode())
    digest.update(b"\x00")
    digest.update(text.encode())
    return digest.hexdigest()[:16]


def _where(data: Any, loc: tuple[int | str, ...]) -> str:
    """Name the entry by its slug where there is one: `prompts[2] (best-crm).runs`."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            slug = (
                node[item].get("slug")
                if isinstance(node, list) and item < len(node) and isinstance(node[item], dict)
                else None
            )
            parts[-1] = f"{parts[-1]}[{item}]" + (f" ({slug})" if slug else "")
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


def load_catalog(text: str, source: str = "catalogue") -> CatalogFile:
    import yaml  # here, not at the top: the status function imports this module for SLUG_PATTERN

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping with 'models' and 'prompts'")
    try:
        catalog = CatalogFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(
                x
                for x in err["loc"]
                if not (isinstance(x, str) and x.startswith(("literal[", "list[")))
            )
            problems.append(f"{_where(data, loc)}: {err['msg']}")
        raise InputError(f"{source}: " + "; ".join(problems)) from None
    _check_references(catalog, source)
    return catalog


def _check_references(catalog: CatalogFile, source: str) -> None:
    problems = []
    slug_lists = {
        "models": [m.slug for m in catalog.models],
        "prompts": [p.slug for p in catalog.prompts],
    }
    for kind, slugs in slug_lists.items():
        seen: set[str] = set()
        for i, slug in enumerate(slugs):
            if slug in seen:
                problems.append(f"{kind}[{i}] ({slug}).slug: duplicate slug")
            seen.add(slug)
    model_slugs = {m.slug for m in catalog.models}
    if catalog.extraction_model and catalog.extraction_model not in model_slugs:
        problems.append(f"extraction_model: unknown model slug {catalog.extraction_model!r}")
    for i, model in enumerate(catalog.models):
        if model.extraction_model and model.extraction_model not in model_slugs:
            problems.append(
                f"models[{i}] ({model.slug}).extraction_model: unknown model slug {model.extraction_model!r}"
            )
    for i, prompt in enumerate(catalog.prompts):
        if isinstance(prompt.models, list):
            if not prompt.models:
                problems.append(
                    f"prompts[{i}] ({prompt.slug}).models: empty list; use 'all' or name models"
                )
            for slug in prompt.models:
                if slug not in model_slugs:
                    problems.append(
                        f"prompts[{i}] ({prompt.slug}).models: unknown model slug {slug!r}"
                    )
    if problems:
        raise InputError(f"{source}: " + "; ".join(problems))


def load_catalog_file(path: Path) -> CatalogFile:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    return load_catalog(text, str(path))


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"created {x}" for x in self.created]
        out += [f"updated {x}" for x in self.updated]
        out.append(
            f"{len(self.created)} created, {len(self.updated)} updated, {len(self.unchanged)} unchanged"
        )
        return out


def _apply(row: Any, values: dict[str, Any]) -> list[str]:
    changed = []
    for key, value in values.items():
        if getattr(row, key) != value:
            setattr(row, key, value)
            changed.append(key)
    return changed


def sync_catalog(engine: Engine, catalog: CatalogFile) -> SyncReport:
    """Upsert every entry in one transaction: all of the file or none of it.
    Entries missing from the file are left as they are (disable them with enabled: false)."""
    report = SyncReport()
    with session_scope(engine) as session:
        models = {m.slug: m for m in session.scalars(select(Model).with_for_update())}
        for entry in catalog.models:
            values: dict[str, Any] = {
                "provider": entry.provider,
                "provider_model": entry.model,
                "base_url": entry.base_url,
                "params": entry.params,
                "price_input_per_mtok": entry.price_per_mtok.input,
                "price_output_per_mtok": entry.price_per_mtok.output,
                "max_concurrency": entry.max_concurrency,
                "enabled": entry.enabled,
            }
            _upsert(
                session,
                Model,
                models.get(entry.slug),
                entry.slug,
                values,
                f"model {entry.slug}",
                report,
            )
        session.flush()
        rows = {m.slug: m for m in session.scalars(select(Model))}
        for entry in catalog.models:
            extractor = entry.extraction_model or catalog.extraction_model
            wanted = rows[extractor].id if extractor and extractor != entry.slug else None
            row = rows[entry.slug]
            if row.extraction_model_id != wanted:
                row.extraction_model_id = wanted
                label = f"model {entry.slug}"
                if label not in report.created:
                    report.unchanged = [u for u in report.unchanged if u != label]
                    report.updated.append(f"{label} (extraction_model)")
        prompts = {p.slug: p for p in session.scalars(select(Prompt).with_for_update())}
        for p in catalog.prompts:
            values = {
                "text": p.text,
                "system_text": p.system,
                "schedule": p.schedule,
                "runs_per_batch": p.runs,
                "model_slugs": None if p.models == "all" else list(p.models),
                "enabled": p.enabled,
                "version": prompt_version(p.text, p.system),
            }
            _upsert(
                session, Prompt, prompts.get(p.slug), p.slug, values, f"prompt {p.slug}", report
            )
    return report


def _upsert(
    session: Any,
    cls: Any,
    row: Any,
    slug: str,
    values: dict[str, Any],
    label: str,
    report: SyncReport,
) -> None:
    from sqlalchemy import func

    if row is None:
        session.add(cls(slug=slug, **values))
        report.created.append(label)
        return
    changed = _apply(row, values)
    if changed:
        row.updated_at = func.now()
        report.updated.append(f"{label} ({', '.join(changed)})")
    else:
        report.unchanged.append(label)
