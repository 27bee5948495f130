"""Keys go only where they belong: never over plain http (loopback aside), and to a host that
is not the key's provider's own only when the catalogue names that host for the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from promptrun.catalog import load_catalog
from promptrun.cli import main
from promptrun.errors import InputError
from promptrun.providers.base import ErrorKind, ModelCall, ProviderError
from promptrun.providers.keys import api_key_for
from promptrun.providers.openai_provider import OpenAIProvider
from promptrun.settings import Settings

KEY = "sk-test-destinations-0123456789"


def catalogue(**model: Any) -> str:
    entry = {"slug": "m", "provider": "openai", "model": "gpt-x", **model}
    return yaml.safe_dump(
        {"models": [entry], "prompts": [{"slug": "p", "text": "hi", "schedule": "daily"}]}
    )


def rejected(**model: Any) -> str:
    with pytest.raises(InputError) as info:
        load_catalog(catalogue(**model))
    return str(info.value)


def test_a_key_over_plain_http_to_a_remote_host_is_rejected_naming_entry_and_field() -> None:
    message = rejected(
        base_url="http://proxy.example.test/v1",
        params={"api_key_name": "openai", "api_key_host": "proxy.example.test"},
    )
    assert "models[0] (m).base_url: the openai key would be sent over plain http" in message


def test_a_key_to_a_host_that_is_not_its_providers_needs_the_host_named() -> None:
    message = rejected(
        base_url="https://collector.example.test/v1", params={"api_key_name": "openai"}
    )
    assert "models[0] (m).params.api_key_host: collector.example.test is not openai's own host" in (
        message
    )


def test_a_named_host_that_is_not_the_base_urls_host_is_rejected() -> None:
    message = rejected(
        base_url="https://collector.example.test/v1",
        params={"api_key_name": "openai", "api_key_host": "proxy.example.test"},
    )
    assert "models[0] (m).params.api_key_host: 'proxy.example.test' is not the base_url's host" in (
        message
    )


def test_anthropics_key_on_openais_host_needs_naming_too() -> None:
    message = rejected(
        provider="anthropic",
        base_url="https://api.openai.com",
        params={"api_key_name": "anthropic"},
    )
    assert "models[0] (m).params.api_key_host" in message


@pytest.mark.parametrize(
    "model",
    [
        {},  # the SDK's own https endpoint
        {"base_url": "https://api.openai.com/v1"},
        {"base_url": "https://openrouter.ai/api/v1"},  # OpenRouter's key, on its own host
        {"base_url": "http://localhost:11434/v1"},  # no key named: the placeholder
        {"base_url": "http://ollama.lan:11434/v1"},  # no key named: nothing leaves
        {
            "base_url": "https://proxy.example.test/v1",
            "params": {"api_key_name": "openai", "api_key_host": "PROXY.example.test"},
        },
        {
            "base_url": "http://127.0.0.1:8000/v1",
            "params": {"api_key_name": "openai", "api_key_host": "127.0.0.1"},
        },
        {"provider": "bedrock", "base_url": "http://anything.example.test"},
    ],
)
def test_catalogues_that_keep_keys_where_they_belong_are_accepted(model: dict[str, Any]) -> None:
    assert len(load_catalog(catalogue(**model)).models) == 1


def test_catalog_check_rejects_a_leaking_catalogue_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(
        catalogue(base_url="http://proxy.example.test/v1", params={"api_key_name": "openai"})
    )
    assert main(["catalog", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "models[0] (m).base_url" in err and "plain http" in err


# --- the provider, whatever the database row says -------------------------------------------


def test_the_provider_refuses_a_key_over_http_to_a_remote_host() -> None:
    # A row changed behind the catalogue's back: the key stays home, no request is made
    # (a `.invalid` host never resolves, so a request would fail as CONNECTION instead).
    provider = OpenAIProvider(Settings(provider_keys={"openai": KEY}))
    call = ModelCall(
        provider_model="gpt-x",
        base_url="http://gateway.example.invalid/v1",
        params={"api_key_name": "openai", "api_key_host": "gateway.example.invalid"},
        timeout_seconds=5,
    )
    with pytest.raises(ProviderError) as info:
        provider.answer(call, "hi", None)
    assert info.value.kind is ErrorKind.CONFIG and not info.value.retryable
    assert "plain http" in info.value.message and KEY not in info.value.message


def test_a_fixed_key_is_not_sent_over_http_to_a_remote_host_either() -> None:
    provider = OpenAIProvider(Settings(), api_key=KEY)
    call = ModelCall("gpt-x", base_url="http://gateway.example.invalid/v1", timeout_seconds=5)
    with pytest.raises(ProviderError) as info:
        provider.answer(call, "hi", None)
    assert info.value.kind is ErrorKind.CONFIG and "plain http" in info.value.message


def test_the_key_lookup_refuses_an_unnamed_foreign_host() -> None:
    settings = Settings(provider_keys={"openai": KEY})
    with pytest.raises(ProviderError) as info:
        api_key_for("openai", settings, base_url="https://x.example.test/v1", key_name="openai")
    assert info.value.kind is ErrorKind.CONFIG and "api_key_host" in info.value.message
