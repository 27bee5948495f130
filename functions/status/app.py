"""Status API: API Gateway REST -> jobs, batches, summaries, entity counts (bearer token)."""

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from promptrun.api import app_from_settings
from promptrun.observability import logger, tracer
from promptrun.settings import get_settings

settings = get_settings().require("database", "api_token")
app = app_from_settings(settings)


# No log_event: the event carries the Authorization header.
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
