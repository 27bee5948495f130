"""API keys for the providers: one Secrets Manager JSON secret, or the environment.

PROVIDER_SECRETS_ARN names a JSON secret such as `{"openai": "...", "anthropic": "..."}`
(the variable names, `{"OPENAI_API_KEY": "..."}`, are accepted too), read through Powertools'
cache for SECRET_MAX_AGE_SECONDS. Without it, or when it lacks a provider, the keys come from
`Settings.provider_keys` (OPENAI_API_KEY, ANTHROPIC_API_KEY, OPENROUTER_API_KEY).

A model with its own `base_url` (OpenRouter, vLLM, Ollama, a proxy) never receives another
host's key by accident: it gets the key named by its `api_key_name` param, OpenRouter's key
for openrouter.ai, or else the placeholder "unused" (local servers ignore it). A model on
the provider's own API with no key fails with CONFIG, naming the variable to set.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from promptrun.errors import ConfigError
from promptrun.providers.base import ErrorKind, ModelCall, ProviderError
from promptrun.providers.errors import redact, register_secret
from promptrun.settings import PROVIDER_KEY_VARS, Settings

PLACEHOLDER_KEY = "unused"

# The hosts that are the provider's own API: its key may go there without being asked for.
OFFICIAL_HOSTS = {
    "openai": {"api.openai.com"},
    "anthropic": {"api.anthropic.com"},
    "openrouter": {"openrouter.ai"},
}


def _var_for(name: str) -> str:
    return PROVIDER_KEY_VARS.get(name, name)


def _from_secret(name: str, settings: Settings) -> str | None:
    if not settings.provider_secrets_arn:
        return None
    from promptrun import aws

    try:
        secret = aws.get_secret_json(settings.provider_secrets_arn, settings.secret_max_age_seconds)
    except ConfigError as exc:
        raise ProviderError(ErrorKind.CONFIG, f"PROVIDER_SECRETS_ARN: {redact(str(exc))}") from None
    except Exception as exc:  # Powertools wraps every fetch error in GetParameterError
        text = str(exc)
        transient = any(
            word in text
            for word in (
                "Throttling",
                "InternalServiceError",
                "ServiceUnavailable",
                "timed out",
                "Could not connect",
            )
        )
        kind = ErrorKind.SERVER if transient else ErrorKind.CONFIG
        raise ProviderError(
            kind,
            redact(
                f"PROVIDER_SECRETS_ARN: could not read the secret: {type(exc).__name__}: {text}"
            ),
        ) from None
    value = secret.get(name) or secret.get(_var_for(name))
    return str(value) if value else None


def _host(base_url: str | None) -> str | None:
    if not base_url:
        return None
    return (urlsplit(base_url).hostname or "").lower() or None


def key_name_for(provider: str, base_url: str | None, key_name: str | None = None) -> str | None:
    """Which key a call may use: None means no key (a custom endpoint gets the placeholder)."""
    if key_name:
        return key_name
    host = _host(base_url)
    if host is None:
        return provider
    for name, hosts in OFFICIAL_HOSTS.items():
        if host in hosts or any(host.endswith("." + h) for h in hosts):
            return name
    return None


def api_key_for(
    provider: str, settings: Settings, base_url: str | None = None, key_name: str | None = None
) -> str:
    """The API key for a call to `provider` (at `base_url`, when the model sets one).

    `key_name` (the model's `api_key_name` param) picks a key explicitly, e.g. "openai" for a
    proxy in front of OpenAI. Raises ProviderError(CONFIG) naming the variable when a key is
    required and missing.
    """
    name = key_name_for(provider, base_url, key_name)
    if name is None:
        return PLACEHOLDER_KEY
    key = _from_secret(name, settings) or settings.provider_keys.get(name)
    if key:
        register_secret(key)
        return key
    if name not in PROVIDER_KEY_VARS:
        where = f"add {name!r} to the JSON secret named by PROVIDER_SECRETS_ARN"
    else:
        where = f"set {_var_for(name)}"
        if settings.provider_secrets_arn:
            where += f" or add {name!r} to the secret named by PROVIDER_SECRETS_ARN"
    raise ProviderError(ErrorKind.CONFIG, f"no API key for {name}: {where}")


class KeyedProvider:
    """A provider that sends an API key: the key for each call, from `api_key_for`
    (or fixed, for tests and embedding)."""

    name: str

    def __init__(self, settings: Settings, api_key: str | None = None) -> None:
        self.settings = settings
        self._api_key = api_key

    def _key(self, call: ModelCall) -> str:
        if self._api_key is not None:
            return self._api_key
        return api_key_for(
            self.name,
            self.settings,
            base_url=call.base_url,
            key_name=call.params.get("api_key_name"),
        )
