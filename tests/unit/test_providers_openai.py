"""The OpenAI provider against a real HTTP server speaking the chat completions API."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from promptrun.providers import ErrorKind, ModelCall, ProviderError, get_provider
from promptrun.providers.errors import ExtractionFailed
from promptrun.providers.openai_provider import OpenAIProvider
from promptrun.settings import Settings
from tests.support.fake_openai import VALID_ENTITIES, FakeOpenAI

KEY = "sk-test-openai-0123456789abcdef"


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as srv:
        yield srv


@pytest.fixture
def server(shared_server: FakeOpenAI) -> FakeOpenAI:
    return shared_server.reset()


@pytest.fixture
def provider() -> OpenAIProvider:
    return OpenAIProvider(Settings(provider_keys={"openai": KEY}))


def make_call(server: FakeOpenAI, timeout: float = 5.0, **params: Any) -> ModelCall:
    # The fake server is a custom base_url, which gets no key unless the model names the key
    # and the host.
    return ModelCall(
        provider_model="gpt-test",
        base_url=server.base_url,
        params={"api_key_name": "openai", "api_key_host": "127.0.0.1", **params},
        timeout_seconds=timeout,
    )


def fail(fn: Any, *args: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        fn(*args)
    return info.value


def test_registry_builds_the_openai_provider() -> None:
    assert isinstance(get_provider("openai", Settings()), OpenAIProvider)


def test_answer_sends_messages_known_params_and_the_key(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    call = make_call(
        server,
        temperature=0.3,
        max_tokens=120,
        top_p=0.9,
        seed=7,
        top_k=40,
        timeout=30,
        simulate_error="server",
        latency_ms=5,
        structured_output=False,
    )
    done = provider.answer(call, "Best CRM?", "Be brief.")

    assert done.text.startswith("For a small business")
    assert (done.input_tokens, done.output_tokens) == (20, 10)
    assert done.response_id is not None and done.response_id.startswith("chatcmpl-fake")
    assert done.finish_reason == "stop"
    request = server.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body = request.body
    assert body["model"] == "gpt-test"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Best CRM?"},
    ]
    assert (body["temperature"], body["max_tokens"], body["top_p"], body["seed"]) == (
        0.3,
        120,
        0.9,
        7,
    )
    assert body["top_k"] == 40  # extra_body, for vLLM / OpenRouter
    for job_key in (
        "timeout",
        "simulate_error",
        "latency_ms",
        "structured_output",
        "api_key_name",
        "api_key_host",
    ):
        assert job_key not in body


def test_answer_without_system_sends_only_the_user_message(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    provider.answer(make_call(server), "Hello", None)
    assert server.bodies[0]["messages"] == [{"role": "user", "content": "Hello"}]


def test_extract_asks_for_the_strict_json_schema(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    result = provider.extract(
        make_call(server, temperature=0.9, max_tokens=50), "Acme CRM and Globex."
    )

    assert [e.name for e in result.entities] == ["Acme CRM", "Globex"]
    assert (result.input_tokens, result.output_tokens) == (20, 10)
    body = server.bodies[0]
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["name"] == "entities"
    schema = fmt["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    item = schema["properties"]["entities"]["items"]
    assert item["additionalProperties"] is False
    assert (
        set(item["required"])
        == set(item["properties"])
        == {"name", "type", "rank", "sentiment", "snippet"}
    )
    assert item["properties"]["snippet"]["type"] == ["string", "null"]
    # Extraction runs cold, with its own room, whatever the answer's params were.
    assert body["temperature"] == 0
    assert body["max_tokens"] == 4096
    assert "Acme CRM and Globex." in body["messages"][-1]["content"]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after-ms": "1500"}, 1.5),
        (
            {
                "x-ratelimit-reset-requests": "6m0s",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-tokens": "2s",
                "x-ratelimit-remaining-tokens": "100",
            },
            360.0,
        ),
        ({}, None),
    ],
)
def test_rate_limit_is_retryable_with_retry_after(
    server: FakeOpenAI, provider: OpenAIProvider, headers: dict[str, str], expected: float | None
) -> None:
    server.push(FakeOpenAI.rate_limited(retry_after=None, headers=headers))
    err = fail(provider.answer, make_call(server), "hi", None)
    assert err.kind is ErrorKind.RATE_LIMIT
    assert err.retryable
    assert err.retry_after == expected
    assert server.request_count == 1  # the SDK itself never retries


def test_retry_after_as_http_date(server: FakeOpenAI, provider: OpenAIProvider) -> None:
    from email.utils import formatdate

    server.push(FakeOpenAI.rate_limited(retry_after=formatdate(time.time() + 30, usegmt=True)))
    err = fail(provider.answer, make_call(server), "hi", None)
    assert err.kind is ErrorKind.RATE_LIMIT
    assert err.retry_after is not None and 25 <= err.retry_after <= 31


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (500, ErrorKind.SERVER),
        (502, ErrorKind.SERVER),
        (503, ErrorKind.SERVER),
        (408, ErrorKind.TIMEOUT),
    ],
)
def test_server_side_errors_are_retryable(
    server: FakeOpenAI, provider: OpenAIProvider, status: int, kind: ErrorKind
) -> None:
    server.push(FakeOpenAI.server_error(status))
    err = fail(provider.answer, make_call(server), "hi", None)
    assert err.kind is kind and err.retryable
    assert server.request_count == 1


@pytest.mark.parametrize(
    ("status", "message", "code", "kind"),
    [
        (400, "Invalid value for 'temperature'", None, ErrorKind.BAD_REQUEST),
        (
            400,
            "This model's maximum context length is 128000 tokens.",
            "context_length_exceeded",
            ErrorKind.CONTEXT_LENGTH,
        ),
        (404, "The model `gpt-nope` does not exist", "model_not_found", ErrorKind.NOT_FOUND),
        (403, "Project does not have access", None, ErrorKind.AUTH),
        (422, "Unprocessable", None, ErrorKind.BAD_REQUEST),
        (429, "You exceeded your current quota", "insufficient_quota", ErrorKind.AUTH),
    ],
)
def test_client_errors_are_permanent(
    server: FakeOpenAI,
    provider: OpenAIProvider,
    status: int,
    message: str,
    code: str | None,
    kind: ErrorKind,
) -> None:
    server.push(FakeOpenAI.error(status, message, code=code))
    err = fail(provider.answer, make_call(server), "hi", None)
    assert err.kind is kind
    assert not err.retryable


def test_auth_error_message_never_carries_the_key(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.push(
        FakeOpenAI.error(
            401,
            f"Incorrect API key provided: {KEY}. Also sk-proj-AbCdEf123456.",
            code="invalid_api_key",
        )
    )
    err = fail(provider.answer, make_call(server), "hi", None)
    assert err.kind is ErrorKind.AUTH
    assert KEY not in err.message and "sk-" not in err.message
    assert "Incorrect API key provided" in err.message
    assert len(err.message) <= 300


def test_slow_answer_times_out_within_the_timeout(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.push(server.slow(10))
    started = time.monotonic()
    err = fail(provider.answer, make_call(server, timeout=0.4), "hi", None)
    elapsed = time.monotonic() - started
    assert err.kind is ErrorKind.TIMEOUT and err.retryable
    assert 0.3 <= elapsed < 1.5
    assert server.request_count == 1


def test_connection_refused_is_a_connection_error(provider: OpenAIProvider) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    call = ModelCall(
        "gpt-test",
        base_url=f"http://127.0.0.1:{port}/v1",
        params={"api_key_name": "openai", "api_key_host": "127.0.0.1"},
        timeout_seconds=2,
    )
    err = fail(provider.answer, call, "hi", None)
    assert err.kind is ErrorKind.CONNECTION and err.retryable


def test_extract_repairs_malformed_json_once_and_sums_tokens(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.push(
        server.malformed_extraction(prompt_tokens=100, completion_tokens=40),
        server.extraction(prompt_tokens=150, completion_tokens=45),
    )
    result = provider.extract(make_call(server), "Acme CRM and Globex.")

    assert [e.rank for e in result.entities] == [1, 2]
    assert (result.input_tokens, result.output_tokens) == (250, 85)
    assert server.request_count == 2
    repair = server.bodies[1]["messages"]
    assert repair[:2] == server.bodies[0]["messages"]
    assert repair[2]["role"] == "assistant" and repair[2]["content"].startswith('{"entities"')
    assert repair[3]["role"] == "user" and "not valid JSON" in repair[3]["content"]
    assert server.bodies[1]["response_format"]["json_schema"]["strict"] is True


def test_extract_repairs_a_schema_violation_once(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.push(server.invalid_extraction(), server.extraction())
    result = provider.extract(make_call(server), "Acme CRM")
    assert len(result.entities) == 2
    assert server.request_count == 2
    assert "rank" in server.bodies[1]["messages"][-1]["content"]


def test_extract_fails_validation_after_one_repair(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.push(server.invalid_extraction(), server.malformed_extraction(), server.extraction())
    err = fail(provider.extract, make_call(server), "Acme CRM")
    assert err.kind is ErrorKind.VALIDATION and not err.retryable
    assert "after one repair" in err.message
    assert server.request_count == 2  # never a second repair
    assert isinstance(err, ExtractionFailed)
    assert (err.input_tokens, err.output_tokens) == (40, 20)


def test_refusal_in_extraction_is_refusal_without_repair(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    server.push(server.refusal("I can't help with that."))
    err = fail(provider.extract, make_call(server), "text")
    assert err.kind is ErrorKind.REFUSAL and not err.retryable
    assert "can't help" in err.message
    assert server.request_count == 1


def test_content_filter_is_refusal(server: FakeOpenAI, provider: OpenAIProvider) -> None:
    server.push(server.content_filtered(), server.content_filtered())
    assert fail(provider.answer, make_call(server), "hi", None).kind is ErrorKind.REFUSAL
    assert fail(provider.extract, make_call(server), "hi").kind is ErrorKind.REFUSAL


def test_structured_output_false_asks_for_json_in_text(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    import json

    fenced = "Here you go:\n```json\n" + json.dumps(VALID_ENTITIES) + "\n```"
    server.push(server.completion("not json at all"), server.completion(fenced))
    result = provider.extract(make_call(server, structured_output=False), "Acme CRM")

    assert [e.name for e in result.entities] == ["Acme CRM", "Globex"]
    first = server.bodies[0]
    assert "response_format" not in first
    assert '"additionalProperties": false' in first["messages"][0]["content"]
    assert server.request_count == 2


def test_missing_key_is_a_config_error_naming_the_variable() -> None:
    call = ModelCall("gpt-test", params={}, timeout_seconds=1)
    err = fail(OpenAIProvider(Settings()).answer, call, "hi", None)
    assert err.kind is ErrorKind.CONFIG
    assert "OPENAI_API_KEY" in err.message


def test_custom_base_url_never_gets_the_openai_key(
    server: FakeOpenAI, provider: OpenAIProvider
) -> None:
    call = ModelCall("llama3", base_url=server.base_url, params={}, timeout_seconds=5)
    provider.answer(call, "hi", None)
    assert server.requests[0].headers["authorization"] == "Bearer unused"


def test_extraction_token_limit_uses_the_name_the_model_takes() -> None:
    from promptrun.providers.openai_provider import extraction_params

    assert extraction_params({"max_tokens": 10})["max_tokens"] == 4096
    assert extraction_params({"max_completion_tokens": 10})["max_completion_tokens"] == 4096
    assert "max_completion_tokens" in extraction_params({})  # OpenAI's reasoning models
    assert "max_tokens" in extraction_params({}, "http://localhost:11434/v1")
    assert extraction_params({"extraction_max_tokens": 900}, "http://x/v1")["max_tokens"] == 900
    assert "temperature" not in extraction_params({})  # a model that takes none gets none
