"""The one settings object: read from the environment, validated, with errors naming the variable."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from promptrun.errors import ConfigError

# Provider keys read from the environment when PROVIDER_SECRETS_ARN is not set.
PROVIDER_KEY_VARS = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
}


def _int_env(env: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _bool_env(env: dict[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    database_secret_arn: str | None = None
    database_host: str | None = None  # overrides the URL's or secret's host (RDS Proxy)
    # The processor's statements prepared once per connection (named): false behind a proxy
    # that multiplexes transactions (RDS Proxy pins sessions with named statements).
    prepared_statements: bool = True
    jobs_queue_url: str | None = None
    jobs_dlq_url: str | None = None
    fanout_queue_url: str | None = None  # the fan-out's continuation queue (optional)
    api_token: str | None = field(default=None, repr=False)
    api_token_secret_arn: str | None = None
    provider_secrets_arn: str | None = None
    provider_keys: dict[str, str] = field(default_factory=dict, repr=False)
    max_attempts: int = 5
    lease_seconds: int = 900
    backoff_base_seconds: int = 5
    backoff_cap_seconds: int = 900
    requeue_after_seconds: int = 3600
    secret_max_age_seconds: int = 300
    retention_days: int = 0  # 0: keep finished jobs forever

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        database_url = env.get("DATABASE_URL") or None
        if database_url and not database_url.startswith("postgresql+pg8000://"):
            # Never echo the URL itself: it usually carries a password.
            raise ConfigError(
                "DATABASE_URL must be a SQLAlchemy URL starting with postgresql+pg8000://"
            )
        queue_url = env.get("JOBS_QUEUE_URL") or None
        if queue_url and not queue_url.startswith(("http://", "https://")):
            raise ConfigError(f"JOBS_QUEUE_URL must be an SQS queue URL, got {queue_url!r}")
        dlq_url = env.get("JOBS_DLQ_URL") or None
        if dlq_url and not dlq_url.startswith(("http://", "https://")):
            raise ConfigError(f"JOBS_DLQ_URL must be an SQS queue URL, got {dlq_url!r}")
        fanout_queue_url = env.get("FANOUT_QUEUE_URL") or None
        if fanout_queue_url and not fanout_queue_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"FANOUT_QUEUE_URL must be an SQS queue URL, got {fanout_queue_url!r}"
            )
        keys = {p: env[v] for p, v in PROVIDER_KEY_VARS.items() if env.get(v)}
        return cls(
            database_url=database_url,
            database_secret_arn=env.get("DATABASE_SECRET_ARN") or None,
            database_host=env.get("DATABASE_HOST") or None,
            prepared_statements=_bool_env(env, "DATABASE_PREPARED_STATEMENTS", True),
            jobs_queue_url=queue_url,
            jobs_dlq_url=dlq_url,
            fanout_queue_url=fanout_queue_url,
            api_token=env.get("API_TOKEN") or None,
            api_token_secret_arn=env.get("API_TOKEN_SECRET_ARN") or None,
            provider_secrets_arn=env.get("PROVIDER_SECRETS_ARN") or None,
            provider_keys=keys,
            max_attempts=_int_env(env, "MAX_ATTEMPTS", 5, 1, 50),
            lease_seconds=_int_env(env, "LEASE_SECONDS", 900, 5, 43200),
            backoff_base_seconds=_int_env(env, "BACKOFF_BASE_SECONDS", 5, 0, 3600),
            backoff_cap_seconds=_int_env(env, "BACKOFF_CAP_SECONDS", 900, 1, 43200),
            requeue_after_seconds=_int_env(env, "REQUEUE_AFTER_SECONDS", 3600, 60, 86400),
            secret_max_age_seconds=_int_env(env, "SECRET_MAX_AGE_SECONDS", 300, 0, 86400),
            retention_days=_int_env(env, "RETENTION_DAYS", 0, 0, 36500),
        )

    def require(self, *needs: str) -> Settings:
        """Fail at start, naming the variable, when a function's settings are missing."""
        if "database" in needs and not (self.database_url or self.database_secret_arn):
            raise ConfigError("DATABASE_URL or DATABASE_SECRET_ARN must be set")
        if "queue" in needs and not self.jobs_queue_url:
            raise ConfigError("JOBS_QUEUE_URL must be set")
        if "dlq" in needs and not self.jobs_dlq_url:
            raise ConfigError("JOBS_DLQ_URL must be set")
        if "api_token" in needs and not (self.api_token or self.api_token_secret_arn):
            raise ConfigError("API_TOKEN or API_TOKEN_SECRET_ARN must be set")
        return self

    def redacted(self) -> dict[str, Any]:
        return {
            "database": "url"
            if self.database_url
            else "secret"
            if self.database_secret_arn
            else None,
            "jobs_queue_url": self.jobs_queue_url,
            "providers_from": "secret" if self.provider_secrets_arn else sorted(self.provider_keys),
        }


@cache
def get_settings() -> Settings:
    return Settings.from_env()
