"""summaries maintained by triggers; redundant prompt_jobs indexes dropped

The status API reads batch, status, duration, error and entity counts from small tables
that statement-level triggers (with transition tables: one pass per statement, not per
row) keep equal to a recount of prompt_jobs and entity_mentions. Every upsert takes its
rows in key order, so concurrent writers lock them in the same order.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Columns of prompt_jobs that feed the summaries; an UPDATE that changes none of them is free.
_JOB_COLUMNS = (
    "batch_key, model_id, prompt_id, status, input_tokens, output_tokens, cost_usd, "
    "duration_ms, error_kind, error_message, created_at, started_at, finished_at"
)

# The deltas `d(n, <_JOB_COLUMNS>)` (n = +1 for a row's new state, -1 for its old), summed
# per key and appended to the pending tables: no upsert, so writers never wait on each other.
_RECORD_JOB_DELTAS = """
    , counts AS (
        INSERT INTO job_counts_pending (batch_key, model_id, status, jobs, input_tokens,
            output_tokens, cost_usd, first_created_at, first_started_at, last_finished_at)
        SELECT batch_key, model_id, status, sum(n), sum(n * coalesce(input_tokens, 0)),
            sum(n * coalesce(output_tokens, 0)), sum(n * coalesce(cost_usd, 0)),
            min(created_at) FILTER (WHERE n > 0), min(started_at) FILTER (WHERE n > 0),
            max(finished_at) FILTER (WHERE n > 0)
        FROM d GROUP BY batch_key, model_id, status
        HAVING sum(n) <> 0 OR sum(n * coalesce(input_tokens, 0)) <> 0
            OR sum(n * coalesce(output_tokens, 0)) <> 0 OR sum(n * coalesce(cost_usd, 0)) <> 0
            OR bool_or(n > 0 AND (started_at IS NOT NULL OR finished_at IS NOT NULL))
    ), per_prompt AS (
        INSERT INTO prompt_job_counts_pending (prompt_id, batch_key, status, jobs)
        SELECT prompt_id, batch_key, status, sum(n) FROM d
        GROUP BY prompt_id, batch_key, status HAVING sum(n) <> 0
    ), durations AS (
        INSERT INTO job_duration_buckets_pending (batch_key, model_id, bucket, jobs)
        SELECT batch_key, model_id, promptrun_duration_bucket(duration_ms), sum(n) FROM d
        WHERE duration_ms IS NOT NULL
        GROUP BY batch_key, model_id, promptrun_duration_bucket(duration_ms) HAVING sum(n) <> 0
    )
    INSERT INTO job_error_counts_pending (batch_key, error_key, error_kind, error_message, jobs)
    SELECT batch_key, md5(coalesce(error_kind, '') || '|' || coalesce(error_message, '')),
        min(error_kind), min(error_message), sum(n)
    FROM d WHERE error_kind IS NOT NULL OR error_message IS NOT NULL
    GROUP BY 1, 2 HAVING sum(n) <> 0;
"""

# At most once a second, one writer (the others skip, never wait) folds the pending deltas
# into the summaries; it alone upserts them, so no two transactions lock summary rows.
_COMPACT_FUNCTION = """
CREATE FUNCTION promptrun_compact_summaries() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM summary_compaction WHERE id = 1 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE summary_compaction SET compacted_at = clock_timestamp() WHERE id = 1;
    WITH d AS (DELETE FROM job_counts_pending RETURNING *)
    INSERT INTO job_counts AS t (batch_key, model_id, status, jobs, input_tokens,
        output_tokens, cost_usd, first_created_at, first_started_at, last_finished_at)
    SELECT batch_key, model_id, status, sum(jobs), sum(input_tokens), sum(output_tokens),
        sum(cost_usd), min(first_created_at), min(first_started_at), max(last_finished_at)
    FROM d GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (batch_key, model_id, status) DO UPDATE SET
        jobs = t.jobs + excluded.jobs,
        input_tokens = t.input_tokens + excluded.input_tokens,
        output_tokens = t.output_tokens + excluded.output_tokens,
        cost_usd = t.cost_usd + excluded.cost_usd,
        first_created_at = LEAST(t.first_created_at, excluded.first_created_at),
        first_started_at = LEAST(t.first_started_at, excluded.first_started_at),
        last_finished_at = GREATEST(t.last_finished_at, excluded.last_finished_at);
    WITH d AS (DELETE FROM prompt_job_counts_pending RETURNING *)
    INSERT INTO prompt_job_counts AS t (prompt_id, batch_key, status, jobs)
    SELECT prompt_id, batch_key, status, sum(jobs) FROM d GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (prompt_id, batch_key, status) DO UPDATE SET jobs = t.jobs + excluded.jobs;
    WITH d AS (DELETE FROM job_duration_buckets_pending RETURNING *)
    INSERT INTO job_duration_buckets AS t (batch_key, model_id, bucket, jobs)
    SELECT batch_key, model_id, bucket, sum(jobs) FROM d GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (batch_key, model_id, bucket) DO UPDATE SET jobs = t.jobs + excluded.jobs;
    WITH d AS (DELETE FROM job_error_counts_pending RETURNING *)
    INSERT INTO job_error_counts AS t (batch_key, error_key, error_kind, error_message, jobs)
    SELECT batch_key, error_key, min(error_kind), min(error_message), sum(jobs) FROM d
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (batch_key, error_key) DO UPDATE SET jobs = t.jobs + excluded.jobs;
    WITH d AS (DELETE FROM entity_counts_pending RETURNING *), per_batch AS (
        INSERT INTO entity_counts AS t (batch_key, model_id, name, display_name, entity_type,
            mentions, rank_sum)
        SELECT batch_key, model_id, name, display_name, entity_type, sum(mentions),
            sum(rank_sum)
        FROM d GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (batch_key, model_id, name, display_name, entity_type) DO UPDATE SET
            mentions = t.mentions + excluded.mentions, rank_sum = t.rank_sum + excluded.rank_sum
    )
    , per_batch_total AS (
        INSERT INTO entity_batch_totals AS t (batch_key, name, display_name, entity_type,
            mentions, rank_sum)
        SELECT batch_key, name, display_name, entity_type, sum(mentions), sum(rank_sum)
        FROM d GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (batch_key, name, display_name, entity_type) DO UPDATE SET
            mentions = t.mentions + excluded.mentions, rank_sum = t.rank_sum + excluded.rank_sum
    ), per_model_total AS (
        INSERT INTO entity_model_totals AS t (model_id, name, display_name, entity_type,
            mentions, rank_sum)
        SELECT model_id, name, display_name, entity_type, sum(mentions), sum(rank_sum)
        FROM d GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (model_id, name, display_name, entity_type) DO UPDATE SET
            mentions = t.mentions + excluded.mentions, rank_sum = t.rank_sum + excluded.rank_sum
    )
    INSERT INTO entity_totals AS t (name, display_name, entity_type, mentions, rank_sum)
    SELECT name, display_name, entity_type, sum(mentions), sum(rank_sum)
    FROM d GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (name, display_name, entity_type) DO UPDATE SET
        mentions = t.mentions + excluded.mentions, rank_sum = t.rank_sum + excluded.rank_sum;
    RETURN true;
END $$;
"""

_COMPACT_WHEN_DUE = """
    IF (SELECT compacted_at FROM summary_compaction WHERE id = 1)
       < clock_timestamp() - interval '1 second' THEN
        PERFORM promptrun_compact_summaries();
    END IF;
"""

_JOB_TRIGGER_FUNCTION = f"""
CREATE FUNCTION promptrun_job_summaries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO batch_stats (batch_key, created_at)
        SELECT batch_key, min(created_at) FROM new_rows GROUP BY batch_key ORDER BY batch_key
        ON CONFLICT (batch_key) DO NOTHING;
        WITH d AS (SELECT 1 AS n, {_JOB_COLUMNS} FROM new_rows)
        {_RECORD_JOB_DELTAS}
    ELSIF TG_OP = 'UPDATE' THEN
        WITH changed AS MATERIALIZED (
            SELECT o.id FROM old_rows o JOIN new_rows nw ON nw.id = o.id
            WHERE (o.{_JOB_COLUMNS.replace(", ", ", o.")})
               IS DISTINCT FROM (nw.{_JOB_COLUMNS.replace(", ", ", nw.")})
        ), d AS (
            SELECT -1 AS n, {_JOB_COLUMNS} FROM old_rows WHERE id IN (SELECT id FROM changed)
            UNION ALL
            SELECT 1 AS n, {_JOB_COLUMNS} FROM new_rows WHERE id IN (SELECT id FROM changed)
        )
        {_RECORD_JOB_DELTAS}
    ELSE
        WITH d AS (SELECT -1 AS n, {_JOB_COLUMNS} FROM old_rows)
        {_RECORD_JOB_DELTAS}
        DELETE FROM batch_stats b
        WHERE b.batch_key IN (SELECT DISTINCT batch_key FROM old_rows)
          AND NOT EXISTS (SELECT 1 FROM prompt_jobs j WHERE j.batch_key = b.batch_key);
    END IF;
    {_COMPACT_WHEN_DUE}
    RETURN NULL;
END $$;
"""

_MENTION_COLUMNS = "batch_key, model_id, name, display_name, entity_type, rank"

_RECORD_MENTION_DELTAS = """
    INSERT INTO entity_counts_pending (batch_key, model_id, name, display_name, entity_type,
        mentions, rank_sum)
    SELECT batch_key, model_id, name, display_name, entity_type, sum(n), sum(n * rank)
    FROM d GROUP BY 1, 2, 3, 4, 5 HAVING sum(n) <> 0 OR sum(n * rank) <> 0;
"""

_MENTION_TRIGGER_FUNCTION = f"""
CREATE FUNCTION promptrun_mention_summaries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        WITH d AS (SELECT 1 AS n, {_MENTION_COLUMNS} FROM new_rows)
        {_RECORD_MENTION_DELTAS}
    ELSIF TG_OP = 'UPDATE' THEN
        WITH d AS (
            SELECT -1 AS n, {_MENTION_COLUMNS} FROM old_rows
            UNION ALL SELECT 1 AS n, {_MENTION_COLUMNS} FROM new_rows
        )
        {_RECORD_MENTION_DELTAS}
    ELSE
        WITH d AS (SELECT -1 AS n, {_MENTION_COLUMNS} FROM old_rows)
        {_RECORD_MENTION_DELTAS}
    END IF;
    {_COMPACT_WHEN_DUE}
    RETURN NULL;
END $$;
"""

# Exact below one second; above, buckets 1% wide (promptrun.summaries reads them back).
_BUCKET_FUNCTION = """
CREATE FUNCTION promptrun_duration_bucket(ms integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN ms < 1000 THEN greatest(ms, 0)
                ELSE 1000 + floor(ln(ms / 1000.0) / ln(1.01))::integer END
$$;
"""

# Rows already there (a deployed stack) are counted once, by the same deltas.
_BACKFILL = (
    "INSERT INTO batch_stats (batch_key, created_at) "
    "SELECT batch_key, min(created_at) FROM prompt_jobs GROUP BY batch_key",
    f"WITH d AS (SELECT 1 AS n, {_JOB_COLUMNS} FROM prompt_jobs) {_RECORD_JOB_DELTAS}",
    f"WITH d AS (SELECT 1 AS n, {_MENTION_COLUMNS} FROM entity_mentions) {_RECORD_MENTION_DELTAS}",
    "SELECT promptrun_compact_summaries()",
)

PENDING = (
    "job_counts",
    "prompt_job_counts",
    "job_duration_buckets",
    "job_error_counts",
    "entity_counts",
)


def _triggers(table: str, function: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_summaries_insert AFTER INSERT ON {table} "
        f"REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {table}_summaries_update AFTER UPDATE ON {table} "
        f"REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {table}_summaries_delete AFTER DELETE ON {table} "
        f"REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
    ]


def upgrade() -> None:
    # Redundant or unused: prompt_id leads the unique key; nothing filters on scheduled_for;
    # status alone is replaced by a partial index over the few live rows.
    op.drop_index("ix_prompt_jobs_status", table_name="prompt_jobs")
    op.drop_index("ix_prompt_jobs_scheduled_for", table_name="prompt_jobs")
    op.drop_index("ix_prompt_jobs_prompt_id", table_name="prompt_jobs")
    op.drop_index("ix_prompt_jobs_batch_key_status", table_name="prompt_jobs")
    op.create_index(
        "ix_prompt_jobs_batch_key_created_at_id",
        "prompt_jobs",
        ["batch_key", "created_at", "id"],
    )
    op.create_index(
        "ix_prompt_jobs_live",
        "prompt_jobs",
        ["status", "created_at"],
        postgresql_where=sa.text("status IN ('queued', 'processing')"),
    )

    op.create_table(
        "batch_stats",
        sa.Column("batch_key", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("batch_key", name=op.f("pk_batch_stats")),
    )
    op.create_index(
        "ix_batch_stats_created_at_batch_key", "batch_stats", ["created_at", "batch_key"]
    )
    op.create_table(
        "job_counts",
        sa.Column("batch_key", sa.String(64), nullable=False),
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(20, 8), nullable=False),
        sa.Column("first_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("batch_key", "model_id", "status", name=op.f("pk_job_counts")),
    )
    op.create_table(
        "prompt_job_counts",
        sa.Column("prompt_id", sa.BigInteger(), nullable=False),
        sa.Column("batch_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "prompt_id", "batch_key", "status", name=op.f("pk_prompt_job_counts")
        ),
    )
    op.create_table(
        "job_duration_buckets",
        sa.Column("batch_key", sa.String(64), nullable=False),
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "batch_key", "model_id", "bucket", name=op.f("pk_job_duration_buckets")
        ),
    )
    op.create_table(
        "job_error_counts",
        sa.Column("batch_key", sa.String(64), nullable=False),
        sa.Column("error_key", sa.String(32), nullable=False),
        sa.Column("error_kind", sa.String(32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("batch_key", "error_key", name=op.f("pk_job_error_counts")),
    )
    op.create_table(
        "entity_counts",
        sa.Column("batch_key", sa.String(64), nullable=False),
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("display_name", sa.String(300), nullable=False),
        sa.Column("entity_type", sa.String(32), nullable=False),
        sa.Column("mentions", sa.BigInteger(), nullable=False),
        sa.Column("rank_sum", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "batch_key",
            "model_id",
            "name",
            "display_name",
            "entity_type",
            name=op.f("pk_entity_counts"),
        ),
    )
    # The same over all batches per model, over all models per batch: each filter reads
    # about one row per entity name.
    for table, key in (("entity_batch_totals", "batch_key"), ("entity_model_totals", "model_id")):
        op.create_table(
            table,
            sa.Column(
                key, sa.String(64) if key == "batch_key" else sa.BigInteger(), nullable=False
            ),
            sa.Column("name", sa.String(300), nullable=False),
            sa.Column("display_name", sa.String(300), nullable=False),
            sa.Column("entity_type", sa.String(32), nullable=False),
            sa.Column("mentions", sa.BigInteger(), nullable=False),
            sa.Column("rank_sum", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint(
                key, "name", "display_name", "entity_type", name=op.f(f"pk_{table}")
            ),
        )
    op.create_table(
        "entity_totals",
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("display_name", sa.String(300), nullable=False),
        sa.Column("entity_type", sa.String(32), nullable=False),
        sa.Column("mentions", sa.BigInteger(), nullable=False),
        sa.Column("rank_sum", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "name", "display_name", "entity_type", name=op.f("pk_entity_totals")
        ),
    )

    # Each summary's pending deltas: the same columns, no key, appended to and emptied.
    for table in PENDING:
        op.execute(f"CREATE TABLE {table}_pending (LIKE {table})")
    op.create_table(
        "summary_compaction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("compacted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_summary_compaction")),
    )
    op.execute("INSERT INTO summary_compaction (id, compacted_at) VALUES (1, now())")

    op.execute(_BUCKET_FUNCTION)
    op.execute(_COMPACT_FUNCTION)
    op.execute(_JOB_TRIGGER_FUNCTION)
    op.execute(_MENTION_TRIGGER_FUNCTION)
    # Lock out writers while counting what is there, so no row is counted twice or missed.
    op.execute("LOCK TABLE prompt_jobs, entity_mentions IN SHARE ROW EXCLUSIVE MODE")
    for statement in _BACKFILL:
        op.execute(statement)
    for statement in _triggers("prompt_jobs", "promptrun_job_summaries") + _triggers(
        "entity_mentions", "promptrun_mention_summaries"
    ):
        op.execute(statement)


def downgrade() -> None:
    for table in ("prompt_jobs", "entity_mentions"):
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_summaries_{event} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS promptrun_job_summaries()")
    op.execute("DROP FUNCTION IF EXISTS promptrun_mention_summaries()")
    op.execute("DROP FUNCTION IF EXISTS promptrun_compact_summaries()")
    op.execute("DROP FUNCTION IF EXISTS promptrun_duration_bucket(integer)")
    for table in (
        "summary_compaction",
        *(f"{t}_pending" for t in PENDING),
        "entity_totals",
        "entity_batch_totals",
        "entity_model_totals",
        "entity_counts",
        "job_error_counts",
        "job_duration_buckets",
        "prompt_job_counts",
        "job_counts",
        "batch_stats",
    ):
        op.drop_table(table)
    op.drop_index("ix_prompt_jobs_live", table_name="prompt_jobs")
    op.drop_index("ix_prompt_jobs_batch_key_created_at_id", table_name="prompt_jobs")
    op.create_index("ix_prompt_jobs_batch_key_status", "prompt_jobs", ["batch_key", "status"])
    op.create_index("ix_prompt_jobs_prompt_id", "prompt_jobs", ["prompt_id"])
    op.create_index("ix_prompt_jobs_scheduled_for", "prompt_jobs", ["scheduled_for"])
    op.create_index("ix_prompt_jobs_status", "prompt_jobs", ["status"])
