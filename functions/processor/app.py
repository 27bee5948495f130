"""Processor: SQS batches of job ids, each batch claimed and finished in a few statements
(promptrun.batch_runner); partial batch response."""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from promptrun import batch_completion
from promptrun.aws import JobQueue
from promptrun.batch_runner import MAX_BATCH, BatchRunner, Record
from promptrun.db.pool import get_pool
from promptrun.observability import logger, metrics, tracer
from promptrun.settings import get_settings

settings = get_settings().require("database", "queue")
# One per model call of the largest batch, while the invocation's own thread stores the
# answers as they come (started as calls need them: a batch of 10 starts at most 10).
threads = ThreadPoolExecutor(max_workers=MAX_BATCH, thread_name_prefix="call")
# One per instance: its SQS client, made on the first job sent back, serves every invocation.
queue = JobQueue(settings.jobs_queue_url or "")


def completion_engine() -> Any:
    """SQLAlchemy, for the visibility comparison of a batch this invocation finished: imported
    then, not in every cold start."""
    from promptrun.db.engine import get_engine

    return get_engine(settings, pool_size=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@batch_completion.after_invocation(lambda: get_pool(settings), completion_engine)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    runner = BatchRunner(get_pool(settings), settings, queue, threads=threads)
    records = [Record.of(r) for r in event.get("Records") or []]
    return runner.run(records, context.get_remaining_time_in_millis).response()
