"""The tracer exists only when tracing is on; off, the handlers' decorators change nothing."""

from __future__ import annotations

import subprocess
import sys

from promptrun.observability import NoTracer, make_tracer, tracing_enabled


def test_tracing_follows_the_lambda_environment() -> None:
    assert not tracing_enabled({})
    assert tracing_enabled({"AWS_XRAY_DAEMON_ADDRESS": "169.254.79.129:2000"})
    assert not tracing_enabled(
        {"AWS_XRAY_DAEMON_ADDRESS": "169.254.79.129:2000", "POWERTOOLS_TRACE_DISABLED": "true"}
    )
    tracer = make_tracer({})
    assert isinstance(tracer, NoTracer)

    def handler(event: dict[str, int], context: object) -> int:
        return event["n"] + 1

    assert tracer.capture_lambda_handler(handler) is handler
    assert tracer.capture_method(handler)({"n": 1}, None) == 2


def test_importing_the_handlers_modules_loads_no_xray_boto3_or_yaml() -> None:
    code = (
        "import sys, promptrun.observability, promptrun.aws, promptrun.api;"
        "print(sorted(m for m in ('aws_xray_sdk', 'boto3', 'botocore.session', 'yaml') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
