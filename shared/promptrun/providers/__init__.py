"""Model providers behind one interface. Each SDK is imported only when a job needs it."""

from __future__ import annotations

from promptrun.providers.base import (
    Completion,
    ErrorKind,
    Extraction,
    ModelCall,
    Provider,
    ProviderError,
)
from promptrun.providers.registry import get_provider

__all__ = [
    "Completion",
    "ErrorKind",
    "Extraction",
    "ModelCall",
    "Provider",
    "ProviderError",
    "get_provider",
]
