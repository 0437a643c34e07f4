"""Intervals for the benches' figures: every accuracy a bench reports carries one, in one shape.

- over_seeds(values): per-seed figures (one training run each): their mean and median, and a Student t interval
  of the mean. It holds what varies between runs (initialisation, data order, the held-out draw).
- over_items(marks): one run graded on distinct items: the share right, and a percentile bootstrap interval over
  the items. It holds only the held-out draw, so a bench uses it where it trains a single run.

Both return {"mean", "ci_low", "ci_high", "n", "over", ...}; ci_low and ci_high are None when there is nothing to
take an interval over (one seed).

A bench run split over processes by seed (--first-seed K --seeds 1 each) is put back together with

    .venv/bin/python bench/stats.py combine LOG [LOG ...]

which reads each log's last JSON line, joins every over-seeds figure's per-seed values in the order the logs are
given (so paired differences stay paired) and prints the figures again with their intervals over all the seeds;
"seeds" is summed, lists of per-seed rows are joined, and an over-items figure becomes the pooled share over all
the items (its mean weighted by n) with no interval, since the logs hold no single marks to resample; anything
else is taken from the first log.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import sys

import numpy as np

LEVEL = 0.95


@functools.cache
def t_quantile(p: float, df: int) -> float:
    """The p quantile (0.5 < p < 1) of Student's t with df degrees of freedom: bisection on its CDF, the density
    integrated by Simpson's rule (the lab does not depend on scipy)."""
    assert 0.5 < p < 1 and df >= 1
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(t: float, parts: int = 2000) -> float:
        h = t / parts
        density = [scale * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(parts + 1)]
        area = h / 3 * (density[0] + density[-1] + 4 * sum(density[1:-1:2]) + 2 * sum(density[2:-1:2]))
        return 0.5 + area

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def over_seeds(values: list[float], level: float = LEVEL) -> dict:
    """Mean, median and a Student t interval of the mean of per-seed figures; the figures themselves too."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"mean": None, "median": None, "ci_low": None, "ci_high": None, "n": 0, "over": "seeds", "values": []}
    mean = sum(values) / n
    low = high = None
    if n > 1:
        half = t_quantile(0.5 + level / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
        low, high = mean - half, mean + half
    return {"mean": _round(mean), "median": _round(statistics.median(values)), "ci_low": _round(low),
            "ci_high": _round(high), "n": n, "over": "seeds", "values": [_round(v) for v in values]}


def over_items(marks: list[bool] | list[float], level: float = LEVEL, resamples: int = 4000, seed: int = 0) -> dict:
    """The share of items right (or the mean of per-item scores) and a percentile bootstrap interval over the
    items, resampled with replacement `resamples` times from a fixed seed."""
    scores = np.asarray(marks, dtype=np.float64)
    n = len(scores)
    if n == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "over": "items"}
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = scores[draws].mean(1)
    tail = (1 - level) / 2
    return {"mean": _round(scores.mean()), "ci_low": _round(np.quantile(means, tail)),
            "ci_high": _round(np.quantile(means, 1 - tail)), "n": n, "over": "items"}


def shown(summary: dict, digits: int = 3) -> str:
    """`0.880 [0.812, 0.948]` (95% interval), or the mean and why it has no interval."""
    if summary["mean"] is None:
        return "-"
    mean = f"{summary['mean']:.{digits}f}"
    if summary["ci_low"] is None:
        return f"{mean} (one {summary['over'][:-1]}: no interval)"
    return f"{mean} [{summary['ci_low']:.{digits}f}, {summary['ci_high']:.{digits}f}]"


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def combine(parts: list[dict]) -> dict:
    """One bench's JSON figures from runs over disjoint seeds -> the figures over all of them (see the docstring)."""
    first = parts[0]
    if isinstance(first, dict) and first.get("over") == "seeds" and "values" in first:
        return over_seeds([v for part in parts for v in part["values"]])
    if isinstance(first, dict) and first.get("over") == "items" and all(
            isinstance(p, dict) and p.get("over") == "items" and isinstance(p.get("n"), int) for p in parts):
        n = sum(p["n"] for p in parts)
        known = [p for p in parts if p.get("mean") is not None]
        mean = sum(p["mean"] * p["n"] for p in known) / sum(p["n"] for p in known) if known else None
        return {"mean": None if mean is None else round(mean, 4), "ci_low": None, "ci_high": None, "n": n,
                "over": "items", "pooled_from": len(parts)}
    if isinstance(first, list) and all(isinstance(p, list) for p in parts) and first and \
            all(isinstance(row, dict) and "seed" in row for p in parts for row in p):
        return [row for p in parts for row in p]
    if isinstance(first, dict):
        merged = {}
        for key, value in first.items():
            if key == "seeds" and all(isinstance(p.get(key), int) for p in parts):
                merged[key] = sum(p[key] for p in parts)
            elif all(isinstance(p, dict) and key in p for p in parts):
                merged[key] = combine([p[key] for p in parts])
            else:
                merged[key] = value
        return merged
    return first


def _last_json(path: str) -> dict:
    try:
        lines = [line for line in open(path, encoding="utf-8").read().splitlines() if line.startswith("{")]
        return json.loads(lines[-1])
    except (OSError, UnicodeDecodeError, IndexError, json.JSONDecodeError) as exc:
        print(f"bench/stats.py: {path} has no bench JSON line to combine ({exc.__class__.__name__}); "
              "give the logs of finished bench runs.", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "combine":
        print("usage: bench/stats.py combine LOG [LOG ...]", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(combine([_last_json(path) for path in sys.argv[2:]])))
