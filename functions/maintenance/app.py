"""Maintenance, on a schedule: dead-letter queue checked against the database, retention."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from promptrun.db.engine import get_engine
from promptrun.maintenance import run_maintenance
from promptrun.observability import logger, tracer
from promptrun.settings import get_settings

settings = get_settings().require("database", "queue")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_maintenance(
        get_engine(settings, pool_size=1), settings, context.get_remaining_time_in_millis
    )
