"""Batch keys: a prompt's schedule period, taken from the event's time (never the wall clock)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from promptrun.db.enums import Schedule
from promptrun.errors import InputError

BATCH_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def batch_key(schedule: str, at: datetime) -> str:
    """hourly: 2026-11-22T13; daily: 2026-11-22; weekly: ISO week 2026-W47 (all UTC)."""
    if at.tzinfo is None:
        raise InputError("event time must carry a time zone")
    at = at.astimezone(UTC)
    match schedule:
        case Schedule.HOURLY:
            return at.strftime("%Y-%m-%dT%H")
        case Schedule.DAILY:
            return at.strftime("%Y-%m-%d")
        case Schedule.WEEKLY:
            year, week, _ = at.isocalendar()
            return f"{year}-W{week:02d}"
    raise InputError(f"unknown schedule {schedule!r}: expected hourly, daily or weekly")


def period_start(schedule: str, at: datetime) -> datetime:
    """When the period that `at` falls in began: the jobs' scheduled_for."""
    at = at.astimezone(UTC)
    match schedule:
        case Schedule.HOURLY:
            return at.replace(minute=0, second=0, microsecond=0)
        case Schedule.DAILY:
            return at.replace(hour=0, minute=0, second=0, microsecond=0)
        case Schedule.WEEKLY:
            day = at.replace(hour=0, minute=0, second=0, microsecond=0)
            return day - timedelta(days=day.weekday())
    raise InputError(f"unknown schedule {schedule!r}: expected hourly, daily or weekly")


def validate_batch_key(value: str) -> str:
    if not BATCH_KEY_RE.match(value):
        raise InputError(
            "batch_key must be 1-64 characters of letters, digits, '.', '_', ':' or '-', "
            f"starting with a letter or digit; got {value!r}"
        )
    return value
