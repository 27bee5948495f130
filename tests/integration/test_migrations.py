"""The migrations build exactly the schema the models describe, and upgrading is safe to repeat."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

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


def test_downgrade_and_upgrade_again_keep_the_summaries(engine: Engine) -> None:
    from sqlalchemy import text

    from promptrun.db import migrate as m

    cfg = m.alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        from alembic import command

        command.downgrade(cfg, "0002")
    assert not inspect(engine).has_table("job_counts")
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM job_counts")).scalar_one() == 0
