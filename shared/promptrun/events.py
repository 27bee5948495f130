"""Events on EventBridge (the default bus unless EVENT_BUS_NAME says otherwise), through
the one AWS client place. A user routes them to email or Slack with a rule on
`source: promptrun` and the detail type."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from promptrun.aws import client
from promptrun.errors import PromptrunError

SOURCE = "promptrun"
BATCH_COMPLETED = "promptrun.batch.completed"
VISIBILITY_CHANGED = "promptrun.visibility.changed"
PUT_EVENTS_MAX = 10  # entries per PutEvents call


class EventsNotSent(PromptrunError):
    pass


@dataclass(frozen=True)
class Event:
    detail_type: str
    detail: dict[str, Any]


def bus_name() -> str:
    return os.environ.get("EVENT_BUS_NAME") or "default"


def publish(events: list[Event], tries: int = 3) -> None:
    """Send every event or raise: entries EventBridge refused are retried a few times."""
    pending = [
        {
            "Source": SOURCE,
            "DetailType": e.detail_type,
            "Detail": json.dumps(e.detail, default=str),
            "EventBusName": bus_name(),
        }
        for e in events
    ]
    errors: list[str] = []
    for _ in range(tries):
        if not pending:
            return
        failed: list[dict[str, Any]] = []
        errors = []
        for start in range(0, len(pending), PUT_EVENTS_MAX):
            chunk = pending[start : start + PUT_EVENTS_MAX]
            resp = client("events").put_events(Entries=chunk)
            for entry, result in zip(chunk, resp.get("Entries", []), strict=False):
                if result.get("ErrorCode"):
                    failed.append(entry)
                    errors.append(f"{entry['DetailType']}: {result['ErrorCode']}")
        pending = failed
    if pending:
        raise EventsNotSent("EventBridge refused " + "; ".join(errors))
