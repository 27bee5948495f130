"""The admission arithmetic (GCRA) and the token estimate, without a database."""

from __future__ import annotations

import pytest

from promptrun.limits import effective, estimate_tokens, gcra_grant


def test_gcra_admits_a_burst_then_paces_at_the_rate() -> None:
    # 600 per minute: one every 0.1 s, a burst of one second's worth (10).
    granted, wait = gcra_grant(tat=0.0, now=100.0, per_minute=600, cost=1, wanted=25)
    assert (granted, wait) == (10, pytest.approx(0.1))
    tat = 100.0 + 10 * 0.1
    assert gcra_grant(tat, 100.0, 600, 1, 1) == (0, pytest.approx(0.1))
    assert gcra_grant(tat, 100.1, 600, 1, 1) == (1, 0.0)


def test_gcra_cost_per_job_counts_every_unit() -> None:
    # Two requests per job (answer + extraction) at 600 per minute: five jobs fill a second.
    assert gcra_grant(0.0, 50.0, 600, 2, 8)[0] == 5
    # A job costing more than a second's worth still gets in alone when the row is idle.
    assert gcra_grant(0.0, 50.0, 600, 30, 3)[0] == 1


def test_no_limit_only_waits_for_a_pushed_back_arrival_time() -> None:
    assert gcra_grant(0.0, 10.0, None, 1, 7) == (7, 0.0)
    assert gcra_grant(12.5, 10.0, None, 1, 7) == (0, pytest.approx(2.5))


def test_effective_rate_and_estimate() -> None:
    assert effective(None, 0.5) is None
    assert effective(600, 0.5) == pytest.approx(600 * 0.95 * 0.5)
    assert estimate_tokens("x" * 40, "y" * 8, {"max_tokens": 100}) == 12 + 100
    assert estimate_tokens("abc", None, {}) == 1 + 1024


def test_quota_wait_reads_exhausted_buckets_only() -> None:
    from promptrun.providers.errors import quota_wait

    assert (
        quota_wait({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "2s"})
        is None
    )
    assert quota_wait(
        {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1m30s",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "250ms",
        }
    ) == pytest.approx(90.0)
    assert quota_wait(
        {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2026-11-23T12:00:30Z",
        },
        now=1795435200.0,  # 2026-11-23T12:00:00Z
    ) == pytest.approx(30.0)
    assert quota_wait(None) is None
