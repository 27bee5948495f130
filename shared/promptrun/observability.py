"""Powertools objects, built once and shared by every handler.

The X-Ray tracer is built only when tracing is on (Lambda sets AWS_XRAY_DAEMON_ADDRESS for
`Tracing: Active`), and patches only httpx, the model calls that dominate a job's time:
building it with every patch costs about 0.2 s of each cold start (the SDK, botocore).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics

from promptrun.log_redaction import RedactingFormatter

SERVICE = "promptrun"
TRACED_MODULES = ("httpx",)

F = TypeVar("F", bound=Callable[..., Any])

# Every line through `scrub`: a key inside an exception's text never reaches the logs.
logger = Logger(service=SERVICE, logger_formatter=RedactingFormatter())
metrics = Metrics(namespace="Promptrun", service=SERVICE)


class NoTracer:
    """What the handlers use of Tracer, doing nothing: tracing is off."""

    def capture_lambda_handler(self, handler: F) -> F:
        return handler

    def capture_method(self, method: F) -> F:
        return method


def tracing_enabled(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    if environ.get("POWERTOOLS_TRACE_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return False
    return bool(environ.get("AWS_XRAY_DAEMON_ADDRESS"))


def make_tracer(environ: dict[str, str] | os._Environ[str] = os.environ) -> Any:
    if not tracing_enabled(environ):
        return NoTracer()
    from aws_lambda_powertools import Tracer

    return Tracer(service=SERVICE, patch_modules=list(TRACED_MODULES))


tracer = make_tracer()

# A fan-out that rejects its event publishes no metric; that is not worth a warning.
warnings.filterwarnings("ignore", message="No application metrics to publish")
