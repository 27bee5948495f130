"""SDK exceptions -> classified ProviderError; Retry-After parsing; secrets kept out of
messages; API keys from the environment or one Secrets Manager secret."""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from botocore import exceptions as bx

from promptrun import aws
from promptrun.errors import ConfigError
from promptrun.providers import ErrorKind, ProviderError
from promptrun.providers import errors as perrors
from promptrun.providers.errors import (
    from_anthropic_error,
    from_botocore_error,
    from_openai_error,
    parse_duration,
    redact,
    retry_after_from_headers,
)
from promptrun.providers.keys import PLACEHOLDER_KEY, api_key_for
from promptrun.settings import Settings

REQUEST = httpx2.Request("POST", "https://api.example.test/v1/chat/completions")
NOW = 1_800_000_000.0


def response(status: int, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.Response(status, headers=headers or {}, request=REQUEST)


def openai_status(
    status: int,
    message: str = "boom",
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> openai.APIStatusError:
    body = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    classes: dict[int, type[openai.APIStatusError]] = {
        400: openai.BadRequestError,
        401: openai.AuthenticationError,
        403: openai.PermissionDeniedError,
        404: openai.NotFoundError,
        409: openai.ConflictError,
        422: openai.UnprocessableEntityError,
        429: openai.RateLimitError,
    }
    cls = classes.get(
        status, openai.InternalServerError if status >= 500 else openai.APIStatusError
    )
    return cls(f"Error code: {status} - {body}", response=response(status, headers), body=body)


def anthropic_status(
    status: int, etype: str, message: str = "boom", headers: dict[str, str] | None = None
) -> anthropic.APIStatusError:
    body = {"type": "error", "error": {"type": etype, "message": message}}
    return anthropic.APIStatusError(
        f"Error code: {status}", response=response(status, headers), body=body
    )


# -- OpenAI ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "code", "kind"),
    [
        (400, "Invalid parameter", None, ErrorKind.BAD_REQUEST),
        (400, "This model's maximum context length is 8192 tokens", None, ErrorKind.CONTEXT_LENGTH),
        (400, "whatever", "context_length_exceeded", ErrorKind.CONTEXT_LENGTH),
        (401, "Incorrect API key provided", "invalid_api_key", ErrorKind.AUTH),
        (403, "Country not supported", None, ErrorKind.AUTH),
        (404, "model not found", "model_not_found", ErrorKind.NOT_FOUND),
        (408, "timeout", None, ErrorKind.TIMEOUT),
        (409, "conflict", None, ErrorKind.BAD_REQUEST),
        (422, "unprocessable", None, ErrorKind.BAD_REQUEST),
        (429, "Rate limit reached", "rate_limit_exceeded", ErrorKind.RATE_LIMIT),
        (429, "You exceeded your current quota", "insufficient_quota", ErrorKind.AUTH),
        (500, "server error", None, ErrorKind.SERVER),
        (502, "bad gateway", None, ErrorKind.SERVER),
        (503, "overloaded", None, ErrorKind.SERVER),
    ],
)
def test_openai_status_errors(status: int, message: str, code: str | None, kind: ErrorKind) -> None:
    err = from_openai_error(openai_status(status, message, code))
    assert err.kind is kind
    assert err.retryable is (kind in {ErrorKind.RATE_LIMIT, ErrorKind.SERVER, ErrorKind.TIMEOUT})
    assert err.message.startswith(f"openai: HTTP {status}")


def test_openai_timeout_and_connection_errors() -> None:
    assert from_openai_error(openai.APITimeoutError(REQUEST)).kind is ErrorKind.TIMEOUT
    assert (
        from_openai_error(openai.APIConnectionError(request=REQUEST)).kind is ErrorKind.CONNECTION
    )


def test_openai_rate_limit_carries_retry_after() -> None:
    err = from_openai_error(openai_status(429, headers={"retry-after": "12"}))
    assert (err.kind, err.retry_after) == (ErrorKind.RATE_LIMIT, 12.0)


def test_a_permanent_error_ignores_retry_after() -> None:
    assert from_openai_error(openai_status(400, headers={"retry-after": "12"})).retry_after is None


def test_openai_client_side_errors() -> None:
    assert (
        from_openai_error(openai.OpenAIError("The api_key client option must be set")).kind
        is ErrorKind.CONFIG
    )
    assert from_openai_error(RuntimeError("bug")).kind is ErrorKind.INTERNAL


# -- Anthropic ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "etype", "message", "kind"),
    [
        (
            400,
            "invalid_request_error",
            "prompt is too long: 201000 tokens > 200000 maximum",
            ErrorKind.CONTEXT_LENGTH,
        ),
        (400, "invalid_request_error", "max_tokens: Field required", ErrorKind.BAD_REQUEST),
        (401, "authentication_error", "invalid x-api-key", ErrorKind.AUTH),
        (403, "permission_error", "forbidden", ErrorKind.AUTH),
        (404, "not_found_error", "model: nope", ErrorKind.NOT_FOUND),
        (408, "timeout_error", "timeout", ErrorKind.TIMEOUT),
        (413, "request_too_large", "Request exceeds the maximum size", ErrorKind.CONTEXT_LENGTH),
        (422, "invalid_request_error", "unprocessable", ErrorKind.BAD_REQUEST),
        (429, "rate_limit_error", "rate limited", ErrorKind.RATE_LIMIT),
        (500, "api_error", "internal", ErrorKind.SERVER),
        (529, "overloaded_error", "Overloaded", ErrorKind.OVERLOADED),
    ],
)
def test_anthropic_status_errors(status: int, etype: str, message: str, kind: ErrorKind) -> None:
    err = from_anthropic_error(anthropic_status(status, etype, message))
    assert err.kind is kind
    assert message.split(":")[0] in err.message


def test_anthropic_overloaded_type_wins_over_the_status() -> None:
    assert (
        from_anthropic_error(anthropic_status(500, "overloaded_error")).kind is ErrorKind.OVERLOADED
    )


def test_anthropic_timeout_and_connection_errors() -> None:
    assert from_anthropic_error(anthropic.APITimeoutError(REQUEST)).kind is ErrorKind.TIMEOUT
    assert (
        from_anthropic_error(anthropic.APIConnectionError(request=REQUEST)).kind
        is ErrorKind.CONNECTION
    )


def test_anthropic_overloaded_honours_retry_after() -> None:
    err = from_anthropic_error(
        anthropic_status(529, "overloaded_error", headers={"retry-after": "20"})
    )
    assert (err.kind, err.retry_after) == (ErrorKind.OVERLOADED, 20.0)


# -- botocore -------------------------------------------------------------------------------


def client_error(
    code: str, message: str, status: int, headers: dict[str, str] | None = None
) -> bx.ClientError:
    parsed: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
    }
    return bx.ClientError(parsed, "Converse")


@pytest.mark.parametrize(
    ("code", "status", "message", "kind"),
    [
        ("ThrottlingException", 429, "slow down", ErrorKind.RATE_LIMIT),
        ("ServiceUnavailableException", 503, "x", ErrorKind.SERVER),
        ("InternalServerException", 500, "x", ErrorKind.SERVER),
        ("ModelNotReadyException", 429, "x", ErrorKind.SERVER),
        ("ModelTimeoutException", 408, "x", ErrorKind.TIMEOUT),
        ("AccessDeniedException", 403, "x", ErrorKind.AUTH),
        ("ValidationException", 400, "Malformed input", ErrorKind.BAD_REQUEST),
        ("ValidationException", 400, "prompt is too long", ErrorKind.CONTEXT_LENGTH),
        ("ResourceNotFoundException", 404, "x", ErrorKind.NOT_FOUND),
        ("SomethingNewException", 502, "x", ErrorKind.SERVER),
        ("SomethingNewException", 400, "x", ErrorKind.BAD_REQUEST),
    ],
)
def test_botocore_client_errors(code: str, status: int, message: str, kind: ErrorKind) -> None:
    assert from_botocore_error(client_error(code, message, status)).kind is kind


def test_botocore_throttling_honours_retry_after() -> None:
    err = from_botocore_error(client_error("ThrottlingException", "x", 429, {"retry-after": "9"}))
    assert err.retry_after == 9.0


def test_botocore_transport_errors() -> None:
    assert (
        from_botocore_error(bx.ReadTimeoutError(endpoint_url="https://x")).kind is ErrorKind.TIMEOUT
    )
    assert (
        from_botocore_error(bx.ConnectTimeoutError(endpoint_url="https://x")).kind
        is ErrorKind.TIMEOUT
    )
    assert (
        from_botocore_error(bx.EndpointConnectionError(endpoint_url="https://x")).kind
        is ErrorKind.CONNECTION
    )
    assert from_botocore_error(bx.NoCredentialsError()).kind is ErrorKind.AUTH
    assert from_botocore_error(bx.NoRegionError()).kind is ErrorKind.CONFIG


# -- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "5"}, 5.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # ms wins
        ({"Retry-After": formatdate(NOW + 42, usegmt=True)}, 42.0),
        ({"Retry-After": formatdate(NOW - 42, usegmt=True)}, 0.0),  # in the past: now
        ({"retry-after": "-3"}, 0.0),
        ({"anthropic-ratelimit-requests-reset": "2027-01-15T08:00:30Z"}, None),  # set below
        ({"x-ratelimit-reset-requests": "1m30s"}, 90.0),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        (
            {
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-requests": "5",
                "x-ratelimit-reset-tokens": "1h",
                "x-ratelimit-remaining-tokens": "0",
            },
            3600.0,
        ),
        ({"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "8s"}, 2.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_from_headers(headers: dict[str, str], expected: float | None) -> None:
    if "anthropic-ratelimit-requests-reset" in headers:
        from datetime import UTC, datetime

        headers = {
            "anthropic-ratelimit-requests-reset": datetime.fromtimestamp(NOW + 30, UTC).isoformat()
        }
        expected = 30.0
    got = retry_after_from_headers(headers, now=NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=0.01)


def test_retry_after_is_capped_at_a_day() -> None:
    assert retry_after_from_headers({"retry-after": str(10**9)}, now=NOW) == 24 * 3600.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("20ms", 0.02),
        ("7", 7.0),
        ("abc", None),
        ("5x", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


# -- redaction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "leaky",
    [
        "Incorrect API key provided: sk-proj-ABCDEFGHIJKLMNOPQRSTUV1234",
        "Incorrect API key provided: sk-abc***********wxyz.",
        "invalid x-api-key sk-ant-api03-AbCdEf_gh-1234567890",
        "header Authorization: Bearer abc.def.ghi-123",
        "api_key=supersecretvalue123 rejected",
        "aws key AKIAABCDEFGHIJKLMNOP leaked",
    ],
)
def test_redact_removes_anything_shaped_like_a_key(leaky: str) -> None:
    clean = redact(leaky)
    for secret in ("sk-", "abc.def.ghi", "supersecretvalue123", "AKIAABCDEFGHIJKLMNOP"):
        assert secret not in clean
    assert "[redacted]" in clean


def test_redact_keeps_ordinary_words() -> None:
    assert redact("task-queue risk-free disk-full") == "task-queue risk-free disk-full"


def test_redact_removes_a_configured_key_of_any_shape_and_keeps_messages_short() -> None:
    key = "plainkey-0000-1111-2222"
    assert key not in redact(f"key {key} is invalid", secrets=[key])
    perrors.register_secret("registered-secret-value-42")
    assert "registered-secret-value-42" not in redact("echo registered-secret-value-42")
    long = redact("x" * 5000)
    assert len(long) <= perrors.MESSAGE_LIMIT
    assert "\n" not in redact("two\nlines")


def test_status_error_messages_never_carry_the_key() -> None:
    key = "sk-live-key-0123456789"
    err = from_openai_error(openai_status(401, f"Incorrect API key provided: {key}"), secrets=[key])
    assert key not in err.message and "sk-live" not in err.message
    err = from_anthropic_error(
        anthropic_status(401, "authentication_error", f"bad key {key}"), secrets=[key]
    )
    assert key not in err.message


# -- keys -----------------------------------------------------------------------------------


def test_key_from_the_environment_settings() -> None:
    settings = Settings(provider_keys={"openai": "sk-env-openai-123456"})
    assert api_key_for("openai", settings) == "sk-env-openai-123456"


def test_missing_key_names_the_variable() -> None:
    with pytest.raises(ProviderError) as info:
        api_key_for("anthropic", Settings())
    assert info.value.kind is ErrorKind.CONFIG
    assert "ANTHROPIC_API_KEY" in info.value.message


def test_missing_key_with_a_secret_names_both_places(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        aws, "get_secret_json", lambda arn, max_age: {"anthropic": "sk-ant-x-123456"}
    )
    with pytest.raises(ProviderError) as info:
        api_key_for(
            "openai", Settings(provider_secrets_arn="arn:aws:secretsmanager:us-east-1:1:secret:p")
        )
    assert "OPENAI_API_KEY" in info.value.message and "PROVIDER_SECRETS_ARN" in info.value.message


def test_key_from_the_secret_wins_and_is_read_with_the_max_age(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, int]] = []

    def fake_secret(arn: str, max_age: int) -> dict[str, Any]:
        calls.append((arn, max_age))
        return {"openai": "sk-from-secret-123456", "ANTHROPIC_API_KEY": "sk-ant-from-secret-1234"}

    monkeypatch.setattr(aws, "get_secret_json", fake_secret)
    settings = Settings(
        provider_secrets_arn="arn:aws:secretsmanager:us-east-1:1:secret:p",
        provider_keys={"openai": "sk-env-openai-123456"},
        secret_max_age_seconds=120,
    )
    assert api_key_for("openai", settings) == "sk-from-secret-123456"
    assert api_key_for("anthropic", settings) == "sk-ant-from-secret-1234"
    assert calls[0] == ("arn:aws:secretsmanager:us-east-1:1:secret:p", 120)


def test_a_secret_that_cannot_be_read_is_classified(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(provider_secrets_arn="arn:aws:secretsmanager:us-east-1:1:secret:p")

    def not_json(arn: str, max_age: int) -> dict[str, Any]:
        raise ConfigError(f"secret {arn} is not a JSON object")

    def throttled(arn: str, max_age: int) -> dict[str, Any]:
        raise RuntimeError("An error occurred (ThrottlingException) when calling GetSecretValue")

    monkeypatch.setattr(aws, "get_secret_json", not_json)
    with pytest.raises(ProviderError) as info:
        api_key_for("openai", settings)
    assert info.value.kind is ErrorKind.CONFIG and "PROVIDER_SECRETS_ARN" in info.value.message

    monkeypatch.setattr(aws, "get_secret_json", throttled)
    with pytest.raises(ProviderError) as info:
        api_key_for("openai", settings)
    assert info.value.kind is ErrorKind.SERVER and info.value.retryable


def test_custom_base_url_gets_a_placeholder_not_another_hosts_key() -> None:
    settings = Settings(provider_keys={"openai": "sk-env-openai-123456"})
    assert api_key_for("openai", settings, base_url="http://localhost:11434/v1") == PLACEHOLDER_KEY
    # ...unless the model asks for a key by name, for that host.
    assert (
        api_key_for(
            "openai",
            settings,
            base_url="https://proxy.example.test/v1",
            key_name="openai",
            key_host="proxy.example.test",
        )
        == "sk-env-openai-123456"
    )


def test_official_and_openrouter_hosts_get_their_keys() -> None:
    settings = Settings(
        provider_keys={"openai": "sk-openai-1234567", "openrouter": "sk-or-v1-1234567"}
    )
    assert (
        api_key_for("openai", settings, base_url="https://api.openai.com/v1") == "sk-openai-1234567"
    )
    assert (
        api_key_for("openai", settings, base_url="https://openrouter.ai/api/v1")
        == "sk-or-v1-1234567"
    )
    with pytest.raises(ProviderError) as info:
        api_key_for("openai", Settings(), base_url="https://openrouter.ai/api/v1")
    assert "OPENROUTER_API_KEY" in info.value.message


def test_keys_handed_out_are_redacted_everywhere() -> None:
    key = "zz-unusual-format-key-987654321"
    api_key_for("openai", Settings(provider_keys={"openai": key}))
    err = from_openai_error(openai_status(401, f"key {key} rejected"))
    assert key not in err.message


def test_provider_error_messages_stay_short() -> None:
    err = from_openai_error(openai_status(400, "y" * 2000))
    assert len(err.message) <= perrors.MESSAGE_LIMIT


def test_a_key_name_only_the_secret_can_hold_says_so() -> None:
    with pytest.raises(ProviderError) as info:
        api_key_for(
            "openai",
            Settings(),
            base_url="https://api.together.test/v1",
            key_name="together",
            key_host="api.together.test",
        )
    assert info.value.kind is ErrorKind.CONFIG
    assert "'together'" in info.value.message and "PROVIDER_SECRETS_ARN" in info.value.message
