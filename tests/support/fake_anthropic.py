"""A real HTTP server that speaks Anthropic's Messages API well enough for the official SDK.

`POST /v1/messages`; `base_url` is the server root. By default a request with `tools` gets a
`tool_use` of the first tool with valid entities, a request asking for JSON in its system
prompt gets the JSON as text, and any other request gets a text answer. Faults: 429 with
Retry-After, 500, 529 overloaded, 401, a slow answer, invalid tool input, a refusal.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.support.fake_openai import (
    DEFAULT_ANSWER,
    INVALID_ENTITIES,
    VALID_ENTITIES,
    FakeHTTPServer,
    Received,
    Reply,
)

__all__ = ["INVALID_ENTITIES", "VALID_ENTITIES", "FakeAnthropic", "Received", "Reply"]


def anthropic_error_body(etype: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": etype, "message": message}}


class FakeAnthropic(FakeHTTPServer):
    @property
    def base_url(self) -> str:
        return self.root_url

    def default_reply(self, request: Received) -> Reply:
        if request.method != "POST" or not request.path.startswith("/v1/messages"):
            return self.error(404, "not_found_error", f"no route for {request.path}")
        body = request.body if isinstance(request.body, dict) else {}
        tools = body.get("tools") or []
        if tools:
            return self.tool_use(VALID_ENTITIES, name=tools[0]["name"])
        if "JSON" in str(body.get("system", "")):
            return self.message(json.dumps(VALID_ENTITIES))
        return self.message(DEFAULT_ANSWER)

    # -- reply builders ----------------------------------------------------------------------

    def _message(
        self,
        content: list[dict[str, Any]],
        stop_reason: str,
        input_tokens: int,
        output_tokens: int,
        delay: float,
    ) -> Reply:
        body = {
            "id": self.next_id("msg_fake"),
            "type": "message",
            "role": "assistant",
            "model": "claude-fake",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
        return Reply(200, body, delay=delay)

    def message(
        self,
        text: str,
        *,
        stop_reason: str = "end_turn",
        input_tokens: int = 25,
        output_tokens: int = 12,
        delay: float = 0.0,
    ) -> Reply:
        return self._message(
            [{"type": "text", "text": text}], stop_reason, input_tokens, output_tokens, delay
        )

    def tool_use(
        self,
        tool_input: Any,
        *,
        name: str = "record_entities",
        input_tokens: int = 30,
        output_tokens: int = 15,
        delay: float = 0.0,
    ) -> Reply:
        block = {
            "type": "tool_use",
            "id": self.next_id("toolu_fake"),
            "name": name,
            "input": tool_input,
        }
        return self._message([block], "tool_use", input_tokens, output_tokens, delay)

    def invalid_tool_use(self, **kwargs: Any) -> Reply:
        """Tool input that fails the schema (rank 0)."""
        return self.tool_use(INVALID_ENTITIES, **kwargs)

    def malformed_tool_use(self, **kwargs: Any) -> Reply:
        """Tool input of the wrong shape: `entities` is a string."""
        return self.tool_use({"entities": "Acme CRM, Globex"}, **kwargs)

    def refusal(self, text: str = "") -> Reply:
        content = [{"type": "text", "text": text}] if text else []
        return self._message(content, "refusal", 10, 0, 0.0)

    @staticmethod
    def error(
        status: int, etype: str, message: str, headers: dict[str, str] | None = None
    ) -> Reply:
        h = {"request-id": "req_fake", **(headers or {})}
        return Reply(status, anthropic_error_body(etype, message), headers=h)

    @classmethod
    def rate_limited(
        cls, retry_after: str | None = "3", headers: dict[str, str] | None = None
    ) -> Reply:
        h = dict(headers or {})
        if retry_after is not None:
            h["retry-after"] = retry_after
        return cls.error(
            429, "rate_limit_error", "Number of request tokens has exceeded your rate limit.", h
        )

    @classmethod
    def overloaded(cls) -> Reply:
        return cls.error(529, "overloaded_error", "Overloaded")

    @classmethod
    def server_error(cls) -> Reply:
        return cls.error(500, "api_error", "Internal server error")

    @classmethod
    def unauthorized(cls, echo_key: bool = False) -> Callable[[Received], Reply]:
        """401 authentication_error; with `echo_key` the message repeats the presented key."""

        def reply(request: Received) -> Reply:
            # SDK versions differ in the header they put the key in.
            presented = request.headers.get("x-api-key") or request.headers.get(
                "authorization", ""
            ).removeprefix("Bearer ")
            shown = presented if echo_key else "***"
            return cls.error(401, "authentication_error", f"invalid x-api-key: {shown}")

        return reply

    def slow(self, delay: float) -> Reply:
        return self.message(DEFAULT_ANSWER, delay=delay)
