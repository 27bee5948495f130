"""`anthropic`: Claude through the official SDK's Messages API.

- The SDK never retries (`max_retries=0`); every request carries the call's timeout.
- `max_tokens` defaults to 1024; `temperature`, `top_p` and `top_k` from the catalogue go in
  the body, `stop` as `stop_sequences`.
- Extraction forces one tool, `record_entities`, whose input schema is the strict JSON schema;
  its input is validated with pydantic, repaired once (a `tool_result` with `is_error`
  naming the problem), then VALIDATION. With `structured_output: false` the JSON is asked for
  in text instead. A `refusal` stop reason is REFUSAL.
"""

from __future__ import annotations

from typing import Any

import anthropic

from promptrun.providers import schema
from promptrun.providers.base import Completion, ErrorKind, Extraction, ModelCall, ProviderError
from promptrun.providers.clients import ClientCache
from promptrun.providers.errors import ExtractionFailed, from_anthropic_error, quota_wait
from promptrun.providers.keys import KeyedProvider

DEFAULT_MAX_TOKENS = 1024
DEFAULT_EXTRACTION_MAX_TOKENS = 4096
BODY_PARAMS = ("temperature", "top_p", "top_k")

_CLIENTS = ClientCache(
    lambda base_url, api_key: anthropic.Anthropic(api_key=api_key, base_url=base_url, max_retries=0)
)


def _client(base_url: str | None, api_key: str) -> anthropic.Anthropic:
    return _CLIENTS.get(base_url, api_key)


def answer_params(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"max_tokens": int(params.get("max_tokens") or DEFAULT_MAX_TOKENS)}
    stop = params.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    body = dict(params.get("extra_body") or {})
    body.update({k: params[k] for k in BODY_PARAMS if params.get(k) is not None})
    if body:
        out["extra_body"] = body
    return out


def _usage(resp: Any) -> tuple[int, int]:
    usage = getattr(resp, "usage", None)
    if usage is None:
        return 0, 0
    cached = int(getattr(usage, "cache_creation_input_tokens", 0) or 0) + int(
        getattr(usage, "cache_read_input_tokens", 0) or 0
    )
    return int(usage.input_tokens or 0) + cached, int(usage.output_tokens or 0)


def _text(resp: Any) -> str:
    return "".join(
        getattr(b, "text", "") for b in resp.content if getattr(b, "type", None) == "text"
    )


def _refusal(resp: Any) -> str:
    text = " ".join(_text(resp).split())[:200]
    return "anthropic: the model refused" + (f": {text}" if text else "")


class AnthropicProvider(KeyedProvider):
    name = "anthropic"

    def _create(self, call: ModelCall, **kwargs: Any) -> Any:
        key = self._key(call)
        client = _client(call.base_url, key)
        try:
            return client.messages.create(
                model=call.provider_model, timeout=call.timeout_seconds, **kwargs
            )
        except anthropic.AnthropicError as exc:  # anything else is a bug: the processor logs it
            raise from_anthropic_error(exc, secrets=(key,)) from None

    def _create_with_quota(self, call: ModelCall, **kwargs: Any) -> tuple[Any, float | None]:
        """The response, and how long the quota needs when its headers say it is used up."""
        key = self._key(call)
        client = _client(call.base_url, key)
        try:
            raw = client.messages.with_raw_response.create(
                model=call.provider_model, timeout=call.timeout_seconds, **kwargs
            )
            return raw.parse(), quota_wait(raw.headers)
        except anthropic.AnthropicError as exc:
            raise from_anthropic_error(exc, secrets=(key,)) from None

    def answer(self, call: ModelCall, prompt: str, system: str | None) -> Completion:
        kwargs = answer_params(call.params)
        if system:
            kwargs["system"] = system
        resp, wait = self._create_with_quota(
            call, messages=[{"role": "user", "content": prompt}], **kwargs
        )
        input_tokens, output_tokens = _usage(resp)
        billed = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        if resp.stop_reason == "refusal":
            raise ProviderError(ErrorKind.REFUSAL, _refusal(resp), **billed)
        text = _text(resp)
        if not text.strip():
            raise ProviderError(
                ErrorKind.VALIDATION,
                f"anthropic: empty answer (stop_reason={resp.stop_reason})",
                **billed,
            )
        return Completion(
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            response_id=getattr(resp, "id", None),
            finish_reason=resp.stop_reason,
            quota_wait=wait,
        )

    def extract(self, call: ModelCall, answer: str) -> Extraction:
        structured = call.params.get("structured_output", True) is not False
        kwargs: dict[str, Any] = {
            "max_tokens": int(
                call.params.get("extraction_max_tokens", DEFAULT_EXTRACTION_MAX_TOKENS)
            ),
        }
        if call.params.get("temperature") is not None:
            kwargs["extra_body"] = {"temperature": 0}
        if structured:
            tool: dict[str, Any] = {
                "name": schema.TOOL_NAME,
                "description": schema.TOOL_DESCRIPTION,
                "input_schema": schema.extraction_schema(),
            }
            if call.params.get("strict_tools"):
                tool["strict"] = True
            kwargs["system"] = schema.EXTRACTION_INSTRUCTIONS
            kwargs["tools"] = [tool]
            kwargs["tool_choice"] = {"type": "tool", "name": schema.TOOL_NAME}
        else:
            kwargs["system"] = schema.json_text_instructions()
        messages: list[dict[str, Any]] = [{"role": "user", "content": schema.user_message(answer)}]
        input_tokens = output_tokens = 0
        error = ""
        for round_no in (1, 2):
            resp = self._create(call, messages=messages, **kwargs)
            used_in, used_out = _usage(resp)
            input_tokens += used_in
            output_tokens += used_out
            if resp.stop_reason == "refusal":
                raise ExtractionFailed(
                    ErrorKind.REFUSAL, _refusal(resp), input_tokens, output_tokens
                )
            tool_use = next(
                (b for b in resp.content if getattr(b, "type", None) == "tool_use"), None
            )
            try:
                if not structured:
                    result = schema.parse_result_text(_text(resp))
                elif tool_use is None or tool_use.name != schema.TOOL_NAME:
                    raise schema.InvalidOutput(f"expected a call of the {schema.TOOL_NAME} tool")
                else:
                    result = schema.validate_result(tool_use.input)
            except schema.InvalidOutput as exc:
                error = str(exc)
                if resp.stop_reason == "max_tokens":
                    error += " (the output was cut off at max_tokens)"
                if round_no == 1:
                    messages.extend(self._repair_turn(resp, tool_use, error))
                continue
            return Extraction(
                entities=result.entities, input_tokens=input_tokens, output_tokens=output_tokens
            )
        raise ExtractionFailed(
            ErrorKind.VALIDATION,
            f"anthropic: invalid structured output after one repair: {error}"[:400],
            input_tokens,
            output_tokens,
        )

    @staticmethod
    def _repair_turn(resp: Any, tool_use: Any, error: str) -> list[dict[str, Any]]:
        """The assistant's turn as sent, then the user's turn naming what was wrong."""
        assistant = [block.model_dump(exclude_none=True) for block in resp.content]
        if not assistant:
            assistant = [{"type": "text", "text": "(no output)"}]
        if tool_use is not None:
            reply: list[dict[str, Any]] = [
                {
                    "type": "tool_result",
                    "tool_use_id": tool_use.id,
                    "is_error": True,
                    "content": schema.repair_message(error),
                }
            ]
            # Any other tool calls in the turn need a result too.
            for block in resp.content:
                if getattr(block, "type", None) == "tool_use" and block.id != tool_use.id:
                    reply.append(
                        {"type": "tool_result", "tool_use_id": block.id, "content": "ignored"}
                    )
            return [{"role": "assistant", "content": assistant}, {"role": "user", "content": reply}]
        return [
            {"role": "assistant", "content": assistant},
            {"role": "user", "content": schema.repair_message(error)},
        ]
