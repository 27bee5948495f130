"""brands, aliases, batch completions, visibility index

Revision ID: 0006
Revises: 0002
Create Date: 2026-11-23 13:55:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "brands",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("slug", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("own", sa.Boolean(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_brands")),
        sa.UniqueConstraint("slug", name=op.f("uq_brands_slug")),
    )
    op.create_table(
        "brand_aliases",
        sa.Column("alias", sa.String(length=300), nullable=False),
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("spelling", sa.String(length=300), nullable=False),
        sa.ForeignKeyConstraint(
            ["brand_id"],
            ["brands.id"],
            name=op.f("fk_brand_aliases_brand_id_brands"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("alias", name=op.f("pk_brand_aliases")),
    )
    op.create_index("ix_brand_aliases_brand_id", "brand_aliases", ["brand_id"], unique=False)
    op.create_table(
        "batch_completions",
        sa.Column("batch_key", sa.String(length=64), nullable=False),
        sa.Column(
            "detected_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("rolled_up_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("batch_key", name=op.f("pk_batch_completions")),
    )
    op.create_table(
        "visibility_rollups",
        sa.Column("batch_key", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        sa.Column("prompt_id", sa.BigInteger(), nullable=False),
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("answers_mentioning", sa.Integer(), nullable=False),
        sa.Column("position_sum", sa.BigInteger(), nullable=False),
        sa.Column("first_position", sa.Integer(), nullable=False),
        sa.Column("positive", sa.Integer(), nullable=False),
        sa.Column("neutral", sa.Integer(), nullable=False),
        sa.Column("negative", sa.Integer(), nullable=False),
        sa.Column("unknown", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["brand_id"],
            ["brands.id"],
            name=op.f("fk_visibility_rollups_brand_id_brands"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "batch_key", "model_id", "prompt_id", "brand_id", name=op.f("pk_visibility_rollups")
        ),
    )
    # Batches already finished count as announced: the first sweep sends no backlog.
    op.execute(
        """INSERT INTO batch_completions (batch_key, sent_at)
           SELECT batch_key, now() FROM prompt_jobs GROUP BY batch_key
           HAVING count(*) FILTER (WHERE status IN ('queued', 'processing')) = 0"""
    )
    op.create_index(
        "ix_entity_mentions_name_batch_key",
        "entity_mentions",
        ["name", "batch_key"],
        unique=False,
        postgresql_include=["job_id", "model_id", "prompt_id", "rank", "sentiment"],
    )


def downgrade() -> None:
    op.drop_table("visibility_rollups")
    op.drop_index("ix_entity_mentions_name_batch_key", table_name="entity_mentions")
    op.drop_table("batch_completions")
    op.drop_index("ix_brand_aliases_brand_id", table_name="brand_aliases")
    op.drop_table("brand_aliases")
    op.drop_table("brands")
