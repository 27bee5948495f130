"""Log lines redacted the way error messages are: the Powertools JSON formatter with every
string (message, exception text and traceback, extra keys) passed through `scrub`."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

from promptrun.providers.errors import scrub


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v) for v in value]
    return value


def _default(value: Any) -> str:
    # Objects json cannot encode (an exception passed as an extra key) are logged as str().
    return scrub(str(value))


class RedactingFormatter(LambdaPowertoolsFormatter):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("json_default", _default)
        super().__init__(**kwargs)

    def serialize(self, log: dict[str, Any]) -> str:  # type: ignore[override]
        return super().serialize(_scrubbed(log))
