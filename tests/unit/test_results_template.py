"""template.yaml's part of issue 8: the CloudWatch dashboard shows what it says, the failure
rate alarm watches the metric the processor really emits, and the functions that complete
batches may put events on the bus."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from promptrun import batch_completion
from promptrun.observability import SERVICE
from tests.unit.test_template import as_list, resources, role_statements, template

__all__ = ["template"]  # the module-scoped fixture, shared with test_template


def dashboard_body(template: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's JSON with every ${...} replaced as CloudFormation would: a name inside
    quotes, a number where the placeholder stands for one (the alarm threshold)."""
    body = resources(template)["OperationsDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    known = set(template["Parameters"]) | set(resources(template))
    names = re.findall(r"\$\{([^}]+)\}", body)
    for name in names:
        assert name.startswith("AWS::") or name.split(".")[0] in known, name
    filled = re.sub(r'(")?\$\{([^}]+)\}', lambda m: f'"{m.group(2)}' if m.group(1) else "20", body)
    parsed: dict[str, Any] = json.loads(filled)
    return parsed


def widget_metrics(widget: dict[str, Any]) -> list[list[Any]]:
    """Each metric row with CloudWatch's "..." shorthand expanded (it repeats the previous
    row's leading fields)."""
    rows: list[list[Any]] = []
    for row in widget["properties"]["metrics"]:
        fields = [f for f in row if not isinstance(f, dict)]
        if fields and fields[0] == "...":
            previous = [f for f in rows[-1] if not isinstance(f, dict)]
            fields = previous[: len(previous) - len(fields) + 1] + fields[1:]
        rows.append(fields + [f for f in row if isinstance(f, dict)])
    return rows


def test_the_operations_dashboard_shows_queues_jobs_and_functions(
    template: dict[str, Any],
) -> None:
    widgets = dashboard_body(template)["widgets"]
    plain = {
        (row[0], row[1], row[3])
        for w in widgets
        for row in widget_metrics(w)
        if isinstance(row[0], str) and row[0].startswith("AWS/")
    }
    for queue_metric in (
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "JobsQueue.QueueName"),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage", "JobsQueue.QueueName"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "JobsDeadLetterQueue.QueueName"),
    ):
        assert queue_metric in plain, queue_metric
    for fn in ("FanoutFunction", "ProcessorFunction", "StatusFunction"):
        for metric in ("Errors", "Throttles", "Duration"):
            assert ("AWS/Lambda", metric, fn) in plain, (metric, fn)
    searches = " ".join(
        row[0]["expression"]
        for w in widgets
        for row in w["properties"]["metrics"]
        if isinstance(row[0], dict)
    )
    assert 'MetricName="BatchJobs"' in searches and 'MetricName="BatchFailureRate"' in searches


def emitted_metrics(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    detail = {
        "batch_key": "2026-11-22",
        "failure_rate": 0.25,
        "by_model": [
            {"model": "m1", "failure_rate": 0.25, "counts": {"succeeded": 3, "failed": 1}}
        ],
    }
    batch_completion.emit_metrics(detail)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]


def test_the_alarm_and_the_dashboard_read_the_metrics_the_processor_emits(
    template: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    emf = emitted_metrics(capsys)
    dimension_sets = {
        (m["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
         m["_aws"]["CloudWatchMetrics"][0]["Namespace"],
         tuple(sorted(m["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0])))
        for m in emf
    }  # fmt: skip
    assert dimension_sets == {
        ("BatchFailureRate", "Promptrun", ("model", "service")),
        ("BatchJobs", "Promptrun", ("model", "outcome", "service")),
    }
    alarm = resources(template)["BatchFailureRateAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == (
        batch_completion.NAMESPACE,
        "BatchFailureRate",
    )
    assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == {
        "service": SERVICE,
        "model": "all",
    }
    assert any(m["model"] == "all" and m["BatchFailureRate"] == [25.0] for m in emf)
    assert alarm["Threshold"] == {"Ref": "FailureRateAlarmThreshold"}
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    # The dashboard's searches name exactly the emitted dimension sets.
    searches = [
        row[0]["expression"]
        for w in dashboard_body(template)["widgets"]
        for row in w["properties"]["metrics"]
        if isinstance(row[0], dict)
    ]
    for name, namespace, dims in dimension_sets:
        schema = "{" + ",".join([namespace, *dims]) + "}"
        assert any(schema in s and f'MetricName="{name}"' in s for s in searches), name


@pytest.mark.parametrize("role", ["ProcessorRole", "FanoutRole"])
def test_the_functions_that_complete_batches_may_put_events(
    template: dict[str, Any], role: str
) -> None:
    statements = role_statements(resources(template)[role])
    puts = [s for s in statements if "events:PutEvents" in as_list(s["Action"])]
    assert len(puts) == 1 and puts[0]["Effect"] == "Allow"
    assert "event-bus/default" in str(puts[0]["Resource"])
