"""The quick admission's decision (limits.decide_quick) on a snapshot of the limits rows:
granted in full when all the jobs need is a free slot, and left to the locked way otherwise."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from promptrun import limits
from promptrun.limits import Demand, Request

NOW = 1_800_000_000.0


def row(key: str, **values: Any) -> dict[str, Any]:
    return {
        "key": key,
        "group_key": None,
        "paused": False,
        "max_concurrency": None,
        "rpm": None,
        "tpm": None,
        "budget_batch_usd": None,
        "budget_day_usd": None,
        "in_flight": 0,
        "request_tat": 0.0,
        "token_tat": 0.0,
        "now_s": NOW,
        **values,
    }


def request(slug: str, wanted: int, turn: float | None = None) -> Request:
    return Request(slug, "b1", wanted, Demand(tokens=100, cost_usd=Decimal("0.01")), turn=turn)


def rows(*made: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in made}


def test_free_slots_are_granted_in_full_and_counted_per_row_with_the_group() -> None:
    snapshot = rows(
        row("model:a", group_key="group:org", max_concurrency=5, in_flight=2),
        row("model:b", group_key="group:org"),
        row("group:org", max_concurrency=10, in_flight=4),
        row("catalog"),
    )
    quick = limits.decide_quick([request("a", 3), request("b", 3), request("new", 2)], snapshot)
    assert quick is not None
    assert [(a.granted, a.keys, a.reason) for a in quick.admissions] == [
        (3, ("group:org", "model:a"), None),
        (3, ("group:org", "model:b"), None),
        (2, (), None),  # no limits row: no limits, as the locked way decides
    ]
    taken = dict(zip(quick.params["quick_keys"], quick.params["quick_calls"], strict=True))
    assert taken == {"model:a": 3, "group:org": 6, "model:b": 3}
    groups = dict(zip(quick.params["quick_keys"], quick.params["quick_groups"], strict=True))
    assert groups == {"model:a": "group:org", "group:org": None, "model:b": "group:org"}


@pytest.mark.parametrize(
    "change",
    [
        {"paused": True},
        {"rpm": 600},
        {"tpm": 90_000},
        {"budget_batch_usd": Decimal("1")},
        {"budget_day_usd": Decimal("1")},
        {"request_tat": NOW + 5},  # a provider's Retry-After
        {"token_tat": NOW + 5},
        {"in_flight": 3},  # 3 + 3 > 5
    ],
)
def test_anything_but_a_free_slot_takes_the_locked_way(change: dict[str, Any]) -> None:
    plain = rows(row("model:a", max_concurrency=5), row("catalog"))
    assert limits.decide_quick([request("a", 3)], plain) is not None
    changed = rows(row("model:a", max_concurrency=5, **change), row("catalog"))
    assert limits.decide_quick([request("a", 3)], changed) is None


def test_a_full_group_a_catalogue_budget_or_a_turn_takes_the_locked_way() -> None:
    full_group = rows(
        row("model:a", group_key="group:org"),
        row("group:org", max_concurrency=4, in_flight=1),
        row("catalog"),
    )
    assert limits.decide_quick([request("a", 3)], full_group) is not None
    assert limits.decide_quick([request("a", 4)], full_group) is None
    budget = rows(row("model:a"), row("catalog", budget_day_usd=Decimal("5")))
    assert limits.decide_quick([request("a", 1)], budget) is None
    plain = rows(row("model:a"), row("catalog"))
    assert limits.decide_quick([request("a", 1, turn=NOW)], plain) is None
