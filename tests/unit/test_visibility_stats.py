"""The statistics behind visibility: Wilson intervals and Fisher's exact test, against
values computed independently (R's prop.test/binom and fisher.test, scipy)."""

from __future__ import annotations

import math

import pytest

from promptrun.visibility import compare, fisher_exact_p, wilson_interval


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(2, 3) or (0, 0)
    assert (round(low, 4), round(high, 4)) == (0.2077, 0.9385)
    low, high = wilson_interval(50, 100) or (0, 0)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)


def test_wilson_interval_edges_stay_in_range() -> None:
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(0, 3) or (1, 1)
    assert low == 0.0 and 0.5 < high < 0.6
    low, high = wilson_interval(3, 3) or (0, 0)
    assert high == 1.0 and 0.4 < low < 0.5


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2", "p"),
    [
        (2, 3, 1, 3, 1.0),  # 67% -> 33% of three answers: noise
        (8, 10, 2, 10, 0.023),  # scipy.stats.fisher_exact([[8, 2], [2, 8]]) = 0.0230
        (0, 5, 0, 5, 1.0),
    ],
)
def test_fisher_exact_two_sided(k1: int, n1: int, k2: int, n2: int, p: float) -> None:
    assert fisher_exact_p(k1, n1, k2, n2) == pytest.approx(p, rel=0.02, abs=1e-6)


def _fisher_by_enumeration(k1: int, n1: int, k2: int, n2: int) -> float:
    hits, total = k1 + k2, n1 + n2

    def prob(x: int) -> float:
        return math.comb(hits, x) * math.comb(total - hits, n1 - x) / math.comb(total, n1)

    seen = prob(k1)
    return sum(prob(x) for x in range(0, min(hits, n1) + 1) if prob(x) <= seen * (1 + 1e-9))


@pytest.mark.parametrize(("k1", "n1", "k2", "n2"), [(30, 40, 10, 40), (3, 9, 7, 9), (1, 50, 9, 60)])
def test_fisher_matches_direct_enumeration(k1: int, n1: int, k2: int, n2: int) -> None:
    assert fisher_exact_p(k1, n1, k2, n2) == pytest.approx(_fisher_by_enumeration(k1, n1, k2, n2))


def test_compare_calls_only_significant_changes() -> None:
    noise = compare("b1", 2, 3, 1, 3)
    assert noise is not None and not noise.significant and noise.direction == "none"
    drop = compare("b1", 8, 10, 2, 10)
    assert drop is not None and drop.significant and drop.direction == "down"
    assert drop.delta == pytest.approx(-0.6)
    assert compare("b1", 0, 0, 1, 3) is None
