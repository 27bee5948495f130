"""entity_mentions without the foreign keys its job already implies

A mention's prompt_id and model_id are copied from its job, whose own foreign keys hold them
(and whose deletion, cascading, removes the mention). Checking them again cost two key
lookups per mention row, about an eighth of finishing a batch; the model_id index served
only those checks' cascades. The prompt_id index stays: entity counts for one prompt read it.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("fk_entity_mentions_prompt_id_prompts", "entity_mentions", "foreignkey")
    op.drop_constraint("fk_entity_mentions_model_id_models", "entity_mentions", "foreignkey")
    op.drop_index("ix_entity_mentions_model_id", table_name="entity_mentions")


def downgrade() -> None:
    op.create_index("ix_entity_mentions_model_id", "entity_mentions", ["model_id"])
    op.create_foreign_key(
        "fk_entity_mentions_model_id_models",
        "entity_mentions",
        "models",
        ["model_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_foreign_key(
        "fk_entity_mentions_prompt_id_prompts",
        "entity_mentions",
        "prompts",
        ["prompt_id"],
        ["id"],
        ondelete="CASCADE",
    )
