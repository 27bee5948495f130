"""The status API's resolver served over HTTP on 127.0.0.1 in a thread (WSGI -> API Gateway
REST proxy events), for HTTP clients such as schemathesis in the integration tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from promptrun.local.events import api_gateway_event
from promptrun.local.lambda_runtime import LocalContext


@dataclass
class Served:
    base_url: str
    statuses: list[int] = field(default_factory=list)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadedServer(WSGIServer):
    daemon_threads = True


def _event(environ: dict[str, Any]) -> dict[str, Any]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length).decode("utf-8", "replace") if length else None
    query = {
        k: v[-1]
        for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()
    }
    headers = {
        key[5:].replace("_", "-").title(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    path = environ.get("PATH_INFO") or "/"
    event = api_gateway_event(
        path, query=query or None, headers=headers, method=environ["REQUEST_METHOD"], body=body
    )
    event["multiValueQueryStringParameters"] = (
        parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True) or None
    )
    return event


@contextmanager
def serve(resolver: Any) -> Iterator[Served]:
    served = Served(base_url="")
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        resp = resolver.resolve(_event(environ), LocalContext("StatusFunction", timeout_seconds=29))
        with lock:
            served.statuses.append(int(resp["statusCode"]))
        headers = dict(resp.get("headers") or {})
        for key, values in (resp.get("multiValueHeaders") or {}).items():
            headers[key] = values[-1]
        body = resp.get("body") or ""
        payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        start_response(f"{resp['statusCode']} X", [(k, str(v)) for k, v in headers.items()])
        return [payload]

    server = make_server("127.0.0.1", 0, app, server_class=_ThreadedServer, handler_class=_Quiet)
    served.base_url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
