"""The provider interface and its error classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    # Only a type here: importing extraction's pydantic models is the first extraction's cost.
    from promptrun.extraction import Entity


class ErrorKind(StrEnum):
    RATE_LIMIT = "rate_limit"
    TIMEOUT = "timeout"
    SERVER = "server"
    CONNECTION = "connection"
    OVERLOADED = "overloaded"
    AUTH = "auth"
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    CONTEXT_LENGTH = "context_length"
    VALIDATION = "validation"
    REFUSAL = "refusal"
    UNKNOWN_MODEL = "unknown_model"
    CONFIG = "config"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    INTERNAL = "internal"


RETRYABLE_KINDS = {
    ErrorKind.RATE_LIMIT,
    ErrorKind.TIMEOUT,
    ErrorKind.SERVER,
    ErrorKind.CONNECTION,
    ErrorKind.OVERLOADED,
}


class ProviderError(Exception):
    """A classified failure of a model call. The message must never contain a secret."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        retry_after: float | None = None,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        # Tokens of calls the provider answered (and billed) before the failure.
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS


@dataclass(frozen=True)
class ModelCall:
    """One call's settings: the catalogue's model plus what the job adds."""

    provider_model: str
    base_url: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    timeout_seconds: float = 60.0
    attempt: int = 1
    seed: str = ""


@dataclass(frozen=True)
class Completion:
    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    response_id: str | None = None
    finish_reason: str | None = None
    # Seconds until the provider's quota refills, when its headers said it is used up.
    quota_wait: float | None = None


@dataclass(frozen=True)
class Extraction:
    entities: list[Entity]
    input_tokens: int = 0
    output_tokens: int = 0


class Provider(Protocol):
    name: str

    def answer(self, call: ModelCall, prompt: str, system: str | None) -> Completion:
        """The answer, as a user would get it."""
        ...

    def extract(self, call: ModelCall, answer: str) -> Extraction:
        """The entities the answer mentions, as a strict structured result."""
        ...
