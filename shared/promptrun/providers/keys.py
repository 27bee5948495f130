"""API keys for the providers: one Secrets Manager JSON secret, or the environment.

PROVIDER_SECRETS_ARN names a JSON secret such as `{"openai": "...", "anthropic": "..."}`
(the variable names, `{"OPENAI_API_KEY": "..."}`, are accepted too), read through Powertools'
cache for SECRET_MAX_AGE_SECONDS. Without it, or when it lacks a provider, the keys come from
`Settings.provider_keys` (OPENAI_API_KEY, ANTHROPIC_API_KEY, OPENROUTER_API_KEY).

A model with its own `base_url` (OpenRouter, vLLM, Ollama, a proxy) never receives another
host's key by accident: it gets the key named by its `api_key_name` param, OpenRouter's key
for openrouter.ai, or else the placeholder "unused" (local servers ignore it). A model on
the provider's own API with no key fails with CONFIG, naming the variable to set.

Where a key may go (`key_destination_problem`, checked by `catalog check` and again before
every call, whatever the database row says): never over plain http except to a loopback
host; to a host that is not the key's provider's own only when the model names that host
with `api_key_host` beside `api_key_name`.
"""

from __future__ import annotations

import ipaddress
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


def _is_own_host(name: str, host: str) -> bool:
    hosts = OFFICIAL_HOSTS.get(name, set())
    return host in hosts or any(host.endswith("." + h) for h in hosts)


def is_loopback(host: str) -> bool:
    host = host.lower().strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_name_for(provider: str, base_url: str | None, key_name: str | None = None) -> str | None:
    """Which key a call may use: None means no key (a custom endpoint gets the placeholder)."""
    if key_name:
        return key_name
    host = _host(base_url)
    if host is None:
        return provider
    for name in OFFICIAL_HOSTS:
        if _is_own_host(name, host):
            return name
    return None


def key_destination_problem(
    key_name: str, base_url: str | None, key_host: object = None
) -> tuple[str, str] | None:
    """Why the key `key_name` may not be sent to `base_url`, as (the model field at fault,
    the reason), or None when it may. No base_url is the SDK's own https endpoint."""
    if not base_url:
        return None
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" and not is_loopback(host):
        return (
            "base_url",
            f"the {key_name} key would be sent over plain http to {host}: use https",
        )
    if _is_own_host(key_name, host):
        return None
    if key_host is None or key_host == "":
        return (
            "params.api_key_host",
            f"{host} is not {key_name}'s own host: the {key_name} key goes there only when "
            f"the model names the host, api_key_host: {host}",
        )
    if not isinstance(key_host, str) or key_host.lower() != host:
        return (
            "params.api_key_host",
            f"{key_host!r} is not the base_url's host {host!r}; the {key_name} key is not sent",
        )
    return None


# The providers that send an API key (bedrock signs with the role, offline sends nothing).
KEYED_PROVIDERS = ("openai", "anthropic")


def model_key_problem(
    provider: str, base_url: str | None, params: dict[str, object]
) -> tuple[str, str] | None:
    """A catalogue model that would send a key where it does not belong: (field, reason)."""
    if provider not in KEYED_PROVIDERS:
        return None
    key_name = params.get("api_key_name")
    if key_name is not None and not isinstance(key_name, str):
        return ("params.api_key_name", "must be a key name such as openai")
    name = key_name_for(provider, base_url, key_name or None)
    if name is None:
        return None
    return key_destination_problem(name, base_url, params.get("api_key_host"))


def check_key_destination(key_name: str, base_url: str | None, key_host: object = None) -> None:
    """Raise ProviderError(CONFIG) when the key may not go to `base_url`."""
    problem = key_destination_problem(key_name, base_url, key_host)
    if problem:
        raise ProviderError(ErrorKind.CONFIG, f"{problem[0]}: {problem[1]}")


def api_key_for(
    provider: str,
    settings: Settings,
    base_url: str | None = None,
    key_name: str | None = None,
    key_host: object = None,
) -> str:
    """The API key for a call to `provider` (at `base_url`, when the model sets one).

    `key_name` (the model's `api_key_name` param) picks a key explicitly, e.g. "openai" for a
    proxy in front of OpenAI, with `key_host` (`api_key_host`) naming the proxy's host.
    Raises ProviderError(CONFIG) naming the variable when a key is required and missing, or
    the reason when the key may not go to `base_url`.
    """
    name = key_name_for(provider, base_url, key_name)
    if name is None:
        return PLACEHOLDER_KEY
    check_key_destination(name, base_url, key_host)
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
            # A fixed key is the embedder's choice of host, but never goes out in plaintext.
            host = _host(call.base_url) or ""
            if call.base_url and not call.base_url.startswith("https:") and not is_loopback(host):
                raise ProviderError(
                    ErrorKind.CONFIG, f"base_url: a key is never sent over plain http to {host}"
                )
            return self._api_key
        return api_key_for(
            self.name,
            self.settings,
            base_url=call.base_url,
            key_name=call.params.get("api_key_name"),
            key_host=call.params.get("api_key_host"),
        )
