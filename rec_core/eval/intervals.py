"""Confidence intervals for ranking metrics by bootstrapping users.

A ranking metric is an average over the evaluated users, and the users are
the sample: another draw of users would give another average. The bootstrap
redraws the evaluated users with replacement ``resamples`` times (1,000,
with a fixed seed, so a report is reproducible) and takes the 2.5 % and
97.5 % percentiles of the redrawn averages: a 95 % percentile interval.

Two models evaluated on the same users are compared *paired*: the
difference is taken per user first, and the users are redrawn together, so
what the users have in common (some are easy for every model) cancels out.
A 95 % interval of the mean difference that excludes 0 says "better" or
"worse"; one that holds 0 says "within noise".

Users with a NaN value (``cold_recall@K`` of a user without a cold relevant
item) are left out of the average of each redraw, as they are of the point
estimate. The intervals say how much the *users* could change the figure, not
the training seed: a retrained model moves too (``benchmarks/quality.py
--seeds``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from rec_core.eval.ranking_metrics import UserMetrics

Verdict = Literal["better", "worse", "within noise"]

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
# Redraws at a time: (chunk x users) counts, so memory stays small for tens of thousands of users.
_CHUNK = 100


@dataclass(frozen=True, slots=True)
class Interval:
    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        if self.estimate != self.estimate:  # NaN: no user has such a value
            return "n/a"
        return f"{self.estimate:.4f} [{self.low:.3f}, {self.high:.3f}]"

    def signed(self) -> str:
        """A difference's interval as the reports print it: ``+0.0176 [+0.0162, +0.0189]``."""
        return f"{self.estimate:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


@dataclass(frozen=True, slots=True)
class Difference:
    """Model A minus model B over the same users: the mean difference, its interval and the verdict."""

    interval: Interval
    verdict: Verdict


def bootstrap_means(values: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """The averages of ``values`` (users x columns, NaN = no value) and of each of ``resamples`` redraws of users.

    Returns (point estimates per column, redrawn averages resamples x columns). A
    redraw in which no user has a value for a column averages to NaN.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    matrix = np.asarray(values, dtype=np.float64)
    matrix = matrix[:, None] if matrix.ndim == 1 else matrix
    n = matrix.shape[0]
    if n == 0:
        raise ValueError("cannot bootstrap over zero users")
    present = np.isfinite(matrix)
    filled = np.where(present, matrix, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = filled.sum(0) / present.sum(0)
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, matrix.shape[1]))
    for lo in range(0, resamples, _CHUNK):
        m = min(_CHUNK, resamples - lo)
        draws = rng.integers(0, n, size=(m, n))
        # How often each user is drawn in each redraw: the redrawn average is a weighted one.
        counts = np.bincount((draws + n * np.arange(m)[:, None]).ravel(), minlength=m * n).reshape(m, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo : lo + m] = (counts @ filled) / (counts @ present)
    return estimate, out


def intervals(values: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> list[Interval]:
    """One percentile interval per column of ``values`` (users x columns, or one column)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    estimate, redrawn = bootstrap_means(values, resamples, seed)
    tail = (1.0 - level) / 2.0 * 100.0
    out = []
    for column, point in enumerate(estimate):
        finite = redrawn[:, column][np.isfinite(redrawn[:, column])]
        if not len(finite):
            out.append(Interval(float(point), float("nan"), float("nan")))
            continue
        low, high = np.percentile(finite, [tail, 100.0 - tail])
        out.append(Interval(float(point), float(low), float(high)))
    return out


def metric_intervals(
    metrics: UserMetrics, keys: list[str], resamples: int = RESAMPLES, seed: int = SEED
) -> dict[str, Interval]:
    """An interval for each of ``keys`` (per-user metrics such as ``recall@20``) of one evaluation."""
    if not len(metrics.users):
        return {key: Interval(float("nan"), float("nan"), float("nan")) for key in keys}
    columns = np.stack([metrics.values[key] for key in keys], axis=1)
    return dict(zip(keys, intervals(columns, resamples, seed), strict=True))


def paired_difference(
    a: UserMetrics, b: UserMetrics, key: str, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> Difference:
    """``a`` minus ``b`` on ``key``, both evaluated on the same users, with the users redrawn together."""
    if not np.array_equal(a.users, b.users):
        raise ValueError("a paired comparison needs both models evaluated on the same users")
    return difference(a.values[key], b.values[key], resamples, seed, level)


def difference(
    a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> Difference:
    """The paired difference of two aligned per-user arrays and its verdict."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in shape: {a.shape} and {b.shape}")
    (interval,) = intervals(a - b, resamples, seed, level)
    verdict: Verdict = "within noise"
    if interval.low > 0:
        verdict = "better"
    elif interval.high < 0:
        verdict = "worse"
    return Difference(interval, verdict)
