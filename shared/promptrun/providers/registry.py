"""Provider lookup by the catalogue's `provider` name.

Each factory imports its module (and so its SDK) only when a job needs that provider.
"""

from __future__ import annotations

from collections.abc import Callable

from promptrun.providers.base import ErrorKind, Provider, ProviderError
from promptrun.settings import Settings


def _offline(settings: Settings) -> Provider:
    from promptrun.providers.offline import OfflineProvider

    return OfflineProvider()


def _openai(settings: Settings) -> Provider:
    try:
        from promptrun.providers.openai_provider import OpenAIProvider
    except ImportError as exc:
        raise ProviderError(
            ErrorKind.CONFIG, f"provider 'openai' needs the openai package ({exc.name})"
        ) from None
    return OpenAIProvider(settings)


def _anthropic(settings: Settings) -> Provider:
    try:
        from promptrun.providers.anthropic_provider import AnthropicProvider
    except ImportError as exc:
        raise ProviderError(
            ErrorKind.CONFIG, f"provider 'anthropic' needs the anthropic package ({exc.name})"
        ) from None
    return AnthropicProvider(settings)


def _bedrock(settings: Settings) -> Provider:
    from promptrun.providers.bedrock_provider import BedrockProvider

    return BedrockProvider(settings)


FACTORIES: dict[str, Callable[[Settings], Provider]] = {
    "offline": _offline,
    "openai": _openai,
    "anthropic": _anthropic,
    "bedrock": _bedrock,
}


def get_provider(name: str, settings: Settings) -> Provider:
    factory = FACTORIES.get(name)
    if factory is None:
        raise ProviderError(ErrorKind.UNKNOWN_MODEL, f"provider {name!r} is not available")
    return factory(settings)
