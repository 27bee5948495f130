"""`promptrun api`: the status API (the StatusFunction's app, promptrun.api) over plain HTTP
on loopback, so curl and a browser reach it: each request becomes an API Gateway REST proxy
event, as API Gateway would send it, and the Lambda proxy response becomes the reply."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from promptrun.local.events import api_gateway_event
from promptrun.local.lambda_runtime import LocalContext

Resolve = Callable[[dict[str, Any], Any], dict[str, Any]]
DEFAULT_PORT = 8321


def request_event(method: str, target: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The REST proxy event for one HTTP request (the path's own resource: the resolver
    matches routes by path)."""
    parts = urlsplit(target)
    multi = parse_qs(parts.query, keep_blank_values=True)
    event = api_gateway_event(
        parts.path or "/",
        query={k: v[-1] for k, v in multi.items()} or None,
        headers=headers,
    )
    if multi:
        event["multiValueQueryStringParameters"] = multi
    event["headers"] = dict(headers)  # no Accept added: the browser's own is kept
    event["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
    event["httpMethod"] = method
    event["requestContext"]["httpMethod"] = method
    if body:
        try:
            event["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
    return event


def make_handler(resolve: Resolve) -> type[BaseHTTPRequestHandler]:
    # The Powertools resolver keeps the current event on itself: one request at a time.
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "promptrun-local-api"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items()}
            event = request_event(self.command, self.path, headers, body)
            with lock:
                resp = resolve(event, LocalContext("StatusFunction", timeout_seconds=29))
            payload = resp.get("body") or ""
            data = (
                base64.b64decode(payload)
                if resp.get("isBase64Encoded")
                else str(payload).encode("utf-8")
            )
            self.send_response(int(resp.get("statusCode", 500)))
            sent: set[str] = set()
            for name, values in (resp.get("multiValueHeaders") or {}).items():
                for value in values:
                    self.send_header(name, str(value))
                sent.add(name.lower())
            for name, value in (resp.get("headers") or {}).items():
                if name.lower() not in sent:
                    self.send_header(name, str(value))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def __getattr__(self, name: str) -> Any:
            # Every method goes to the resolver (an unknown one is its 404, not a 501 here).
            if name.startswith("do_"):
                return self._serve
            raise AttributeError(name)

    return Handler


class LocalApi:
    """The server in a thread of this process (tests), or in the foreground (the CLI)."""

    def __init__(
        self,
        resolve: Resolve,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        quiet: bool = False,
    ) -> None:
        handler = make_handler(resolve)
        if quiet:
            handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LocalApi:
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.thread:
            self.thread.join(timeout=5)


def status_app_resolver() -> Resolve:
    """The StatusFunction's app from the environment's settings (DATABASE_URL, API_TOKEN)."""
    from promptrun.api import app_from_settings
    from promptrun.settings import get_settings

    app = app_from_settings(get_settings().require("database", "api_token"))
    return app.resolve
