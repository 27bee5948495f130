"""Lambda events built in code, for running the handlers outside AWS (the CLI, the demo, tests).

The shapes are those of the committed samples in events/ (scheduled_event.json,
apigw_get_batch.json); the tests check that both agree.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"
STAGE = "Prod"


def scheduled_event(at: datetime) -> dict[str, Any]:
    """An EventBridge scheduled event firing at `at` (its time sets the batch period)."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/promptrun-fanout"],
        "detail": {},
    }


def api_gateway_event(
    path: str,
    *,
    resource: str | None = None,
    query: dict[str, str] | None = None,
    path_params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: str | None = None,
) -> dict[str, Any]:
    """An API Gateway REST proxy event for `method path` (resource: the route template)."""
    now = datetime.now(UTC)
    request_id = str(uuid.uuid4())
    all_headers = {"Accept": "application/json", **(headers or {})}
    return {
        "version": "1.0",
        "resource": resource or path,
        "path": path,
        "httpMethod": method,
        "headers": all_headers,
        "multiValueHeaders": {k: [v] for k, v in all_headers.items()},
        "queryStringParameters": dict(query) if query else None,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "local",
            "domainName": "localhost",
            "httpMethod": method,
            "identity": {"sourceIp": "127.0.0.1"},
            "path": f"/{STAGE}{path}",
            "protocol": "HTTP/1.1",
            "requestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "resourcePath": resource or path,
            "stage": STAGE,
        },
        "pathParameters": dict(path_params) if path_params else None,
        "stageVariables": None,
        "body": body,
        "isBase64Encoded": False,
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
