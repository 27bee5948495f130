"""Waiting for a free concurrency slot backs off: each look of a job refused a slot comes back
later than the one before (up to SQS's 900 s), the count travelling in the job's message, so
an hour of waiting costs about a dozen messages, on both the batch path (BatchRunner, what the
processor handler runs) and JobRunner's; only the first short waits are slept through in an
invocation. Real PostgreSQL and moto's SQS; the delays are read from the messages as sent."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, text

from promptrun import jobs, limits, waiting
from promptrun.aws import JobQueue
from promptrun.batch_runner import BatchRunner, Record
from promptrun.errors import InputError
from promptrun.local.lambda_runtime import LocalContext
from promptrun.processor import JobRunner, Outcome, parse_message
from promptrun.settings import Settings
from tests.conftest import sync
from tests.integration.test_flow_control import fan_out
from tests.support.sqs import receive_all

CATALOG = """
models:
  - {slug: m, provider: offline, model: m-1, max_concurrency: 1}
prompts:
  - {slug: p, text: "Which CRM?", schedule: daily, runs: 3}
"""

Look = Callable[[dict[str, str]], None]


class Sent:
    """The messages a JobQueue sends to moto (SendMessage, or each entry of SendMessageBatch),
    as sent (body, DelaySeconds)."""

    def __init__(self, queue: JobQueue) -> None:
        self.calls: list[dict[str, Any]] = []
        events = queue.sqs.meta.events
        events.register("provide-client-params.sqs.SendMessage", self._seen)
        events.register("provide-client-params.sqs.SendMessageBatch", self._seen_batch)

    def _seen(self, params: dict[str, Any], **_: Any) -> None:
        self.calls.append(dict(params))

    def _seen_batch(self, params: dict[str, Any], **_: Any) -> None:
        self.calls.extend(dict(entry) for entry in params["Entries"])

    def take(self) -> list[tuple[dict[str, Any], int]]:
        out = [(json.loads(c["MessageBody"]), int(c.get("DelaySeconds", 0))) for c in self.calls]
        self.calls.clear()
        return out


def slot_taken(engine: Engine, settings: Settings) -> list[dict[str, str]]:
    """Three jobs of a model with max_concurrency 1; the first holds the slot (claimed with a
    live lease and admitted): the bodies of the other two's messages."""
    sync(engine, CATALOG)
    fan_out(engine, settings)
    bodies = [
        json.loads(m["Body"])
        for m in receive_all(sqs_of(settings), settings.jobs_queue_url, delete=True)
    ]
    first, *rest = sorted(bodies, key=lambda b: b["job_id"])
    with engine.begin() as conn:
        assert jobs.claim_job(conn, uuid.UUID(first["job_id"]), 3600) is not None
        demand = limits.Demand(requests=1, tokens=10)
        assert limits.admit(conn, "m", "k", 1, demand, claimed=True).granted == 1
    return rest


def sqs_of(settings: Settings) -> Any:
    return JobQueue(settings.jobs_queue_url or "").sqs


def looks(
    engine: Engine, settings: Settings, path: str, remaining_ms: Callable[[], int] | None = None
) -> tuple[Callable[[list[dict[str, str]]], None], Sent]:
    """One look at the jobs (their records, one batch or one by one), as the processor does."""
    queue = JobQueue(settings.jobs_queue_url or "")
    sent = Sent(queue)
    if path == "batch":
        runner = BatchRunner(engine, settings, queue)

        def look(bodies: list[dict[str, str]]) -> None:
            records = [Record(f"m{i}", json.dumps(b), "rh") for i, b in enumerate(bodies)]
            result = runner.run(records, remaining_ms)
            assert result.failed == []
            assert set(result.outcomes.values()) == {Outcome.WAITING}

        return look, sent
    single = JobRunner(engine, settings, queue)

    def look_one(bodies: list[dict[str, str]]) -> None:
        for body in bodies:
            assert single.handle(json.dumps(body), "rh", remaining_ms) == Outcome.WAITING

    return look_one, sent


@pytest.mark.parametrize("path", ["batch", "single"])
def test_a_job_refused_a_slot_again_and_again_comes_back_later_each_time(
    engine: Engine, settings: Settings, path: str
) -> None:
    """Eighteen looks at two jobs while the slot stays taken: each new message is delayed
    about twice as long as the one before, from 1-2 s up to 450-900 s, counting its waits;
    an hour of waiting is covered by at most 16 messages (about 12 with the first two waits
    slept through), where a 2-3 s delay each took over 1,200. No attempt is used."""
    bodies = slot_taken(engine, settings)
    look, sent = looks(engine, settings, path)
    delays: dict[str, list[int]] = {b["job_id"]: [] for b in bodies}
    for n in range(18):
        look(bodies)
        calls = sent.take()
        assert len(calls) == len(bodies)
        bodies = []
        for body, delay in calls:
            ceiling = min(900.0, 2.0 * 2**n)
            assert math.floor(ceiling / 2) <= delay <= math.ceil(ceiling), (n, delay)
            assert body.get("slot_waits") == n + 1
            delays[body["job_id"]].append(delay)
            bodies.append(body)
    for seq in delays.values():
        assert seq[0] <= 2 and seq[1] <= 4  # a slot freed soon is used soon
        assert seq[:9] == sorted(seq[:9])  # ever later, up to SQS's longest delay
        assert all(450 <= d <= 900 for d in seq[9:])
        hour = next(i + 1 for i in range(len(seq)) if sum(seq[: i + 1]) >= 3600)
        assert hour <= 16
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT status, attempt_count, wait_reason FROM prompt_jobs WHERE id = ANY(:ids)"),
            {"ids": list(delays)},
        ).all()
    assert [(r[0], r[1]) for r in rows] == [("queued", 0)] * 2
    assert all(r[2].startswith("max_concurrency: model:m has 1 calls in flight") for r in rows)


@pytest.mark.parametrize("path", ["batch", "single"])
def test_only_the_first_waits_for_a_slot_are_slept_through(
    engine: Engine, settings: Settings, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a whole Lambda timeout left, a job refused a slot sleeps through its first two
    (short) waits, then goes back by a message carrying its third: it no longer re-checks
    every couple of seconds for as long as the invocation could last."""
    monkeypatch.setattr(limits, "SLOT_WAIT_SECONDS", 0.2)  # the same backoff, ten times faster
    bodies = slot_taken(engine, settings)
    look, sent = looks(
        engine, settings, path, LocalContext("processor", 60).get_remaining_time_in_millis
    )
    started = time.monotonic()
    look(bodies)
    elapsed = time.monotonic() - started
    calls = sent.take()
    # Two inline waits of 0.1-0.2 s and 0.2-0.4 s per job (the batch's jobs wait together).
    assert 0.3 <= elapsed < 5.0
    assert sorted(b["job_id"] for b, _ in calls) == sorted(b["job_id"] for b in bodies)
    assert all(b.get("slot_waits") == 3 and d == 1 for b, d in calls)  # third: 0.4-0.8 s


def test_old_bodies_are_accepted_and_a_bad_wait_count_is_named() -> None:
    job_id = "0b6f8b1e-8f7a-4a53-9a0f-3d1c2b7e6a10"
    assert parse_message(json.dumps({"job_id": job_id})).slot_waits == 0
    assert parse_message(json.dumps({"job_id": job_id, "slot_waits": 7})).hint.slot_waits == 7
    for bad in (-1, "3", 2.5, True, None):
        with pytest.raises(InputError, match="slot_waits"):
            parse_message(json.dumps({"job_id": job_id, "slot_waits": bad}))


def test_other_waits_keep_the_count_and_only_slot_refusals_raise_it() -> None:
    hint = waiting.Hint(turn=None, slot_waits=5)
    slot = limits.Admission(0, 2.0, f"{limits.SLOT_REASON} model:m has 4 calls in flight")
    later = waiting.held(slot, hint)
    assert later.slot_waits == 6 and 32 <= later.delay <= 64
    paused = waiting.held(limits.Admission(0, 900.0, "paused: m"), hint)
    assert paused.slot_waits == 5 and paused.delay >= 900
    turn = waiting.held(limits.Admission(0, 3.0, "rpm: model:m", turn=123.0), hint)
    assert (turn.slot_waits, turn.delay, turn.turn) == (5, 3.0, 123.0)
    assert waiting.held(slot, waiting.Hint(slot_waits=10**6)).delay <= 900
