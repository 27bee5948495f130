"""The Anthropic provider against a real HTTP server speaking the Messages API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from promptrun.providers import ErrorKind, ModelCall, ProviderError, get_provider
from promptrun.providers.anthropic_provider import AnthropicProvider
from promptrun.providers.errors import ExtractionFailed
from promptrun.settings import Settings
from tests.support.fake_anthropic import VALID_ENTITIES, FakeAnthropic

KEY = "sk-ant-test-0123456789abcdefghij"


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as srv:
        yield srv


@pytest.fixture
def server(shared_server: FakeAnthropic) -> FakeAnthropic:
    return shared_server.reset()


@pytest.fixture
def provider() -> AnthropicProvider:
    return AnthropicProvider(Settings(provider_keys={"anthropic": KEY}))


def make_call(server: FakeAnthropic, timeout: float = 5.0, **params: Any) -> ModelCall:
    return ModelCall(
        provider_model="claude-test",
        base_url=server.base_url,
        params={"api_key_name": "anthropic", "api_key_host": "127.0.0.1", **params},
        timeout_seconds=timeout,
    )


def fail(fn: Any, *args: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        fn(*args)
    return info.value


def test_registry_builds_the_anthropic_provider() -> None:
    assert isinstance(get_provider("anthropic", Settings()), AnthropicProvider)


def test_answer_sends_system_default_max_tokens_and_the_key(
    server: FakeAnthropic, provider: AnthropicProvider
) -> None:
    done = provider.answer(
        make_call(server, temperature=0.2, timeout=9, latency_ms=3), "Best CRM?", "Be brief."
    )

    assert done.text.startswith("For a small business")
    assert (done.input_tokens, done.output_tokens) == (25, 12)
    assert done.response_id is not None and done.response_id.startswith("msg_fake")
    assert done.finish_reason == "end_turn"
    request = server.requests[0]
    assert request.path == "/v1/messages"
    # SDK versions differ in the header they put the key in.
    assert KEY in (
        request.headers.get("x-api-key"),
        request.headers.get("authorization", "").removeprefix("Bearer "),
    )
    body = request.body
    assert body["model"] == "claude-test"
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": "Best CRM?"}]
    assert body["max_tokens"] == 1024
    assert body["temperature"] == 0.2
    for job_key in ("timeout", "latency_ms", "api_key_name"):
        assert job_key not in body


def test_answer_uses_the_catalogue_max_tokens_and_no_system(
    server: FakeAnthropic, provider: AnthropicProvider
) -> None:
    provider.answer(make_call(server, max_tokens=300, stop=["END"]), "Hi", None)
    body = server.bodies[0]
    assert body["max_tokens"] == 300
    assert body["stop_sequences"] == ["END"]
    assert "system" not in body


def test_extract_forces_the_record_entities_tool(
    server: FakeAnthropic, provider: AnthropicProvider
) -> None:
    result = provider.extract(make_call(server), "Acme CRM and Globex.")

    assert [e.name for e in result.entities] == ["Acme CRM", "Globex"]
    assert (result.input_tokens, result.output_tokens) == (30, 15)
    body = server.bodies[0]
    assert body["tool_choice"] == {"type": "tool", "name": "record_entities"}
    [tool] = body["tools"]
    assert tool["name"] == "record_entities"
    item = tool["input_schema"]["properties"]["entities"]["items"]
    assert item["additionalProperties"] is False
    assert set(item["required"]) == {"name", "type", "rank", "sentiment", "snippet"}
    assert "Acme CRM and Globex." in body["messages"][0]["content"]


def test_extract_repairs_invalid_tool_input_once_with_a_tool_result(
    server: FakeAnthropic, provider: AnthropicProvider
) -> None:
    server.push(
        server.invalid_tool_use(input_tokens=100, output_tokens=30), server.tool_use(VALID_ENTITIES)
    )
    result = provider.extract(make_call(server), "Acme CRM")

    assert len(result.entities) == 2
    assert (result.input_tokens, result.output_tokens) == (130, 45)
    assert server.request_count == 2
    messages = server.bodies[1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    [tool_use] = messages[1]["content"]
    assert tool_use["type"] == "tool_use" and tool_use["input"]["entities"][0]["rank"] == 0
    [result_block] = messages[2]["content"]
    assert result_block["type"] == "tool_result"
    assert result_block["tool_use_id"] == tool_use["id"]
    assert result_block["is_error"] is True
    assert "rank" in result_block["content"]
    assert server.bodies[1]["tool_choice"] == {"type": "tool", "name": "record_entities"}


def test_extract_fails_validation_after_one_repair(
    server: FakeAnthropic, provider: AnthropicProvider
) -> None:
    server.push(
        server.malformed_tool_use(), server.invalid_tool_use(), server.tool_use(VALID_ENTITIES)
    )
    err = fail(provider.extract, make_call(server), "Acme CRM")
    assert err.kind is ErrorKind.VALIDATION and not err.retryable
    assert server.request_count == 2
    assert isinstance(err, ExtractionFailed)
    assert (err.input_tokens, err.output_tokens) == (60, 30)


def test_extract_without_a_tool_call_is_repaired(
    server: FakeAnthropic, provider: AnthropicProvider
) -> None:
    server.push(
        server.message("I think they are Acme and Globex."), server.tool_use(VALID_ENTITIES)
    )
    result = provider.extract(make_call(server), "Acme CRM")
    assert len(result.entities) == 2
    last = server.bodies[1]["messages"][-1]
    assert last["role"] == "user" and "record_entities" in last["content"]


def test_structured_output_false_asks_for_json_in_text(
    server: FakeAnthropic, provider: AnthropicProvider
) -> None:
    server.push(server.message("{broken"), server.message(json.dumps(VALID_ENTITIES)))
    result = provider.extract(make_call(server, structured_output=False), "Acme CRM")
    assert len(result.entities) == 2
    assert "tools" not in server.bodies[0]
    assert "JSON Schema" in server.bodies[0]["system"]
    assert server.request_count == 2


def test_refusal_stop_reason_is_refusal(server: FakeAnthropic, provider: AnthropicProvider) -> None:
    server.push(server.refusal(), server.refusal("No."))
    assert fail(provider.answer, make_call(server), "hi", None).kind is ErrorKind.REFUSAL
    err = fail(provider.extract, make_call(server), "hi")
    assert err.kind is ErrorKind.REFUSAL and not err.retryable
    assert server.request_count == 2  # no repair after a refusal


def test_rate_limit_with_retry_after(server: FakeAnthropic, provider: AnthropicProvider) -> None:
    server.push(FakeAnthropic.rate_limited(retry_after="3"))
    err = fail(provider.answer, make_call(server), "hi", None)
    assert err.kind is ErrorKind.RATE_LIMIT and err.retryable
    assert err.retry_after == 3.0
    assert server.request_count == 1


def test_rate_limit_reset_headers_when_no_retry_after(
    server: FakeAnthropic, provider: AnthropicProvider
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=20)
    later = datetime.now(UTC) + timedelta(seconds=50)
    server.push(
        FakeAnthropic.rate_limited(
            retry_after=None,
            headers={
                "anthropic-ratelimit-requests-remaining": "10",
                "anthropic-ratelimit-requests-reset": soon.isoformat().replace("+00:00", "Z"),
                "anthropic-ratelimit-tokens-remaining": "0",
                "anthropic-ratelimit-tokens-reset": later.isoformat().replace("+00:00", "Z"),
            },
        )
    )
    err = fail(provider.answer, make_call(server), "hi", None)
    assert err.kind is ErrorKind.RATE_LIMIT
    assert err.retry_after is not None and 45 <= err.retry_after <= 51  # the exhausted bucket


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (FakeAnthropic.overloaded(), ErrorKind.OVERLOADED),
        (FakeAnthropic.server_error(), ErrorKind.SERVER),
        (FakeAnthropic.error(503, "api_error", "unavailable"), ErrorKind.SERVER),
        (FakeAnthropic.error(408, "timeout_error", "Request timed out"), ErrorKind.TIMEOUT),
    ],
)
def test_retryable_server_errors(
    server: FakeAnthropic, provider: AnthropicProvider, reply: Any, kind: ErrorKind
) -> None:
    server.push(reply)
    err = fail(provider.answer, make_call(server), "hi", None)
    assert err.kind is kind and err.retryable
    assert server.request_count == 1


@pytest.mark.parametrize(
    ("status", "etype", "message", "kind"),
    [
        (
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
            ErrorKind.CONTEXT_LENGTH,
        ),
        (400, "invalid_request_error", "temperature: must be at most 1", ErrorKind.BAD_REQUEST),
        (401, "authentication_error", "invalid x-api-key", ErrorKind.AUTH),
        (403, "permission_error", "no access", ErrorKind.AUTH),
        (404, "not_found_error", "model: claude-nope", ErrorKind.NOT_FOUND),
        (
            413,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes",
            ErrorKind.CONTEXT_LENGTH,
        ),
    ],
)
def test_permanent_client_errors(
    server: FakeAnthropic,
    provider: AnthropicProvider,
    status: int,
    etype: str,
    message: str,
    kind: ErrorKind,
) -> None:
    server.push(FakeAnthropic.error(status, etype, message))
    err = fail(provider.answer, make_call(server), "hi", None)
    assert err.kind is kind and not err.retryable


def test_auth_error_never_carries_the_key(
    server: FakeAnthropic, provider: AnthropicProvider
) -> None:
    server.push(FakeAnthropic.error(401, "authentication_error", f"invalid x-api-key {KEY}"))
    err = fail(provider.answer, make_call(server), "hi", None)
    assert err.kind is ErrorKind.AUTH
    assert KEY not in err.message and "sk-ant" not in err.message


def test_slow_answer_times_out_within_the_timeout(
    server: FakeAnthropic, provider: AnthropicProvider
) -> None:
    server.push(server.slow(10))
    started = time.monotonic()
    err = fail(provider.answer, make_call(server, timeout=0.4), "hi", None)
    elapsed = time.monotonic() - started
    assert err.kind is ErrorKind.TIMEOUT and err.retryable
    assert 0.3 <= elapsed < 1.5
    assert server.request_count == 1


def test_missing_key_is_a_config_error_naming_the_variable() -> None:
    err = fail(
        AnthropicProvider(Settings()).answer,
        ModelCall("claude-test", timeout_seconds=1),
        "hi",
        None,
    )
    assert err.kind is ErrorKind.CONFIG
    assert "ANTHROPIC_API_KEY" in err.message
