"""flow control: admission state, budget spend, wait reasons

Revision ID: 0004
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("prompt_jobs", sa.Column("wait_reason", sa.Text(), nullable=True))
    op.create_table(
        "flow_limits",
        sa.Column("key", sa.String(220), nullable=False),
        sa.Column("group_key", sa.String(220), nullable=True),
        sa.Column("provider", sa.String(32), nullable=True),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.Column("budget_batch_usd", sa.Numeric(14, 6), nullable=True),
        sa.Column("budget_day_usd", sa.Numeric(14, 6), nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("paused_reason", sa.Text(), nullable=True),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("request_tat", sa.Float(), nullable=False),
        sa.Column("token_tat", sa.Float(), nullable=False),
        sa.Column("queue_tat", sa.Float(), nullable=False),
        sa.Column("rate_factor", sa.Float(), nullable=False),
        sa.Column("decreased_at", sa.Float(), nullable=False),
        sa.Column("recounted_at", sa.Float(), nullable=False),
        sa.Column("throttled", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "max_concurrency IS NULL OR max_concurrency >= 1",
            name=op.f("ck_flow_limits_max_concurrency"),
        ),
        sa.CheckConstraint("rpm IS NULL OR rpm >= 1", name=op.f("ck_flow_limits_rpm")),
        sa.CheckConstraint("tpm IS NULL OR tpm >= 1", name=op.f("ck_flow_limits_tpm")),
        sa.CheckConstraint(
            "rate_factor > 0 AND rate_factor <= 1", name=op.f("ck_flow_limits_rate_factor")
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_flow_limits")),
    )
    op.create_table(
        "budget_spend",
        sa.Column("scope", sa.String(220), nullable=False),
        sa.Column("period", sa.String(80), nullable=False),
        sa.Column("spent_usd", sa.Numeric(16, 8), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("scope", "period", name=op.f("pk_budget_spend")),
    )
    # Every existing model gets its admission row, with the concurrency it already had.
    op.execute(
        "INSERT INTO flow_limits (key, provider, max_concurrency, paused, in_flight, request_tat, "
        "token_tat, queue_tat, rate_factor, decreased_at, recounted_at, throttled) "
        "SELECT 'model:' || slug, provider, max_concurrency, false, 0, 0, 0, 0, 1, 0, 0, 0 "
        "FROM models"
    )


def downgrade() -> None:
    op.drop_table("budget_spend")
    op.drop_table("flow_limits")
    op.drop_column("prompt_jobs", "wait_reason")
