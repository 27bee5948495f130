"""A local stand-in for SQS's SendMessageBatch (JSON protocol), for sending 100,000 messages:
moto keeps every message in one Python process and cannot take that many in reasonable time.
It answers like SQS (MessageId, MD5OfMessageBody, which botocore checks) and counts what it got;
it stores nothing. Figures against it measure the fan-out's own cost, not SQS's latency."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class SqsStandIn:
    def __init__(self) -> None:
        self.received = 0
        self.calls = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                target = self.headers.get("X-Amz-Target", "")
                if target != "AmazonSQS.SendMessageBatch":
                    self._answer(400, {"__type": "UnsupportedOperation", "message": target})
                    return
                ok = [
                    {
                        "Id": e["Id"],
                        "MessageId": str(uuid.uuid4()),
                        "MD5OfMessageBody": hashlib.md5(e["MessageBody"].encode()).hexdigest(),
                    }
                    for e in body["Entries"]
                ]
                with owner._lock:
                    owner.calls += 1
                    owner.received += len(ok)
                self._answer(200, {"Successful": ok, "Failed": []})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.queue_url = f"{self.endpoint}/000000000000/bench-jobs"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
