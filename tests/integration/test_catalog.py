"""Catalogue files: validated whole, synced idempotently, errors naming the entry and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from promptrun.catalog import load_catalog, load_catalog_file, sync_catalog
from promptrun.cli import main
from promptrun.errors import InputError

REPO = Path(__file__).resolve().parents[2]
GOOD = """
models:
  - {slug: m1, provider: offline, model: x, price_per_mtok: {input: 0.15, output: 0.6}}
  - {slug: m2, provider: openai, model: gpt-4o-mini, base_url: "http://localhost:8000/v1", params: {temperature: 0.2}}
prompts:
  - {slug: p1, text: "Best CRM?", schedule: daily, runs: 3}
  - {slug: p2, text: "Best laptop?", system: "Be brief.", schedule: weekly, models: [m1]}
"""


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT count(*) FROM models")).scalar_one(),
            conn.execute(text("SELECT count(*) FROM prompts")).scalar_one(),
        )


def test_sync_is_idempotent_and_reports_changes(engine: Engine) -> None:
    first = sync_catalog(engine, load_catalog(GOOD))
    assert sorted(first.created) == ["model m1", "model m2", "prompt p1", "prompt p2"]
    again = sync_catalog(engine, load_catalog(GOOD))
    assert again.created == [] and again.updated == [] and len(again.unchanged) == 4
    changed = sync_catalog(
        engine,
        load_catalog(
            GOOD.replace("Best CRM?", "Best CRM for a shop?").replace("runs: 3", "runs: 2")
        ),
    )
    assert changed.updated == ["prompt p1 (text, runs_per_batch, version)"]
    assert counts(engine) == (2, 2)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT model_slugs, system_text FROM prompts WHERE slug = 'p2'")
        ).one()
    assert row == (["m1"], "Be brief.")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (("provider: openai", "provider: gemini"), "models[1] (m2).provider"),
        (("schedule: daily", "schedule: monthly"), "prompts[0] (p1).schedule"),
        (("models: [m1]", "models: [m1, m9]"), "prompts[1] (p2).models: unknown model slug 'm9'"),
        (("runs: 3", "runs: 0"), "prompts[0] (p1).runs"),
        (('text: "Best CRM?", ', ""), "prompts[0] (p1).text: Field required"),
        (("slug: m2", "slug: m1"), "models[1] (m1).slug: duplicate slug"),
        (('base_url: "http://localhost:8000/v1"', "base_url: ftp://x"), "models[1] (m2).base_url"),
        (("runs: 3}", "runs: 3, colour: red}"), "prompts[0] (p1).colour"),
    ],
)
def test_invalid_file_is_rejected_whole_naming_entry_and_field(
    engine: Engine, edit: tuple[str, str], needle: str
) -> None:
    bad = GOOD.replace(*edit)
    assert bad != GOOD
    with pytest.raises(InputError) as info:
        sync_catalog(engine, load_catalog(bad))
    assert needle in str(info.value)
    assert counts(engine) == (0, 0)  # nothing half-applied


def test_not_yaml_and_not_a_mapping() -> None:
    with pytest.raises(InputError, match="not valid YAML"):
        load_catalog("models: [")
    with pytest.raises(InputError, match="mapping"):
        load_catalog("- a\n- b\n")


def test_example_catalog_is_valid() -> None:
    catalog = load_catalog_file(REPO / "examples" / "catalog.yaml")
    assert len(catalog.prompts) >= 3
    assert sum(m.provider == "offline" for m in catalog.models) >= 2
    assert all(p.runs > 1 for p in catalog.prompts)


def test_cli_sync_and_db_upgrade(
    engine: Engine,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from promptrun.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        assert main(["db", "upgrade"]) == 0  # already migrated: safe again
        f = tmp_path / "c.yaml"
        f.write_text(GOOD)
        assert main(["catalog", "sync", str(f)]) == 0
        assert "4 created, 0 updated, 0 unchanged" in capsys.readouterr().out
        f.write_text(GOOD.replace("schedule: weekly", "schedule: yearly"))
        assert main(["catalog", "sync", str(f)]) == 2
        assert "prompts[1] (p2).schedule" in capsys.readouterr().err
        assert main(["catalog", "check", str(tmp_path / "missing.yaml")]) == 2
    finally:
        get_settings.cache_clear()


def test_extraction_model_per_catalogue_and_per_model(engine: Engine) -> None:
    text_ = GOOD.replace("models:\n", "extraction_model: m1\nmodels:\n", 1)
    report = sync_catalog(engine, load_catalog(text_))
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                text(
                    "SELECT m.slug, e.slug FROM models m LEFT JOIN models e ON e.id = m.extraction_model_id"
                )
            ).all()
        )
    assert rows == {"m1": None, "m2": "m1"}  # m1 extracts for itself
    assert len(report.created) == 4
    again = sync_catalog(engine, load_catalog(text_))
    assert again.updated == []
    with pytest.raises(
        InputError, match=r"models\[0\] \(m1\).extraction_model: unknown model slug 'zz'"
    ):
        load_catalog(GOOD.replace("model: x,", "model: x, extraction_model: zz,"))
