"""A real HTTP server that speaks OpenAI's chat completions well enough for the official SDK.

Tests script the replies (`push`), in order; once the script is used up, every request gets a
sensible default (an answer, or a valid extraction when the request asks for JSON). Faults are
replies too: `rate_limited`, `server_error`, `slow`, `malformed_extraction`, `refusal`, ...
The server records every request (`requests`, `bodies`, `request_count`) so tests can count
model calls and inspect what the SDK sent, and tracks how many requests it is answering at once
(`in_flight`, `peak_in_flight`). `default_delay` makes every unscripted reply slow.

`FakeHTTPServer` is the shared machinery (fake_anthropic builds on it): ThreadingHTTPServer on
127.0.0.1 and a free port, in a daemon thread; `with FakeOpenAI() as server: ...`, or one
server per module with `reset()` between tests (SDK clients are cached per base URL).
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

VALID_ENTITIES: dict[str, Any] = {
    "entities": [
        {
            "name": "Acme CRM",
            "type": "product",
            "rank": 1,
            "sentiment": "positive",
            "snippet": "Acme CRM is great",
        },
        {"name": "Globex", "type": "brand", "rank": 2, "sentiment": None, "snippet": None},
    ]
}
# Valid JSON, but rank 0 breaks the schema (rank >= 1).
INVALID_ENTITIES: dict[str, Any] = {
    "entities": [
        {"name": "Acme CRM", "type": "product", "rank": 0, "sentiment": None, "snippet": None}
    ]
}
DEFAULT_ANSWER = "For a small business, **Acme CRM** is a strong pick, and Globex is fine."


@dataclass
class Reply:
    """One scripted HTTP answer. `body`: a dict (sent as JSON), str or bytes (sent raw)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a slow model)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw text when it is not JSON


class FakeHTTPServer:
    """Scripted replies, recorded requests, started and stopped around a test."""

    def __init__(self) -> None:
        self._script: deque[Reply | Callable[[Received], Reply]] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.requests: list[Received] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        self.default_delay = 0.0  # seconds every unscripted reply waits (a slow model)
        self.in_flight = 0  # requests received and not yet answered
        self.peak_in_flight = 0
        self.abandoned = 0  # answers the client no longer waited for (it timed out)
        # With `gather` N, unscripted replies wait (at most their delay) until N requests are
        # in flight together: a test of concurrency that does not depend on timing.
        self.gather = 0
        self._gathered = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_POST(self) -> None:
                owner._serve(self)

            do_GET = do_POST
            do_PUT = do_POST
            do_DELETE = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: the tests read `requests`, not a request log

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # slow replies stop waiting
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- script and records -----------------------------------------------------------------

    def push(self, *replies: Reply | Callable[[Received], Reply]) -> Self:
        """Queue replies for the next requests, in order (a callable builds one per request)."""
        with self._lock:
            self._script.extend(replies)
        return self

    def reset(self) -> Self:
        """Forget the script and the recorded requests (a server shared by several tests)."""
        with self._lock:
            self._script.clear()
            self.requests.clear()
            self.peak_in_flight = self.in_flight
            self.abandoned = 0
            self._gathered.clear()
        return self

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def bodies(self) -> list[Any]:
        with self._lock:
            return [r.body for r in self.requests]

    def next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    def default_reply(self, request: Received) -> Reply:
        return Reply(
            404, {"error": {"message": f"no route for {request.path}", "type": "not_found"}}
        )

    # -- serving ------------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        request = Received(
            method=handler.command,
            path=handler.path,
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
        )
        with self._lock:
            self.requests.append(request)
            scripted = self._script.popleft() if self._script else None
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            if self.gather and self.in_flight >= self.gather:
                self._gathered.set()
        try:
            if scripted is None:
                reply = self.default_reply(request)
                if not reply.delay and self.default_delay:
                    reply.delay = self.default_delay
            elif isinstance(scripted, Reply):
                reply = scripted
            else:
                reply = scripted(request)
            if scripted is None and self.gather:
                self._gathered.wait(reply.delay)
                stopping = self._stopping.is_set()
            else:
                stopping = bool(reply.delay) and self._stopping.wait(reply.delay)
        finally:
            # No longer in flight before the client can see the answer, so a client that
            # sends its next request at once is never counted twice.
            with self._lock:
                self.in_flight -= 1
        if stopping:
            return  # the server is stopping: drop the connection
        if isinstance(reply.body, bytes):
            payload, ctype = reply.body, "application/octet-stream"
        elif isinstance(reply.body, str):
            payload, ctype = reply.body.encode(), "text/plain"
        else:
            payload, ctype = json.dumps(reply.body).encode(), "application/json"
        try:
            handler.send_response(reply.status)
            handler.send_header("Content-Type", ctype)
            handler.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            with self._lock:
                self.abandoned += 1


def openai_error_body(message: str, etype: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


class TokenBucket:
    """A provider's limiter: `per_minute` units, refilled continuously, holding at most
    `burst_seconds` worth (providers enforce their per-minute limits over short windows too)."""

    def __init__(self, per_minute: float, burst_seconds: float) -> None:
        self.per_second = per_minute / 60.0
        self.capacity = max(1.0, self.per_second * burst_seconds)
        self.level = self.capacity
        self.at = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.per_second)
        self.at = now

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until `cost` fits (0: it fits now)."""
        self._refill(now)
        return 0.0 if self.level >= cost else (cost - self.level) / self.per_second

    def take(self, cost: float) -> None:
        self.level -= cost

    def reset_in(self) -> float:
        return (self.capacity - self.level) / self.per_second


@dataclass
class RateLimitStats:
    accepted: int = 0
    throttled: int = 0
    accepted_at: list[float] = field(default_factory=list)
    # Successful answer calls per prompt text: more than one is a duplicate model call.
    answers: dict[str, int] = field(default_factory=dict)


class FakeOpenAI(FakeHTTPServer):
    """`POST /v1/chat/completions`, as the OpenAI SDK calls it; `base_url` ends in /v1.

    `limit(rpm=..., tpm=...)` makes it enforce request and token rates as OpenAI does: a
    request over either gets 429 with `Retry-After`, `retry-after-ms` and the
    `x-ratelimit-*` headers; every answer carries the `x-ratelimit-*` headers too. Tokens
    counted are the usage each answer reports (`prompt_tokens + completion_tokens`)."""

    def __init__(self) -> None:
        super().__init__()
        self._rpm: TokenBucket | None = None
        self._tpm: TokenBucket | None = None
        self.limits: tuple[int | None, int | None] = (None, None)
        self.rate_stats = RateLimitStats()

    def limit(
        self, rpm: int | None = None, tpm: int | None = None, burst_seconds: float = 2.0
    ) -> Self:
        with self._lock:
            self._rpm = TokenBucket(rpm, burst_seconds) if rpm else None
            self._tpm = TokenBucket(tpm, burst_seconds) if tpm else None
            self.limits = (rpm, tpm)
            self.rate_stats = RateLimitStats()
        return self

    def _ratelimit_headers(self) -> dict[str, str]:
        h: dict[str, str] = {}
        for name, bucket, limit in (
            ("requests", self._rpm, self.limits[0]),
            ("tokens", self._tpm, self.limits[1]),
        ):
            if bucket is not None and limit is not None:
                h[f"x-ratelimit-limit-{name}"] = str(limit)
                h[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level)))
                h[f"x-ratelimit-reset-{name}"] = f"{bucket.reset_in():.3f}s"
        return h

    def _admit(self, request: Received, tokens: int) -> Reply | None:
        """None when the request fits the limits (and is counted), else the 429 to send."""
        with self._lock:
            if self._rpm is None and self._tpm is None:
                return None
            now = time.monotonic()
            waits = [
                b.wait_for(cost, now)
                for b, cost in ((self._rpm, 1.0), (self._tpm, float(tokens)))
                if b is not None
            ]
            wait = max(waits)
            if wait > 0:
                self.rate_stats.throttled += 1
                headers = self._ratelimit_headers()
                headers["retry-after-ms"] = str(math.ceil(wait * 1000))
                headers["Retry-After"] = str(math.ceil(wait))
                refused = self.rate_limited(retry_after=None, headers=headers)
                refused.delay = 0.001  # a limiter answers at once, whatever default_delay says
                return refused
            for b, cost in ((self._rpm, 1.0), (self._tpm, float(tokens))):
                if b is not None:
                    b.take(cost)
            self.rate_stats.accepted += 1
            self.rate_stats.accepted_at.append(now)
            if not self.is_extraction(request):
                prompt = str((request.body or {}).get("messages", [{}])[-1].get("content", ""))
                self.rate_stats.answers[prompt] = self.rate_stats.answers.get(prompt, 0) + 1
        return None

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @staticmethod
    def is_extraction(request: Received) -> bool:
        body = request.body if isinstance(request.body, dict) else {}
        if "response_format" in body:
            return True
        return any(
            "JSON" in str(m.get("content", ""))
            for m in body.get("messages", [])
            if m.get("role") == "system"
        )

    def default_reply(self, request: Received) -> Reply:
        if request.method != "POST" or not request.path.endswith("/chat/completions"):
            return Reply(
                404,
                openai_error_body(
                    f"Unknown request URL: {request.path}", "invalid_request_error", "unknown_url"
                ),
            )
        refused = self._admit(request, 30)
        if refused is not None:
            return refused
        if self.is_extraction(request):
            reply = self.completion(json.dumps(VALID_ENTITIES))
        else:
            reply = self.completion(DEFAULT_ANSWER)
        with self._lock:
            reply.headers.update(self._ratelimit_headers())
        return reply

    # -- reply builders ----------------------------------------------------------------------

    def completion(
        self,
        content: str | None,
        *,
        finish_reason: str = "stop",
        refusal: str | None = None,
        prompt_tokens: int = 20,
        completion_tokens: int = 10,
        delay: float = 0.0,
    ) -> Reply:
        body = {
            "id": self.next_id("chatcmpl-fake"),
            "object": "chat.completion",
            "created": 1_780_000_000,
            "model": "fake-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return Reply(200, body, delay=delay)

    def extraction(self, data: Any = None, **kwargs: Any) -> Reply:
        return self.completion(json.dumps(VALID_ENTITIES if data is None else data), **kwargs)

    def malformed_extraction(self, **kwargs: Any) -> Reply:
        """JSON cut off mid-object."""
        return self.completion('{"entities": [{"name": "Acme CRM", "type": "prod', **kwargs)

    def invalid_extraction(self, **kwargs: Any) -> Reply:
        """Valid JSON that fails the schema (rank 0)."""
        return self.extraction(INVALID_ENTITIES, **kwargs)

    def refusal(self, text: str = "I'm sorry, I can't help with that.") -> Reply:
        return self.completion(None, refusal=text)

    def content_filtered(self) -> Reply:
        return self.completion("", finish_reason="content_filter")

    @staticmethod
    def error(
        status: int,
        message: str,
        etype: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        return Reply(status, openai_error_body(message, etype, code), headers=dict(headers or {}))

    @classmethod
    def rate_limited(
        cls, retry_after: str | None = "2", headers: dict[str, str] | None = None
    ) -> Reply:
        h = dict(headers or {})
        if retry_after is not None:
            h["Retry-After"] = retry_after
        return cls.error(
            429, "Rate limit reached for requests", "requests", "rate_limit_exceeded", h
        )

    @classmethod
    def server_error(cls, status: int = 500) -> Reply:
        return cls.error(
            status, "The server had an error while processing your request.", "server_error"
        )

    @classmethod
    def unauthorized(cls, echo_key: bool = False) -> Callable[[Received], Reply]:
        """401 invalid_api_key; with `echo_key` the message repeats the key the request
        presented, in full (a careless proxy), to test that it never reaches logs or rows."""

        def reply(request: Received) -> Reply:
            presented = request.headers.get("authorization", "").removeprefix("Bearer ")
            shown = presented if echo_key else "sk-***"
            return cls.error(
                401,
                f"Incorrect API key provided: {shown}.",
                "invalid_request_error",
                "invalid_api_key",
            )

        return reply

    def slow(self, delay: float) -> Reply:
        return self.completion(DEFAULT_ANSWER, delay=delay)
