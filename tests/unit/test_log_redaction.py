"""A secret inside an exception, a message or an extra key never reaches a log line."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from promptrun.observability import logger
from promptrun.providers.keys import api_key_for
from promptrun.settings import Settings

KEY = "zz-configured-provider-key-5f1e2d3c4b"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    handler = logger.registered_handler
    previous = handler.setStream(buffer)  # type: ignore[attr-defined]
    try:
        yield buffer
    finally:
        handler.setStream(previous)  # type: ignore[attr-defined]


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_logger_exception_with_a_configured_key_in_its_text_never_writes_the_key(
    captured: io.StringIO,
) -> None:
    # The key is handed out the way a provider call gets it, which registers it.
    assert api_key_for("openai", Settings(provider_keys={"openai": KEY})) == KEY
    try:
        raise RuntimeError(f"upstream said: invalid key {KEY} for this project")
    except RuntimeError:
        logger.exception("model call failed for %s", KEY, extra={"detail": {"key": KEY}})
    text = captured.getvalue()
    assert text, "nothing was logged"
    assert KEY not in text
    (line,) = lines(captured)
    assert line["level"] == "ERROR"
    assert "[redacted]" in str(line["message"]) and "[redacted]" in str(line["exception"])
    # The traceback is still there, only the secret is gone.
    assert "RuntimeError: upstream said: invalid key [redacted]" in str(line["exception"])
    assert line["detail"] == {"key": "[redacted]"}


def test_key_shaped_text_and_objects_are_redacted_too(captured: io.StringIO) -> None:
    unregistered = "sk-proj-abcdefghijklmnop1234"
    logger.warning("retrying", extra={"error": ValueError(f"Authorization: Bearer {unregistered}")})
    assert unregistered not in captured.getvalue()
    (line,) = lines(captured)
    assert "[redacted]" in str(line["error"])
