"""A model's `params` checked per provider when the catalogue is loaded, not when a job runs.

Each known key has a type and, where the provider documents one, a range. A key the provider
does not know is refused: anything provider-specific goes under `extra_body` (or
`additional_model_request_fields` for Bedrock), which is passed through as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from promptrun.providers.base import ErrorKind

Check = Callable[[Any], str | None]


def _number(low: float | None = None, high: float | None = None) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, got {value!r}"
        if low is not None and value < low:
            return f"must be >= {low}, got {value}"
        if high is not None and value > high:
            return f"must be <= {high}, got {value}"
        return None

    return check


def _integer(low: int | None = None, high: int | None = None) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {value!r}"
        return _number(low, high)(value)

    return check


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {value!r}"


def _string(value: Any) -> str | None:
    return (
        None if isinstance(value, str) and value else f"must be a non-empty string, got {value!r}"
    )


def _mapping(value: Any) -> str | None:
    return None if isinstance(value, dict) else f"must be a mapping, got {value!r}"


def _stop(value: Any) -> str | None:
    if isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(x, str) for x in value)
    ):
        return None
    return f"must be a string or a list of strings, got {value!r}"


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        if value in choices:
            return None
        return f"must be one of {', '.join(choices)}, got {value!r}"

    return check


# Read by promptrun itself, whatever the provider.
_COMMON: dict[str, Check] = {
    "timeout": _number(0.1, 900),
    "structured_output": _boolean,
    "extraction_max_tokens": _integer(1, 200_000),
    "max_tokens": _integer(1, 200_000),
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "stop": _stop,
}

_OPENAI: dict[str, Check] = {
    **_COMMON,
    "api_key_name": _string,
    "api_key_host": _string,
    "extra_body": _mapping,
    "json_mode": _boolean,
    "max_completion_tokens": _integer(1, 200_000),
    "seed": _integer(),
    "frequency_penalty": _number(-2, 2),
    "presence_penalty": _number(-2, 2),
    "logit_bias": _mapping,
    "reasoning_effort": _one_of("minimal", "low", "medium", "high"),
    "service_tier": _one_of("auto", "default", "flex", "scale", "priority"),
    "verbosity": _one_of("low", "medium", "high"),
    "top_k": _integer(1),
    "min_p": _number(0, 1),
    "repetition_penalty": _number(0, 10),
}

_ANTHROPIC: dict[str, Check] = {
    **_COMMON,
    "temperature": _number(0, 1),
    "api_key_name": _string,
    "api_key_host": _string,
    "extra_body": _mapping,
    "top_k": _integer(1),
    "strict_tools": _boolean,
}

_BEDROCK: dict[str, Check] = {
    **_COMMON,
    "region": _string,
    "additional_model_request_fields": _mapping,
    "top_k": _integer(1),
}

_OFFLINE: dict[str, Check] = {
    **_COMMON,
    "seed": _integer(),
    "latency_ms": _number(0, 600_000),
    "simulate_error": _one_of(*(k.value for k in ErrorKind)),
    "simulate_error_attempts": _integer(0),
    "retry_after": _number(0, 43_200),
}

KNOWN: dict[str, dict[str, Check]] = {
    "openai": _OPENAI,
    "anthropic": _ANTHROPIC,
    "bedrock": _BEDROCK,
    "offline": _OFFLINE,
}
_PASS_THROUGH = {
    "openai": "extra_body",
    "anthropic": "extra_body",
    "bedrock": "additional_model_request_fields",
}


@dataclass(frozen=True)
class ParamProblem:
    key: str
    message: str


def param_problems(provider: str, params: dict[str, Any]) -> list[ParamProblem]:
    """Every problem with `params` for `provider`, one per key (empty: valid)."""
    known = KNOWN.get(provider)
    if known is None:  # the provider itself is refused elsewhere
        return []
    problems = []
    for key, value in params.items():
        check = known.get(str(key))
        if check is None:
            where = _PASS_THROUGH.get(provider)
            hint = f"; put provider-specific keys under {where}" if where else ""
            problems.append(ParamProblem(str(key), f"unknown param for provider {provider}{hint}"))
            continue
        if value is None:
            continue
        message = check(value)
        if message:
            problems.append(ParamProblem(str(key), message))
    return problems
