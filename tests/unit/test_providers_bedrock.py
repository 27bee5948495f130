"""The Bedrock provider: Converse through a botocore Stubber, and real timeouts against a
server that answers too slowly."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from promptrun.providers import ErrorKind, ModelCall, ProviderError, get_provider
from promptrun.providers.bedrock_provider import BedrockProvider, make_client
from promptrun.providers.errors import ExtractionFailed
from promptrun.settings import Settings
from tests.support.fake_openai import INVALID_ENTITIES, VALID_ENTITIES, FakeHTTPServer, Reply

MODEL = "anthropic.claude-test-v1:0"


@pytest.fixture
def client() -> Any:
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url="https://bedrock-runtime.us-east-1.amazonaws.com",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def stub(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def provider(client: Any) -> BedrockProvider:
    return BedrockProvider(Settings(), client=client)


def call(**params: Any) -> ModelCall:
    return ModelCall(provider_model=MODEL, params=params, timeout_seconds=5)


def converse_response(
    content: list[dict[str, Any]], stop: str = "end_turn", tokens: tuple[int, int] = (30, 12)
) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": {"inputTokens": tokens[0], "outputTokens": tokens[1], "totalTokens": sum(tokens)},
        "metrics": {"latencyMs": 120},
        "ResponseMetadata": {"RequestId": "req-1234", "HTTPStatusCode": 200},
    }


def tool_use(data: Any, tool_id: str = "tooluse_1") -> list[dict[str, Any]]:
    return [{"toolUse": {"toolUseId": tool_id, "name": "record_entities", "input": data}}]


def fail(fn: Any, *args: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        fn(*args)
    return info.value


class Contains:
    """Matches a string containing `part` (inside Stubber's expected params)."""

    def __init__(self, part: str) -> None:
        self.part = part

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and self.part in other

    def __repr__(self) -> str:
        return f"Contains({self.part!r})"


def test_registry_builds_the_bedrock_provider() -> None:
    assert isinstance(get_provider("bedrock", Settings()), BedrockProvider)


def test_answer_via_converse(stub: Stubber, provider: BedrockProvider) -> None:
    stub.add_response(
        "converse",
        converse_response([{"text": "Acme CRM "}, {"text": "is good."}]),
        {
            "modelId": MODEL,
            "messages": [{"role": "user", "content": [{"text": "Best CRM?"}]}],
            "system": [{"text": "Be brief."}],
            "inferenceConfig": {"maxTokens": 200, "temperature": 0.5, "topP": 0.9},
            "additionalModelRequestFields": {"top_k": 50},
        },
    )
    done = provider.answer(
        call(max_tokens=200, temperature=0.5, top_p=0.9, top_k=50, timeout=30, latency_ms=1),
        "Best CRM?",
        "Be brief.",
    )
    assert done.text == "Acme CRM is good."
    assert (done.input_tokens, done.output_tokens) == (30, 12)
    assert done.response_id == "req-1234"
    assert done.finish_reason == "end_turn"


def test_extract_forces_the_tool(stub: Stubber, provider: BedrockProvider) -> None:
    stub.add_response(
        "converse",
        converse_response(tool_use(VALID_ENTITIES), stop="tool_use"),
        {
            "modelId": MODEL,
            "messages": [{"role": "user", "content": [{"text": Contains("Acme CRM and Globex.")}]}],
            "system": ANY,
            "inferenceConfig": {"maxTokens": 4096, "temperature": 0.0},
            "toolConfig": {
                "tools": [
                    {
                        "toolSpec": {
                            "name": "record_entities",
                            "description": ANY,
                            "inputSchema": {"json": ANY},
                        }
                    }
                ],
                "toolChoice": {"tool": {"name": "record_entities"}},
            },
        },
    )
    result = provider.extract(call(temperature=0.7), "Acme CRM and Globex.")
    assert [e.name for e in result.entities] == ["Acme CRM", "Globex"]
    assert (result.input_tokens, result.output_tokens) == (30, 12)


def test_extract_sends_the_strict_schema(client: Any, provider: BedrockProvider) -> None:
    seen: list[dict[str, Any]] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        seen.append(params)

    client.meta.events.register("provide-client-params.bedrock-runtime.Converse", capture)
    with Stubber(client) as stubber:
        stubber.add_response(
            "converse", converse_response(tool_use(VALID_ENTITIES), stop="tool_use")
        )
        provider.extract(call(), "Acme CRM")
    schema = seen[0]["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]
    assert schema["additionalProperties"] is False
    item = schema["properties"]["entities"]["items"]
    assert set(item["required"]) == set(item["properties"])


def test_extract_repairs_once_with_an_error_tool_result(
    stub: Stubber, provider: BedrockProvider
) -> None:
    first = tool_use(INVALID_ENTITIES, "tooluse_bad")
    stub.add_response("converse", converse_response(first, stop="tool_use", tokens=(100, 20)))
    stub.add_response(
        "converse",
        converse_response(
            tool_use(VALID_ENTITIES, "tooluse_good"), stop="tool_use", tokens=(140, 25)
        ),
        {
            "modelId": MODEL,
            "messages": [
                {"role": "user", "content": [{"text": ANY}]},
                {"role": "assistant", "content": first},
                {
                    "role": "user",
                    "content": [
                        {
                            "toolResult": {
                                "toolUseId": "tooluse_bad",
                                "content": [{"text": Contains("rank")}],
                                "status": "error",
                            }
                        }
                    ],
                },
            ],
            "system": ANY,
            "inferenceConfig": ANY,
            "toolConfig": ANY,
        },
    )
    result = provider.extract(call(), "Acme CRM")
    assert len(result.entities) == 2
    assert (result.input_tokens, result.output_tokens) == (240, 45)


def test_extract_fails_validation_after_one_repair(
    stub: Stubber, provider: BedrockProvider
) -> None:
    stub.add_response("converse", converse_response(tool_use(INVALID_ENTITIES), stop="tool_use"))
    stub.add_response("converse", converse_response([{"text": "no tool"}]))
    err = fail(provider.extract, call(), "Acme CRM")
    assert err.kind is ErrorKind.VALIDATION
    assert isinstance(err, ExtractionFailed)
    assert (err.input_tokens, err.output_tokens) == (60, 24)


def test_structured_output_false_asks_for_json_in_text(
    stub: Stubber, provider: BedrockProvider
) -> None:
    import json

    stub.add_response(
        "converse",
        converse_response([{"text": json.dumps(VALID_ENTITIES)}]),
        {
            "modelId": MODEL,
            "messages": ANY,
            "system": [{"text": Contains("JSON Schema")}],
            "inferenceConfig": {"maxTokens": 4096},
        },
    )
    assert len(provider.extract(call(structured_output=False), "Acme").entities) == 2


@pytest.mark.parametrize("stop", ["guardrail_intervened", "content_filtered"])
def test_blocked_output_is_refusal(stub: Stubber, provider: BedrockProvider, stop: str) -> None:
    stub.add_response("converse", converse_response([{"text": "blocked"}], stop=stop))
    stub.add_response("converse", converse_response([{"text": "blocked"}], stop=stop))
    assert fail(provider.answer, call(), "hi", None).kind is ErrorKind.REFUSAL
    assert fail(provider.extract, call(), "hi").kind is ErrorKind.REFUSAL


@pytest.mark.parametrize(
    ("code", "status", "message", "kind"),
    [
        ("ThrottlingException", 429, "Too many requests", ErrorKind.RATE_LIMIT),
        ("ServiceUnavailableException", 503, "unavailable", ErrorKind.SERVER),
        ("InternalServerException", 500, "internal", ErrorKind.SERVER),
        ("ModelNotReadyException", 429, "not ready", ErrorKind.SERVER),
        ("ModelTimeoutException", 408, "model timed out", ErrorKind.TIMEOUT),
        ("AccessDeniedException", 403, "no access to the model", ErrorKind.AUTH),
        ("ValidationException", 400, "Malformed input request", ErrorKind.BAD_REQUEST),
        (
            "ValidationException",
            400,
            "Input is too long for requested model.",
            ErrorKind.CONTEXT_LENGTH,
        ),
        ("ResourceNotFoundException", 404, "model not found", ErrorKind.NOT_FOUND),
    ],
)
def test_client_errors_map_to_kinds(
    stub: Stubber, provider: BedrockProvider, code: str, status: int, message: str, kind: ErrorKind
) -> None:
    stub.add_client_error(
        "converse", service_error_code=code, service_message=message, http_status_code=status
    )
    err = fail(provider.answer, call(), "hi", None)
    assert err.kind is kind
    assert code in err.message


def test_make_client_never_retries_and_reads_with_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    made = make_client("eu-west-1", None, 7.5)
    assert made.meta.config.read_timeout == 7.5
    assert made.meta.config.retries["total_max_attempts"] == 1
    assert made.meta.region_name == "eu-west-1"


class SlowServer(FakeHTTPServer):
    def default_reply(self, request: Any) -> Reply:
        return Reply(200, {}, delay=10)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


@pytest.mark.usefixtures("aws_env")
def test_slow_model_times_out_within_the_timeout_without_a_retry() -> None:
    with SlowServer() as server:
        slow_call = ModelCall(
            MODEL, base_url=server.root_url, params={"region": "us-east-1"}, timeout_seconds=0.4
        )
        started = time.monotonic()
        err = fail(BedrockProvider(Settings()).answer, slow_call, "hi", None)
        elapsed = time.monotonic() - started
        assert err.kind is ErrorKind.TIMEOUT and err.retryable
        assert elapsed < 1.5
        assert server.request_count == 1
        assert server.requests[0].path.endswith("/converse")


@pytest.mark.usefixtures("aws_env")
def test_unreachable_endpoint_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = ModelCall(
        MODEL,
        base_url=f"http://127.0.0.1:{port}",
        params={"region": "us-east-1"},
        timeout_seconds=2,
    )
    err = fail(BedrockProvider(Settings()).answer, dead, "hi", None)
    assert err.kind is ErrorKind.CONNECTION and err.retryable


def test_no_region_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    err = fail(
        BedrockProvider(Settings()).answer, ModelCall(MODEL, timeout_seconds=3.3), "hi", None
    )
    assert err.kind is ErrorKind.CONFIG
    assert "AWS_REGION" in err.message
