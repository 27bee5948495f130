"""prompt versions (stored, immutable) and cancel requests for running jobs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 13:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prompt_versions",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("prompt_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("system_text", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["prompt_id"],
            ["prompts.id"],
            name=op.f("fk_prompt_versions_prompt_id_prompts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_versions")),
        sa.UniqueConstraint("prompt_id", "version", name="uq_prompt_versions_version"),
    )
    # A version is what a job ran: it never changes once written.
    op.execute(
        """
        CREATE FUNCTION prompt_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'prompt_versions rows are immutable (prompt_id %, version %)',
                OLD.prompt_id, OLD.version;
        END $$;
        CREATE TRIGGER prompt_versions_no_update BEFORE UPDATE ON prompt_versions
            FOR EACH ROW EXECUTE FUNCTION prompt_versions_immutable();
        """
    )
    op.execute(
        "INSERT INTO prompt_versions (prompt_id, version, text, system_text) "
        "SELECT id, version, text, system_text FROM prompts"
    )
    # Unfinished jobs of a version whose text was never stored run the current text:
    # record that version, so that what a job records is what it runs.
    op.execute(
        "UPDATE prompt_jobs j SET prompt_version = p.version FROM prompts p "
        "WHERE p.id = j.prompt_id AND j.status IN ('queued', 'processing') "
        "AND j.prompt_version <> p.version"
    )
    op.add_column(
        "prompt_jobs", sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True)
    )
    # Retention sweeps finished jobs by age.
    op.create_index(
        "ix_prompt_jobs_finished_at",
        "prompt_jobs",
        ["finished_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('succeeded', 'failed', 'cancelled', 'skipped')"),
    )


def downgrade() -> None:
    op.drop_index("ix_prompt_jobs_finished_at", table_name="prompt_jobs")
    op.drop_column("prompt_jobs", "cancel_requested_at")
    op.drop_table("prompt_versions")
    op.execute("DROP FUNCTION IF EXISTS prompt_versions_immutable()")
