"""Waiting that costs neither an attempt nor an SQS receive.

A job that may not start yet (no capacity, paused, over budget, a retry not yet due, a live
worker holding it) is not handed back to SQS's visibility timeout, which counts a receive
towards the dead-letter queue: the processor sends a fresh message for the job, delayed to
when it can start (at most SQS's 900 s; a longer wait is delayed again on arrival), and
acknowledges the record it holds. A crash between the send and the acknowledgement leaves
at most a duplicate message, which the claim absorbs.

A wait for a free concurrency slot has no computed time (unlike a rate's turn): each
successive one of a job waits about twice as long (exponential backoff with equal jitter,
from 1-2 s up to SQS's 900 s), the count travelling in the job's message, so an hour of
waiting costs about a dozen messages rather than one every few seconds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from promptrun import limits
from promptrun.aws import MAX_DELAY_SECONDS
from promptrun.jobs import ClaimedJob

# From this receive on, a record the processor is about to run is first re-sent (delayed to
# past its lease), so processors killed while holding it never walk it to maxReceiveCount.
REFRESH_RECEIVE_COUNT = 3


class RetryLater(Exception):
    """The job must come back after `delay` seconds (a new message, or the record reported in
    batchItemFailures when there is no queue to send to)."""

    def __init__(
        self,
        delay: float,
        reason: str,
        *,
        retry: bool = False,
        optional: bool = False,
        turn: float | None = None,
        slot_waits: int = 0,
    ) -> None:
        super().__init__(f"retry in {delay:.1f}s: {reason}")
        self.delay = delay
        self.reason = reason
        self.retry = retry  # an attempt failed (True) or the job waits without one (False)
        # Only worth a new message (a live worker's job, in case it dies): never a failed record.
        self.optional = optional
        self.turn = turn  # the job's place behind a rate (limits.Admission.turn)
        self.slot_waits = slot_waits  # the job's slot waits so far, this one included

    @property
    def hint(self) -> Hint:
        """What the job's next message (or next round) carries."""
        return Hint(self.turn, self.slot_waits)


@dataclass(frozen=True)
class Hint:
    """What a job's message carries besides its id: hints for waiting, trusted for nothing."""

    turn: float | None = None
    slot_waits: int = 0


NO_HINT = Hint()

# Backoff of the waits for a free slot: the n-th (from 0) waits between half and all of
# min(SLOT_WAIT_CAP, limits.SLOT_WAIT_SECONDS * 2**n); only the first SLOT_WAITS_INLINE are
# slept through.
SLOT_WAIT_CAP = float(MAX_DELAY_SECONDS)
SLOT_WAITS_INLINE = 2


def slot_delay(waited: int) -> float:
    """Seconds until a job refused a slot `waited` times before looks again: the jitter (equal
    jitter: never below half) spreads jobs refused together without bringing any back at once."""
    ceiling = min(SLOT_WAIT_CAP, limits.SLOT_WAIT_SECONDS * 2.0 ** min(waited, 32))
    return random.uniform(ceiling / 2, ceiling)


def held(admission: limits.Admission, hint: Hint) -> RetryLater:
    """How a job its limits hold back comes back. A turn is exact; a wait for a slot backs
    off (slot_delay); other waits (paused, budget) are spread so they do not return together.
    The slot-wait count is kept through other waits, so a long backlog keeps backing off."""
    reason = admission.reason or "limits"
    if admission.turn is not None:
        return RetryLater(
            admission.wait_seconds, reason, turn=admission.turn, slot_waits=hint.slot_waits
        )
    if reason.startswith(limits.SLOT_REASON):
        return RetryLater(slot_delay(hint.slot_waits), reason, slot_waits=hint.slot_waits + 1)
    return RetryLater(spread(admission.wait_seconds), reason, slot_waits=hint.slot_waits)


# Waits this short are waited out in the invocation (billed, but no message, no receive, and
# the processor takes no more records meanwhile), when enough Lambda time is left after them.
INLINE_WAIT_MAX = 20.0
INLINE_TIME_LEFT = 20.0


def wait_inline(later: RetryLater, remaining_ms: Callable[[], int] | None) -> bool:
    """Whether to sleep through this wait here rather than send the job back."""
    if remaining_ms is None or later.optional or later.delay > INLINE_WAIT_MAX:
        return False
    if later.reason.startswith(limits.SLOT_REASON) and later.slot_waits > SLOT_WAITS_INLINE:
        return False  # a long wait for a slot: sleeping through it would bill for nothing
    return remaining_ms() / 1000 - later.delay >= INLINE_TIME_LEFT


def spread(seconds: float) -> float:
    """Waits that end together would come back together: spread them by up to a quarter."""
    return seconds * random.uniform(1.0, 1.25)


def message_delay(seconds: float) -> int:
    return max(0, min(MAX_DELAY_SECONDS, math.ceil(seconds)))


def demand_for(job: ClaimedJob) -> limits.Demand:
    """One job's use of its model: the answer and, when the model extracts too, the extraction
    (estimated at the answer's size); cost at the catalogue's prices."""
    model = job.model
    calls = 2 if job.extraction_model.slug == model.slug else 1
    per_call = limits.estimate_tokens(job.prompt_text, job.system_text, model.params)
    out_cap = per_call - math.ceil(
        (len(job.prompt_text) + len(job.system_text or "")) / limits.CHARS_PER_TOKEN
    )
    in_tokens = per_call - out_cap
    cost = (
        (model.price_input_per_mtok * in_tokens + model.price_output_per_mtok * out_cap)
        * calls
        / 1_000_000
    )
    return limits.Demand(requests=calls, tokens=per_call * calls, cost_usd=cost)
