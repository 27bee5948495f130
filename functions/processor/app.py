"""Processor: SQS batches of job ids; every record of a batch at once; partial batch response."""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    EventType,
    async_process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from promptrun import batch_completion
from promptrun.aws import SQS_BATCH, JobQueue
from promptrun.db.engine import get_engine
from promptrun.observability import logger, metrics, tracer
from promptrun.processor import JobRunner
from promptrun.settings import get_settings

settings = get_settings().require("database", "queue")
batch = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
# One thread per record of the largest batch: the invocation waits on all its model calls at once.
threads = ThreadPoolExecutor(max_workers=SQS_BATCH, thread_name_prefix="record")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@batch_completion.after_invocation(lambda: get_engine(settings))
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    runner = JobRunner(get_engine(settings), settings, JobQueue(settings.jobs_queue_url or ""))

    async def record_handler(record: SQSRecord) -> str:
        receives = int(record.raw_event.get("attributes", {}).get("ApproximateReceiveCount", 1))
        return await asyncio.get_running_loop().run_in_executor(
            threads,
            runner.handle,
            record.body,
            record.receipt_handle,
            context.get_remaining_time_in_millis,
            receives,
        )

    return async_process_partial_response(
        event=event, record_handler=record_handler, processor=batch, context=context
    )
