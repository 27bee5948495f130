"""Processor processes for the flow-control tests and `make bench`: each one `promptrun poll`
(the local SQS -> processor poller, the processor handler in that process), killable with
SIGKILL mid-batch as Lambda would be, counted by the SQS traffic they caused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def limited_queue(sqs: Any, visibility: int, max_receive_count: int = 5) -> tuple[str, str]:
    """JobsQueue and its dead-letter queue, with the template's redrive policy."""
    name = f"flow-{uuid.uuid4().hex[:8]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    url = sqs.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": str(visibility),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": arn, "maxReceiveCount": str(max_receive_count)}
            ),
        },
    )["QueueUrl"]
    return url, dlq


def message_count(sqs: Any, queue_url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


class Processors:
    """N `promptrun poll` processes sharing one queue and database."""

    def __init__(self, env: dict[str, str], log_dir: Path | None = None) -> None:
        self.env = {
            **os.environ,
            **env,
            "POWERTOOLS_LOG_LEVEL": env.get("POWERTOOLS_LOG_LEVEL", "WARNING"),
            "POWERTOOLS_METRICS_NAMESPACE": "promptrun-test",
            "PYTHONUNBUFFERED": "1",
        }
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0
        self.killed = 0

    def start(self, count: int = 1) -> None:
        for _ in range(count):
            out: Any = subprocess.DEVNULL
            if self.log_dir is not None:
                out = open(self.log_dir / f"processor-{self.started}.log", "wb")  # noqa: SIM115
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "promptrun.cli", "poll"],
                    env=self.env,
                    cwd=REPO,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
            self.started += 1

    def kill_one(self, index: int = 0) -> None:
        """SIGKILL: no clean-up, the batch it holds is lost mid-way, as a killed Lambda's."""
        proc = self.procs.pop(index)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        self.killed += 1

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        self.procs.clear()

    def wait_until(self, done: Callable[[], bool], timeout: float, poll: float = 0.5) -> float:
        started = time.monotonic()
        while not done():
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a processor exited with {proc.returncode}")
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"not done after {timeout:.0f}s")
            time.sleep(poll)
        return time.monotonic() - started
