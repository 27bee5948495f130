"""`bedrock`: Amazon Bedrock through boto3's `bedrock-runtime` Converse API.

- AWS credentials come from the function's role; there is no API key.
- The client is created on first use, one per (region, endpoint, timeout), with botocore's
  retries off (`total_max_attempts=1`: the job retries) and `read_timeout` = the call's timeout.
- Catalogue params: max_tokens, temperature, top_p, stop go in `inferenceConfig`; `top_k` and
  an `additional_model_request_fields` dict go in `additionalModelRequestFields`; `region`
  picks the Region. A model's `base_url` is used as the endpoint URL.
- Extraction forces one tool, `record_entities` (toolChoice tool), validates its input with
  pydantic, repairs once (a `toolResult` with status error), then VALIDATION. With
  `structured_output: false` (models without tool choice) the JSON is asked for in text.
- Stop reasons `guardrail_intervened` and `content_filtered` are REFUSAL.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from promptrun.providers import schema
from promptrun.providers.base import Completion, ErrorKind, Extraction, ModelCall, ProviderError
from promptrun.providers.errors import ExtractionFailed, from_botocore_error
from promptrun.settings import Settings

DEFAULT_EXTRACTION_MAX_TOKENS = 4096
REFUSAL_STOPS = {"guardrail_intervened", "content_filtered"}

_CLIENTS: OrderedDict[tuple[str | None, str | None, float], Any] = OrderedDict()
_CLIENTS_LOCK = threading.Lock()
_MAX_CLIENTS = 16


def make_client(region: str | None, endpoint_url: str | None, timeout: float) -> Any:
    """A bedrock-runtime client that never retries and waits at most `timeout` per read."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        read_timeout=timeout,
        connect_timeout=min(timeout, 10.0),
    )
    return boto3.client(
        "bedrock-runtime", region_name=region, endpoint_url=endpoint_url, config=config
    )


def _cached_client(region: str | None, endpoint_url: str | None, timeout: float) -> Any:
    key = (region, endpoint_url, round(timeout, 1))
    with _CLIENTS_LOCK:  # boto3's default session is not safe to create clients from concurrently
        client = _CLIENTS.get(key)
        if client is None:
            client = make_client(region, endpoint_url, key[2])
            _CLIENTS[key] = client
            while len(_CLIENTS) > _MAX_CLIENTS:
                _CLIENTS.popitem(last=False)
        else:
            _CLIENTS.move_to_end(key)
        return client


def inference_config(params: dict[str, Any]) -> dict[str, Any]:
    """The answer's inferenceConfig from the catalogue's params."""
    config: dict[str, Any] = {}
    if params.get("max_tokens") is not None:
        config["maxTokens"] = int(params["max_tokens"])
    if params.get("temperature") is not None:
        config["temperature"] = float(params["temperature"])
    if params.get("top_p") is not None:
        config["topP"] = float(params["top_p"])
    stop = params.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    return config


def extraction_inference_config(params: dict[str, Any]) -> dict[str, Any]:
    """Extraction runs cold (temperature 0 where the model takes one) with room for the list."""
    limit = int(params.get("extraction_max_tokens", DEFAULT_EXTRACTION_MAX_TOKENS))
    config: dict[str, Any] = {"maxTokens": limit}
    if params.get("temperature") is not None:
        config["temperature"] = 0.0
    return config


def _usage(resp: dict[str, Any]) -> tuple[int, int]:
    usage = resp.get("usage") or {}
    return int(usage.get("inputTokens") or 0), int(usage.get("outputTokens") or 0)


def _content(resp: dict[str, Any]) -> list[dict[str, Any]]:
    return list(((resp.get("output") or {}).get("message") or {}).get("content") or [])


def _text(resp: dict[str, Any]) -> str:
    return "".join(block.get("text", "") for block in _content(resp) if "text" in block)


class BedrockProvider:
    name = "bedrock"

    def __init__(self, settings: Settings | None = None, client: Any | None = None) -> None:
        self.settings = settings
        self._client = client

    def _client_for(self, call: ModelCall) -> Any:
        if self._client is not None:
            return self._client
        from botocore.exceptions import BotoCoreError

        try:
            return _cached_client(call.params.get("region"), call.base_url, call.timeout_seconds)
        except BotoCoreError as exc:  # no region, bad endpoint URL, ...
            raise from_botocore_error(exc) from None

    def _converse(self, call: ModelCall, **kwargs: Any) -> dict[str, Any]:
        client = self._client_for(call)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp: dict[str, Any] = client.converse(modelId=call.provider_model, **kwargs)
        except (BotoCoreError, ClientError) as exc:  # anything else is a bug: the processor logs it
            raise from_botocore_error(exc) from None
        return resp

    def answer(self, call: ModelCall, prompt: str, system: str | None) -> Completion:
        kwargs: dict[str, Any] = {"messages": [{"role": "user", "content": [{"text": prompt}]}]}
        if system:
            kwargs["system"] = [{"text": system}]
        config = inference_config(call.params)
        if config:
            kwargs["inferenceConfig"] = config
        extra = dict(call.params.get("additional_model_request_fields") or {})
        if call.params.get("top_k") is not None:
            extra["top_k"] = call.params["top_k"]
        if extra:
            kwargs["additionalModelRequestFields"] = extra
        resp = self._converse(call, **kwargs)
        stop = resp.get("stopReason")
        input_tokens, output_tokens = _usage(resp)
        billed = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        if stop in REFUSAL_STOPS:
            raise ProviderError(
                ErrorKind.REFUSAL, f"bedrock: the answer was blocked (stopReason={stop})", **billed
            )
        text = _text(resp)
        if not text.strip():
            raise ProviderError(
                ErrorKind.VALIDATION, f"bedrock: empty answer (stopReason={stop})", **billed
            )
        return Completion(
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            response_id=(resp.get("ResponseMetadata") or {}).get("RequestId"),
            finish_reason=stop,
        )

    def extract(self, call: ModelCall, answer: str) -> Extraction:
        structured = call.params.get("structured_output", True) is not False
        kwargs: dict[str, Any] = {"inferenceConfig": extraction_inference_config(call.params)}
        if structured:
            kwargs["system"] = [{"text": schema.EXTRACTION_INSTRUCTIONS}]
            kwargs["toolConfig"] = {
                "tools": [
                    {
                        "toolSpec": {
                            "name": schema.TOOL_NAME,
                            "description": schema.TOOL_DESCRIPTION,
                            "inputSchema": {"json": schema.extraction_schema()},
                        }
                    }
                ],
                "toolChoice": {"tool": {"name": schema.TOOL_NAME}},
            }
        else:
            kwargs["system"] = [{"text": schema.json_text_instructions()}]
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"text": schema.user_message(answer)}]}
        ]
        input_tokens = output_tokens = 0
        error = ""
        for round_no in (1, 2):
            resp = self._converse(call, messages=messages, **kwargs)
            used_in, used_out = _usage(resp)
            input_tokens += used_in
            output_tokens += used_out
            stop = resp.get("stopReason")
            if stop in REFUSAL_STOPS:
                raise ExtractionFailed(
                    ErrorKind.REFUSAL,
                    f"bedrock: the extraction was blocked (stopReason={stop})",
                    input_tokens,
                    output_tokens,
                )
            tool_use = next((b["toolUse"] for b in _content(resp) if "toolUse" in b), None)
            try:
                if not structured:
                    result = schema.parse_result_text(_text(resp))
                elif tool_use is None or tool_use.get("name") != schema.TOOL_NAME:
                    raise schema.InvalidOutput(f"expected a call of the {schema.TOOL_NAME} tool")
                else:
                    result = schema.validate_result(tool_use.get("input"))
            except schema.InvalidOutput as exc:
                error = str(exc)
                if stop == "max_tokens":
                    error += " (the output was cut off at maxTokens)"
                if round_no == 1:
                    messages.extend(_repair_turn(resp, tool_use, error))
                continue
            return Extraction(
                entities=result.entities, input_tokens=input_tokens, output_tokens=output_tokens
            )
        raise ExtractionFailed(
            ErrorKind.VALIDATION,
            f"bedrock: invalid structured output after one repair: {error}"[:400],
            input_tokens,
            output_tokens,
        )


def _repair_turn(
    resp: dict[str, Any], tool_use: dict[str, Any] | None, error: str
) -> list[dict[str, Any]]:
    content = _content(resp) or [{"text": "(no output)"}]
    assistant = {"role": "assistant", "content": content}
    if tool_use is not None:
        results = [
            {
                "toolResult": {
                    "toolUseId": block["toolUse"]["toolUseId"],
                    "content": [
                        {
                            "text": schema.repair_message(error)
                            if block["toolUse"]["toolUseId"] == tool_use["toolUseId"]
                            else "ignored"
                        }
                    ],
                    "status": "error",
                }
            }
            for block in content
            if "toolUse" in block
        ]
        return [assistant, {"role": "user", "content": results}]
    return [assistant, {"role": "user", "content": [{"text": schema.repair_message(error)}]}]
