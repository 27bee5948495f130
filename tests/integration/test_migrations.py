"""The migrations build exactly the schema the models describe, and upgrading is safe to repeat."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from promptrun.db import migrate
from promptrun.db.models import Base


def test_migrated_schema_matches_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upgrade_twice_is_a_no_op(engine: Engine) -> None:
    head = migrate.current(engine)
    migrate.upgrade(engine)
    migrate.upgrade(engine)
    assert migrate.current(engine) == head is not None


def test_unique_key_and_indexes_exist(engine: Engine) -> None:
    insp = inspect(engine)
    uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("prompt_jobs")}
    assert ("prompt_id", "model_id", "run_index", "batch_key") in uniques
    indexed = {tuple(i["column_names"]) for i in insp.get_indexes("prompt_jobs")}
    assert {
        ("batch_key", "created_at", "id"),
        ("created_at", "id"),
        ("status", "created_at"),
    } <= indexed
    # Redundant ones are gone: prompt_id leads the unique key; nothing filters on these alone.
    assert not {("prompt_id",), ("scheduled_for",), ("status",)} & indexed


def test_0007_downgrades_to_0006_and_upgrades_again(engine: Engine) -> None:
    cfg = migrate.alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    insp = inspect(engine)
    assert not insp.has_table("job_counts") and not insp.has_table("job_counts_pending")
    assert ("prompt_id",) in {tuple(i["column_names"]) for i in insp.get_indexes("prompt_jobs")}
    migrate.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        assert conn.execute(text("SELECT count(*) FROM summary_compaction")).scalar_one() == 1


def test_0008_mentions_keep_only_their_jobs_key_and_downgrade_restores_the_others(
    engine: Engine,
) -> None:
    def mention_keys() -> set[str]:
        return {fk["referred_table"] for fk in inspect(engine).get_foreign_keys("entity_mentions")}

    assert mention_keys() == {"prompt_jobs"}
    cfg = migrate.alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0007")
    assert mention_keys() == {"prompt_jobs", "prompts", "models"}
    migrate.upgrade(engine)
    assert mention_keys() == {"prompt_jobs"}
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
