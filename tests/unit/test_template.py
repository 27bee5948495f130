"""template.yaml holds least privilege: no role has an SQS action on "*", the
status function reads the database through the read-only secret and does not trace response
bodies, the API writes access logs, and the schedule has a dead-letter queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !GetAtt, !Sub, !If ...) as their long form."""


def _tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


CfnLoader.add_multi_constructor("!", _tag)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load((REPO / "template.yaml").read_text(), Loader=CfnLoader)


def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        statement
        for policy in role["Properties"].get("Policies", [])
        for statement in policy["PolicyDocument"]["Statement"]
    ]


def test_the_processor_has_its_own_role_and_no_sam_generated_one(template: dict[str, Any]) -> None:
    processor = resources(template)["ProcessorFunction"]["Properties"]
    assert processor["Role"] == {"Fn::GetAtt": ["ProcessorRole", "Arn"]}
    # With Role set, SAM ignores Policies and attaches nothing: none may be left there.
    assert "Policies" not in processor
    jobs = processor["Events"]["Jobs"]["Properties"]
    assert jobs["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert jobs["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "ProcessorMaxConcurrency"}}


def test_the_processor_takes_batches_its_call_threads_make_side_by_side(
    template: dict[str, Any],
) -> None:
    from promptrun.batch_runner import MAX_BATCH

    size = template["Parameters"]["ProcessorBatchSize"]
    assert size["MinValue"] == 1 and size["MaxValue"] == MAX_BATCH
    assert 1 <= size["Default"] <= MAX_BATCH
    jobs = resources(template)["ProcessorFunction"]["Properties"]["Events"]["Jobs"]["Properties"]
    assert jobs["BatchSize"] == {"Ref": "ProcessorBatchSize"}
    # Lambda takes more than 10 SQS records at once only with a batching window of 1 s or more.
    assert jobs["MaximumBatchingWindowInSeconds"] >= 1


def test_the_processor_role_has_no_sqs_action_on_every_resource(template: dict[str, Any]) -> None:
    role = resources(template)["ProcessorRole"]
    managed = str(role["Properties"]["ManagedPolicyArns"])
    assert "SQSQueueExecutionRole" not in managed and "AmazonSQS" not in managed
    sqs_statements = [
        s
        for s in role_statements(role)
        if any(str(a).startswith("sqs:") for a in as_list(s["Action"]))
    ]
    assert sqs_statements, "the processor must still be able to poll its queue"
    for statement in sqs_statements:
        assert "*" not in as_list(statement["Resource"])
        assert statement["Resource"] == {"Fn::GetAtt": ["JobsQueue", "Arn"]}
        assert not any("*" in str(a) for a in as_list(statement["Action"]))
    actions = {a for s in sqs_statements for a in as_list(s["Action"])}
    # Poll and delete for the event source mapping; send for waiting jobs (flow control): all
    # of it on JobsQueue alone (checked above), and nothing else.
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:SendMessage"} <= actions
    assert actions <= {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:DeleteMessageBatch",
        "sqs:ChangeMessageVisibility",
        "sqs:ChangeMessageVisibilityBatch",
        "sqs:GetQueueAttributes",
        "sqs:SendMessage",
        "sqs:SendMessageBatch",
    }
    for statement in role_statements(role):
        assert statement["Resource"] != "*"


def test_every_function_with_an_sqs_event_has_its_own_role(template: dict[str, Any]) -> None:
    """SAM attaches AWSLambdaSQSQueueExecutionRole (SQS actions on "*") to the generated role
    of a function with an SQS event: such a function must bring its own role instead."""
    with_sqs = {
        name: r["Properties"]
        for name, r in resources(template).items()
        if r["Type"] == "AWS::Serverless::Function"
        and any(e["Type"] == "SQS" for e in r["Properties"].get("Events", {}).values())
    }
    assert {"ProcessorFunction", "FanoutFunction"} <= set(with_sqs)
    for name, props in with_sqs.items():
        assert "Role" in props, f"{name} has an SQS event and no role of its own"
        assert "Policies" not in props, f"{name}: with Role set, SAM ignores Policies"


def test_the_fanout_role_sends_jobs_and_polls_only_its_continuation_queue(
    template: dict[str, Any],
) -> None:
    fanout = resources(template)["FanoutFunction"]["Properties"]
    assert fanout["Role"] == {"Fn::GetAtt": ["FanoutRole", "Arn"]}
    role = resources(template)["FanoutRole"]
    managed = str(role["Properties"]["ManagedPolicyArns"])
    assert "SQSQueueExecutionRole" not in managed and "AmazonSQS" not in managed
    by_queue: dict[str, set[str]] = {}
    for statement in role_statements(role):
        assert statement["Resource"] != "*" and "*" not in as_list(statement["Resource"])
        actions = as_list(statement["Action"])
        if any(str(a).startswith("sqs:") for a in actions):
            queue = statement["Resource"]["Fn::GetAtt"][0]
            by_queue.setdefault(queue, set()).update(actions)
    assert by_queue["JobsQueue"] == {"sqs:SendMessage", "sqs:SendMessageBatch"}
    assert {"sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage"} <= by_queue[
        "FanoutContinueQueue"
    ]
    assert set(by_queue) == {"JobsQueue", "FanoutContinueQueue"}
    secrets = [
        s["Resource"]
        for s in role_statements(role)
        if "secretsmanager:GetSecretValue" in as_list(s["Action"])
    ]
    assert secrets == [{"Ref": "DatabaseSecretArn"}]


def test_the_status_function_uses_the_read_only_database_secret(template: dict[str, Any]) -> None:
    assert "ReadOnlyDatabaseSecretArn" in template["Parameters"]
    status = resources(template)["StatusFunction"]["Properties"]
    env = status["Environment"]["Variables"]
    assert env["DATABASE_SECRET_ARN"] == {"Ref": "ReadOnlyDatabaseSecretArn"}
    secrets = [p["AWSSecretsManagerGetSecretValuePolicy"]["SecretArn"] for p in status["Policies"]]
    assert {"Ref": "ReadOnlyDatabaseSecretArn"} in secrets
    assert {"Ref": "DatabaseSecretArn"} not in secrets


def test_behind_the_rds_proxy_no_statement_is_prepared(template: dict[str, Any]) -> None:
    # RDS Proxy pins a session that prepares named statements: the proxy's whole point lost.
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["DATABASE_PREPARED_STATEMENTS"] == {"Fn::If": ["UseRdsProxy", "false", "true"]}
    assert env["DATABASE_HOST"]["Fn::If"][0] == "UseRdsProxy"


def test_the_status_function_does_not_trace_response_bodies(template: dict[str, Any]) -> None:
    env = resources(template)["StatusFunction"]["Properties"]["Environment"]["Variables"]
    assert env["POWERTOOLS_TRACER_CAPTURE_RESPONSE"] == "false"


def test_the_api_writes_access_logs_to_a_group_with_retention(template: dict[str, Any]) -> None:
    api = resources(template)["StatusApi"]
    setting = api["Properties"]["AccessLogSetting"]
    assert setting["DestinationArn"] == {"Fn::GetAtt": ["StatusApiAccessLogGroup", "Arn"]}
    assert "$context.requestId" in setting["Format"] and "$context.status" in setting["Format"]
    assert "Authorization" not in setting["Format"]
    group = resources(template)["StatusApiAccessLogGroup"]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert api["DependsOn"] == "ApiGatewayAccount"
    account = resources(template)["ApiGatewayAccount"]["Properties"]
    assert account["CloudWatchRoleArn"] == {"Fn::GetAtt": ["ApiGatewayCloudWatchRole", "Arn"]}


def test_the_schedule_has_a_dead_letter_queue(template: dict[str, Any]) -> None:
    schedule = resources(template)["FanoutFunction"]["Properties"]["Events"]["Schedule"]
    assert schedule["Type"] == "ScheduleV2"
    dlq = schedule["Properties"]["DeadLetterConfig"]
    assert dlq == {"Arn": {"Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"]}}
    queue = resources(template)["ScheduleDeadLetterQueue"]
    assert queue["Type"] == "AWS::SQS::Queue"
    assert queue["Properties"]["SqsManagedSseEnabled"] is True
    alarm = resources(template)["ScheduleDeadLetterQueueNotEmptyAlarm"]["Properties"]
    assert alarm["Dimensions"][0]["Value"] == {
        "Fn::GetAtt": ["ScheduleDeadLetterQueue", "QueueName"]
    }
