"""`openai`: OpenAI and any OpenAI-compatible endpoint (OpenRouter, vLLM, Ollama) through the
official SDK's chat completions.

- The SDK never retries (`max_retries=0`): retries belong to the job, with backoff.
- Every request carries the call's timeout.
- Catalogue params the API knows pass through (temperature, max_tokens, top_p, seed, ...);
  `top_k`, `min_p`, `repetition_penalty` and an `extra_body` dict go in the body for the
  servers that take them. Job-level keys (timeout, simulate_*, ...) are never sent.
- Extraction uses structured outputs (`json_schema`, strict). With `structured_output: false`
  the JSON is asked for in text. Invalid output gets one repair round, then VALIDATION.
"""

from __future__ import annotations

from typing import Any

import openai

from promptrun.providers import schema
from promptrun.providers.base import Completion, ErrorKind, Extraction, ModelCall, ProviderError
from promptrun.providers.clients import ClientCache
from promptrun.providers.errors import ExtractionFailed, from_openai_error, quota_wait
from promptrun.providers.keys import KeyedProvider

# Params sent to the API as they are in the catalogue.
ANSWER_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "stop",
    "logit_bias",
    "reasoning_effort",
    "service_tier",
    "verbosity",
)
# Params that OpenAI-compatible servers (vLLM, OpenRouter, Ollama) accept in the body.
EXTRA_BODY_PARAMS = ("top_k", "min_p", "repetition_penalty")
DEFAULT_EXTRACTION_MAX_TOKENS = 4096

_CLIENTS = ClientCache(
    lambda base_url, api_key: openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0)
)


def _client(base_url: str | None, api_key: str) -> openai.OpenAI:
    return _CLIENTS.get(base_url, api_key)


def answer_params(params: dict[str, Any]) -> dict[str, Any]:
    """The request arguments the catalogue's params give an answer call."""
    out: dict[str, Any] = {k: params[k] for k in ANSWER_PARAMS if params.get(k) is not None}
    extra = dict(params.get("extra_body") or {})
    extra.update({k: params[k] for k in EXTRA_BODY_PARAMS if params.get(k) is not None})
    if extra:
        out["extra_body"] = extra
    return out


def extraction_params(params: dict[str, Any], base_url: str | None = None) -> dict[str, Any]:
    """Extraction runs cold (temperature 0 where the model takes a temperature) with room for
    the whole list, whatever the answer's own max_tokens is. The limit goes under the name the
    catalogue uses; with neither, OpenAI's own API gets `max_completion_tokens` (its reasoning
    models refuse `max_tokens`) and other servers the widely known `max_tokens`."""
    out: dict[str, Any] = {}
    if params.get("temperature") is not None:
        out["temperature"] = 0
    for key in ("seed", "reasoning_effort", "service_tier"):
        if params.get(key) is not None:
            out[key] = params[key]
    if "max_completion_tokens" in params:
        limit_key = "max_completion_tokens"
    elif "max_tokens" in params or base_url:
        limit_key = "max_tokens"
    else:
        limit_key = "max_completion_tokens"
    out[limit_key] = int(params.get("extraction_max_tokens", DEFAULT_EXTRACTION_MAX_TOKENS))
    if params.get("extra_body"):
        out["extra_body"] = dict(params["extra_body"])
    return out


class OpenAIProvider(KeyedProvider):
    name = "openai"

    def _create(self, call: ModelCall, **kwargs: Any) -> Any:
        key = self._key(call)
        client = _client(call.base_url, key)
        try:
            return client.chat.completions.create(
                model=call.provider_model, timeout=call.timeout_seconds, **kwargs
            )
        except openai.OpenAIError as exc:  # anything else is a bug: the processor logs it
            raise from_openai_error(exc, secrets=(key,)) from None

    @staticmethod
    def _choice(resp: Any) -> Any:
        if not getattr(resp, "choices", None):
            raise ProviderError(ErrorKind.SERVER, "openai: the response had no choices")
        return resp.choices[0]

    @staticmethod
    def _usage(resp: Any) -> tuple[int, int]:
        usage = getattr(resp, "usage", None)
        if usage is None:
            return 0, 0
        return int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)

    def _create_with_quota(self, call: ModelCall, **kwargs: Any) -> tuple[Any, float | None]:
        """The response, and how long the quota needs when its headers say it is used up."""
        key = self._key(call)
        client = _client(call.base_url, key)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=call.provider_model, timeout=call.timeout_seconds, **kwargs
            )
            return raw.parse(), quota_wait(raw.headers)
        except openai.OpenAIError as exc:
            raise from_openai_error(exc, secrets=(key,)) from None

    def answer(self, call: ModelCall, prompt: str, system: str | None) -> Completion:
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        resp, wait = self._create_with_quota(call, messages=messages, **answer_params(call.params))
        choice = self._choice(resp)
        input_tokens, output_tokens = self._usage(resp)
        billed = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        if choice.message.refusal or choice.finish_reason == "content_filter":
            raise ProviderError(ErrorKind.REFUSAL, _refusal_message(choice), **billed)
        text = choice.message.content or ""
        if not text.strip():
            raise ProviderError(
                ErrorKind.VALIDATION,
                f"openai: empty answer (finish_reason={choice.finish_reason})",
                **billed,
            )
        return Completion(
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            response_id=getattr(resp, "id", None),
            finish_reason=choice.finish_reason,
            quota_wait=wait,
        )

    def extract(self, call: ModelCall, answer: str) -> Extraction:
        structured = call.params.get("structured_output", True) is not False
        system = schema.EXTRACTION_INSTRUCTIONS if structured else schema.json_text_instructions()
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": system},
            {"role": "user", "content": schema.user_message(answer)},
        ]
        kwargs = extraction_params(call.params, call.base_url)
        if structured:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": schema.SCHEMA_NAME,
                    "strict": True,
                    "schema": schema.extraction_schema(),
                },
            }
        elif call.params.get("json_mode"):
            kwargs["response_format"] = {"type": "json_object"}
        input_tokens = output_tokens = 0
        error = ""
        for round_no in (1, 2):
            resp = self._create(call, messages=messages, **kwargs)
            used_in, used_out = self._usage(resp)
            input_tokens += used_in
            output_tokens += used_out
            choice = self._choice(resp)
            if choice.message.refusal or choice.finish_reason == "content_filter":
                raise ExtractionFailed(
                    ErrorKind.REFUSAL, _refusal_message(choice), input_tokens, output_tokens
                )
            content = choice.message.content
            try:
                result = schema.parse_result_text(content)
            except schema.InvalidOutput as exc:
                error = str(exc)
                if choice.finish_reason == "length":
                    error += " (the output was cut off at the token limit)"
                if round_no == 1:
                    messages.append({"role": "assistant", "content": content or ""})
                    messages.append({"role": "user", "content": schema.repair_message(error)})
                continue
            return Extraction(
                entities=result.entities, input_tokens=input_tokens, output_tokens=output_tokens
            )
        raise ExtractionFailed(
            ErrorKind.VALIDATION,
            f"openai: invalid structured output after one repair: {error}"[:400],
            input_tokens,
            output_tokens,
        )


def _refusal_message(choice: Any) -> str:
    refusal = getattr(choice.message, "refusal", None)
    if refusal:
        return f"openai: the model refused: {' '.join(str(refusal).split())[:200]}"
    return f"openai: the answer was stopped (finish_reason={choice.finish_reason})"
