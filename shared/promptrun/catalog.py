"""The catalogue file (YAML): validated whole, then synced idempotently into prompts and models."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Engine, select

from promptrun import limits
from promptrun.brands import BrandEntry, check_brands, sync_brands
from promptrun.catalog_params import param_problems
from promptrun.db.engine import session_scope
from promptrun.db.models import Model, Prompt, PromptVersion
from promptrun.errors import InputError
from promptrun.providers.keys import model_key_problem
from promptrun.slugs import SLUG_PATTERN

PROVIDERS = ("openai", "anthropic", "bedrock", "offline")
MAX_PROMPT_CHARS = 32_000  # text and system text together
MAX_JOBS_PER_BATCH = 100_000  # prompts x models x runs sharing one schedule (one batch key)


class Prices(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Decimal = Field(default=Decimal(0), ge=0)
    output: Decimal = Field(default=Decimal(0), ge=0)


class Budget(BaseModel):
    """USD a scope may spend per batch and per (UTC) day; each optional."""

    model_config = ConfigDict(extra="forbid")
    per_batch: Decimal | None = Field(default=None, gt=0)
    per_day: Decimal | None = Field(default=None, gt=0)


class LimitGroup(BaseModel):
    """A provider quota several models share (OpenAI per organisation, Bedrock per region)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SLUG_PATTERN)
    max_concurrency: int | None = Field(default=None, ge=1, le=10000)
    rpm: int | None = Field(default=None, ge=1, le=10_000_000)
    tpm: int | None = Field(default=None, ge=1, le=1_000_000_000)


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: str = Field(pattern=SLUG_PATTERN)
    provider: Literal["openai", "anthropic", "bedrock", "offline"]
    model: str = Field(min_length=1, max_length=300)
    base_url: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    price_per_mtok: Prices = Field(default_factory=Prices)
    max_concurrency: int = Field(default=4, ge=1, le=1000)
    rpm: int | None = Field(default=None, ge=1, le=10_000_000)  # requests per minute
    tpm: int | None = Field(default=None, ge=1, le=1_000_000_000)  # tokens per minute
    limit_group: str | None = None  # a name from limit_groups: a quota shared with others
    budget_usd: Budget | None = None
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
    budget_usd: Budget | None = None  # catalogue-wide
    limit_groups: list[LimitGroup] = Field(default_factory=list)
    models: list[ModelEntry] = Field(default_factory=list)
    prompts: list[PromptEntry] = Field(default_factory=list)
    # None: the file says nothing about brands and the tracked ones stay as they are.
    brands: list[BrandEntry] | None = None


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
                (node[item].get("slug") or node[item].get("name"))
                if isinstance(node, list) and item < len(node) and isinstance(node[item], dict)
                else None
            )
            parts[-1] = f"{parts[-1]}[{item}]" + (f" ({slug})" if slug else "")
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


def _problems_error(source: str, problems: list[str]) -> InputError:
    """One problem a line, under a line naming the file."""
    noun = "problem" if len(problems) == 1 else "problems"
    return InputError(
        f"{source}: {len(problems)} {noun}:\n" + "\n".join(f"  {p}" for p in problems)
    )


def load_catalog(text: str, source: str = "catalogue") -> CatalogFile:
    # Here, not at the top: the status function imports this module, and needs no PyYAML.
    from promptrun.catalog_yaml import YamlProblem, parse_yaml

    try:
        data = parse_yaml(text)
    except YamlProblem as exc:
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
        raise _problems_error(source, problems + _raw_param_problems(data)) from None
    _check_references(catalog, source)
    return catalog


def _raw_param_problems(data: dict[str, Any]) -> list[str]:
    """The params problems too, when other errors stopped the file's validation."""
    out = []
    models = data.get("models")
    for i, model in enumerate(models if isinstance(models, list) else []):
        if isinstance(model, dict) and isinstance(model.get("params"), dict):
            slug = f" ({model['slug']})" if model.get("slug") else ""
            for p in param_problems(str(model.get("provider")), model["params"]):
                out.append(f"models[{i}]{slug}.params.{p.key}: {p.message}")
    return out


def _check_params_and_limits(catalog: CatalogFile) -> list[str]:
    problems = []
    for i, model in enumerate(catalog.models):
        for p in param_problems(model.provider, model.params):
            problems.append(f"models[{i}] ({model.slug}).params.{p.key}: {p.message}")
    enabled_models = sum(1 for m in catalog.models if m.enabled)
    per_schedule: dict[str, int] = {}
    for i, prompt in enumerate(catalog.prompts):
        size = len(prompt.text) + len(prompt.system or "")
        if size > MAX_PROMPT_CHARS:
            problems.append(
                f"prompts[{i}] ({prompt.slug}).text: {size} characters with the system text; at most {MAX_PROMPT_CHARS}"
            )
        if prompt.enabled:
            models = enabled_models if prompt.models == "all" else len(prompt.models)
            per_schedule[prompt.schedule] = (
                per_schedule.get(prompt.schedule, 0) + models * prompt.runs
            )
    for schedule, jobs in sorted(per_schedule.items()):
        if jobs > MAX_JOBS_PER_BATCH:
            problems.append(
                f"prompts: the {schedule} batch would have {jobs} jobs; at most {MAX_JOBS_PER_BATCH} (fewer runs, models or prompts)"
            )
    return problems


def _check_references(catalog: CatalogFile, source: str) -> None:
    problems = _check_params_and_limits(catalog)
    slug_lists = {
        "models": [m.slug for m in catalog.models],
        "prompts": [p.slug for p in catalog.prompts],
        "limit_groups": [g.name for g in catalog.limit_groups],
    }
    for kind, slugs in slug_lists.items():
        seen: set[str] = set()
        for i, slug in enumerate(slugs):
            if slug in seen:
                field_name = "name" if kind == "limit_groups" else "slug"
                problems.append(f"{kind}[{i}] ({slug}).{field_name}: duplicate {field_name}")
            seen.add(slug)
    model_slugs = {m.slug for m in catalog.models}
    if catalog.extraction_model and catalog.extraction_model not in model_slugs:
        problems.append(f"extraction_model: unknown model slug {catalog.extraction_model!r}")
    group_names = {g.name for g in catalog.limit_groups}
    for i, model in enumerate(catalog.models):
        leak = model_key_problem(model.provider, model.base_url, model.params)
        if leak:
            problems.append(f"models[{i}] ({model.slug}).{leak[0]}: {leak[1]}")
        if model.limit_group is not None and model.limit_group not in group_names:
            problems.append(
                f"models[{i}] ({model.slug}).limit_group: {model.limit_group!r} is not in limit_groups"
            )
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
    problems += check_brands(catalog.brands or [])
    if problems:
        raise _problems_error(source, problems)


def load_catalog_file(path: Path) -> CatalogFile:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    return load_catalog(text, str(path))


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    # flow_limits keys whose budget changed: their waiting jobs are worth a look now
    budgets_changed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"created {x}" for x in self.created]
        out += [f"updated {x}" for x in self.updated]
        out += [f"disabled {x} (not in the file)" for x in self.disabled]
        out.append(
            f"{len(self.created)} created, {len(self.updated)} updated, {len(self.unchanged)} unchanged"
            + (f", {len(self.disabled)} disabled" if self.disabled else "")
        )
        return out


def _apply(row: Any, values: dict[str, Any]) -> list[str]:
    changed = []
    for key, value in values.items():
        if getattr(row, key) != value:
            setattr(row, key, value)
            changed.append(key)
    return changed


def sync_catalog(engine: Engine, catalog: CatalogFile, *, prune: bool = False) -> SyncReport:
    """Upsert every entry in one transaction: all of the file or none of it.
    Entries missing from the file are left as they are, or with `prune` disabled."""
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
        for key, fields in limits.sync_config(session.connection(), limit_configs(catalog)).items():
            if fields != ["created"]:
                report.updated.append(f"limits {key} ({', '.join(fields)})")
            if {"budget_batch_usd", "budget_day_usd"} & set(fields):
                report.budgets_changed.append(key)
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
        session.flush()
        store_versions(session, [p.slug for p in catalog.prompts])
        if prune:
            report.disabled += disable_missing(session, catalog)
        if catalog.brands is not None:
            brands = sync_brands(session, catalog.brands)
            report.created += brands.created
            report.updated += brands.updated + [f"{b} (removed)" for b in brands.removed]
            report.unchanged += brands.unchanged
    return report


def limit_configs(catalog: CatalogFile) -> list[limits.LimitConfig]:
    """The flow-control rows the catalogue describes: models, limit groups, the catalogue."""
    out = [
        limits.LimitConfig(
            key=limits.model_key(m.slug),
            provider=m.provider,
            group_key=limits.group_key(m.limit_group) if m.limit_group else None,
            max_concurrency=m.max_concurrency,
            rpm=m.rpm,
            tpm=m.tpm,
            budget_batch_usd=m.budget_usd.per_batch if m.budget_usd else None,
            budget_day_usd=m.budget_usd.per_day if m.budget_usd else None,
        )
        for m in catalog.models
    ]
    out += [
        limits.LimitConfig(
            key=limits.group_key(g.name), max_concurrency=g.max_concurrency, rpm=g.rpm, tpm=g.tpm
        )
        for g in catalog.limit_groups
    ]
    budget = catalog.budget_usd
    out.append(
        limits.LimitConfig(
            key=limits.CATALOG_KEY,
            budget_batch_usd=budget.per_batch if budget else None,
            budget_day_usd=budget.per_day if budget else None,
        )
    )
    return out


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


def store_versions(session: Any, slugs: list[str]) -> None:
    """Keep each prompt's current text as an immutable version row (once per version)."""
    from sqlalchemy.dialects.postgresql import insert

    if not slugs:
        return
    current = select(Prompt.id, Prompt.version, Prompt.text, Prompt.system_text).where(
        Prompt.slug.in_(slugs)
    )
    session.execute(
        insert(PromptVersion)
        .from_select(["prompt_id", "version", "text", "system_text"], current)
        .on_conflict_do_nothing(constraint="uq_prompt_versions_version")
    )


def disable_missing(session: Any, catalog: CatalogFile) -> list[str]:
    """Disable the enabled prompts and models that the file no longer names."""
    from sqlalchemy import func

    disabled = []
    for cls, kind, slugs in (
        (Prompt, "prompt", {p.slug for p in catalog.prompts}),
        (Model, "model", {m.slug for m in catalog.models}),
    ):
        for row in session.scalars(select(cls).where(cls.enabled.is_(True)).order_by(cls.slug)):
            if row.slug not in slugs:
                row.enabled = False
                row.updated_at = func.now()
                disabled.append(f"{kind} {row.slug}")
    return disabled
