"""Powertools objects, built once and shared by every handler."""

from __future__ import annotations

import warnings

from aws_lambda_powertools import Logger, Metrics, Tracer

from promptrun.log_redaction import RedactingFormatter

SERVICE = "promptrun"

# Every line through `scrub`: a key inside an exception's text never reaches the logs.
logger = Logger(service=SERVICE, logger_formatter=RedactingFormatter())
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace="Promptrun", service=SERVICE)

# A fan-out that rejects its event publishes no metric; that is not worth a warning.
warnings.filterwarnings("ignore", message="No application metrics to publish")
