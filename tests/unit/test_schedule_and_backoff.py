from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from promptrun.errors import ConfigError, InputError
from promptrun.jobs import backoff_seconds, retry_delay
from promptrun.schedule import batch_key, period_start, validate_batch_key
from promptrun.settings import Settings


@pytest.mark.parametrize(
    ("schedule", "at", "key"),
    [
        ("hourly", datetime(2026, 11, 22, 13, 59, 59, tzinfo=UTC), "2026-11-22T13"),
        ("daily", datetime(2026, 11, 22, 23, 0, tzinfo=UTC), "2026-11-22"),
        ("weekly", datetime(2026, 11, 22, 13, 0, tzinfo=UTC), "2026-W47"),
        ("weekly", datetime(2027, 1, 1, 0, 0, tzinfo=UTC), "2026-W53"),  # ISO year differs
        # The key is in UTC whatever zone the event carries.
        ("daily", datetime(2026, 11, 23, 1, 0, tzinfo=timezone(timedelta(hours=3))), "2026-11-22"),
    ],
)
def test_batch_key_from_event_time(schedule: str, at: datetime, key: str) -> None:
    assert batch_key(schedule, at) == key


def test_period_start() -> None:
    at = datetime(2026, 11, 22, 13, 42, tzinfo=UTC)  # a Sunday
    assert period_start("hourly", at) == datetime(2026, 11, 22, 13, tzinfo=UTC)
    assert period_start("daily", at) == datetime(2026, 11, 22, tzinfo=UTC)
    assert period_start("weekly", at) == datetime(2026, 11, 16, tzinfo=UTC)


def test_naive_time_and_unknown_schedule_are_rejected() -> None:
    with pytest.raises(InputError, match="time zone"):
        batch_key("daily", datetime(2026, 1, 1))
    with pytest.raises(InputError, match="monthly"):
        batch_key("monthly", datetime(2026, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize("key", ["", "a b", "-x", "x" * 65, "ä"])
def test_bad_batch_keys(key: str) -> None:
    with pytest.raises(InputError, match="batch_key"):
        validate_batch_key(key)


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 5), (2, 10), (3, 20), (10, 60)]:
        samples = [backoff_seconds(attempt, 5, 60, rng) for _ in range(500)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.9 and min(samples) < ceiling * 0.1


def test_retry_after_wins_when_longer() -> None:
    assert retry_delay(1, 0, 0, 30) == 30
    assert retry_delay(1, 0, 0, None) == 0
    assert retry_delay(1, 0, 0, 10**9) == 43200


def test_settings_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings.from_env({"DATABASE_URL": "mysql://x"})
    with pytest.raises(ConfigError, match="JOBS_QUEUE_URL"):
        Settings.from_env({"JOBS_QUEUE_URL": "jobs"})
    with pytest.raises(ConfigError, match="MAX_ATTEMPTS"):
        Settings.from_env({"MAX_ATTEMPTS": "lots"})
    with pytest.raises(ConfigError, match="LEASE_SECONDS"):
        Settings.from_env({"LEASE_SECONDS": "1"})
    with pytest.raises(ConfigError, match="DATABASE_PREPARED_STATEMENTS must be true or false"):
        Settings.from_env({"DATABASE_PREPARED_STATEMENTS": "sometimes"})
    assert Settings.from_env({}).prepared_statements is True
    assert Settings.from_env({"DATABASE_PREPARED_STATEMENTS": "False"}).prepared_statements is False
    with pytest.raises(ConfigError, match="DATABASE_URL or DATABASE_SECRET_ARN"):
        Settings.from_env({}).require("database")
    with pytest.raises(ConfigError, match="API_TOKEN"):
        Settings.from_env({"DATABASE_URL": "postgresql+pg8000://u:p@h/d"}).require(
            "database", "api_token"
        )


def test_secrets_do_not_leak_through_repr_or_errors() -> None:
    s = Settings.from_env(
        {
            "DATABASE_URL": "postgresql+pg8000://u:hunter2@h/d",
            "API_TOKEN": "tok-secret",
            "OPENAI_API_KEY": "sk-secret",
        }
    )
    assert "tok-secret" not in repr(s) and "sk-secret" not in repr(s)
    assert s.provider_keys == {"openai": "sk-secret"}
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DATABASE_URL": "postgres://u:hunter2@h/d"})
    assert "hunter2" not in str(info.value)


def test_rds_proxy_settings_replace_the_host_and_keep_verified_tls() -> None:
    from promptrun.db.engine import connect_args_for, database_url
    from promptrun.errors import ConfigError
    from promptrun.settings import Settings

    env = {
        "DATABASE_URL": "postgresql+pg8000://u:p@db.internal:5432/app",
        "DATABASE_HOST": "proxy.example",
    }
    settings = Settings.from_env(env)
    url = database_url(settings)
    assert (url.host, url.port, url.database, url.username) == ("proxy.example", 5432, "app", "u")
    # The proxy is reached like the database: certificate and host name verified.
    _, args = connect_args_for(url)
    assert args["ssl_context"].check_hostname is True
    with pytest.raises(ConfigError, match="FANOUT_QUEUE_URL"):
        Settings.from_env({"FANOUT_QUEUE_URL": "queue"})
