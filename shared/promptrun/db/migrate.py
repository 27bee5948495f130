"""Alembic, driven from code: `promptrun db upgrade` and the tests use this."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations; safe to run again (Alembic records the revision)."""
    # Serialise concurrent upgrades (two deploys, parallel test workers) on one lock.
    with engine.begin() as conn:
        conn.exec_driver_sql("SELECT pg_advisory_lock(72210001)")
        try:
            cfg = alembic_config(engine)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        finally:
            conn.exec_driver_sql("SELECT pg_advisory_unlock(72210001)")


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
