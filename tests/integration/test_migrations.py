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
    assert {("status",), ("scheduled_for",), ("prompt_id",), ("batch_key", "status")} <= indexed
