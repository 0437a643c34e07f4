"""bench/stats.py: the intervals every bench's accuracy carries."""

from __future__ import annotations

import random

import pytest

from bench.stats import over_items, over_seeds, shown, t_quantile


@pytest.mark.parametrize("df,expected", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (10, 2.228), (100, 1.984)])
def test_t_quantile_matches_the_printed_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)


def test_over_seeds_is_a_t_interval_of_the_mean():
    s = over_seeds([0.8, 0.9, 1.0])
    assert s["mean"] == pytest.approx(0.9) and s["median"] == pytest.approx(0.9) and s["n"] == 3
    half = 4.303 * 0.1 / 3 ** 0.5  # t(0.975, 2) * sd / sqrt(n)
    assert s["ci_low"] == pytest.approx(0.9 - half, abs=1e-3) and s["ci_high"] == pytest.approx(0.9 + half, abs=1e-3)
    one = over_seeds([0.7])
    assert one["mean"] == 0.7 and one["ci_low"] is None and "no interval" in shown(one)
    assert over_seeds([])["mean"] is None


def test_over_items_bootstrap_covers_the_share_and_is_reproducible():
    rng = random.Random(0)
    marks = [rng.random() < 0.7 for _ in range(200)]
    s = over_items(marks)
    share = sum(marks) / len(marks)
    assert s["mean"] == pytest.approx(share, abs=1e-4) and s["n"] == 200
    assert s["ci_low"] < share < s["ci_high"]
    # about 1.96 standard errors of a proportion either side
    assert s["ci_high"] - s["ci_low"] == pytest.approx(2 * 1.96 * (share * (1 - share) / 200) ** 0.5, rel=0.2)
    assert over_items(marks) == s
    assert over_items([True] * 10)["ci_low"] == 1.0


def test_runs_split_by_seed_combine_into_the_figures_over_all_seeds():
    from bench.stats import combine, over_seeds
    parts = [{"acc": over_seeds([a]), "gap": {"1": over_seeds([g])}, "seeds": 1, "minutes": [1, 2]}
             for a, g in [(0.5, 10.0), (0.7, 30.0), (0.9, 20.0)]]
    merged = combine(parts)
    assert merged["acc"] == over_seeds([0.5, 0.7, 0.9])
    assert merged["gap"]["1"] == over_seeds([10.0, 30.0, 20.0])
    assert merged["seeds"] == 3 and merged["minutes"] == [1, 2]


def test_item_figures_from_separate_runs_pool_their_items_without_an_interval():
    from bench.stats import combine, over_items
    parts = [{"exact": over_items([True] * 3 + [False] * 7), "rows": [{"seed": 0}]},
             {"exact": over_items([True] * 6 + [False] * 14), "rows": [{"seed": 1}, {"seed": 2}]}]
    merged = combine(parts)
    assert merged["exact"] == {"mean": 0.3, "ci_low": None, "ci_high": None, "n": 30, "over": "items",
                               "pooled_from": 2}
    assert merged["rows"] == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
