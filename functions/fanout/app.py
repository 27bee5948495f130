"""Fan-out: an EventBridge schedule (or a manual event) -> job rows -> one SQS message each."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from promptrun import batch_completion
from promptrun.aws import ContinuationQueue, JobQueue
from promptrun.db.engine import get_engine
from promptrun.fanout import parse_event, run_fanout
from promptrun.observability import logger, metrics, tracer
from promptrun.settings import get_settings

settings = get_settings().require("database", "queue")
# One each per instance; their SQS clients are made on first use and serve every invocation.
queue = JobQueue(settings.jobs_queue_url or "")
more = ContinuationQueue(settings.fanout_queue_url) if settings.fanout_queue_url else None


@logger.inject_lambda_context(log_event=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@batch_completion.sweep_after(lambda: get_engine(settings, pool_size=1))
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = parse_event(event)
    engine = get_engine(settings, pool_size=1)
    return run_fanout(
        engine, queue, request, settings, context.get_remaining_time_in_millis, more
    ).as_dict()
