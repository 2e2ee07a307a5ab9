"""Weighted draws inside segments (a sub-topic's videos, a creator's videos) without a Python loop per draw."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class SegmentSampler:
    """Draws an item inside a segment (a sub-topic, a creator) with probability proportional to a weight.

    Items are laid out segment by segment with one running weight sum, so a draw is one
    ``searchsorted`` for any number of rows: no Python loop per draw.
    """

    items: np.ndarray
    cum: np.ndarray
    before: np.ndarray  # per segment: running sum before its first item
    total: np.ndarray  # per segment: its weight
    first: np.ndarray
    last: np.ndarray

    @classmethod
    def build(cls, segment: np.ndarray, weight: np.ndarray, n_segments: int) -> SegmentSampler:
        order = np.argsort(segment, kind="stable")
        cum = np.cumsum(weight[order].astype(np.float64))
        counts = np.bincount(segment[order], minlength=n_segments)
        end = np.cumsum(counts)
        start = end - counts
        padded = np.concatenate([[0.0], cum])
        before = padded[start]
        return cls(order, cum, before, padded[end] - before, start, np.maximum(end - 1, start))

    def sample(self, rng: np.random.Generator, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items drawn in ``segments``; the mask is False where a segment has no weight (caller falls back)."""
        u = rng.random(len(segments))
        if len(self.items) == 0:
            return np.zeros(len(segments), dtype=np.int64), np.zeros(len(segments), dtype=bool)
        total = self.total[segments]
        pos = np.searchsorted(self.cum, self.before[segments] + u * total, side="right")
        # Rounding can step one past a segment's end; the clip keeps the draw inside it.
        pos = np.clip(pos, self.first[segments], self.last[segments])
        pos = np.minimum(pos, len(self.items) - 1)
        return self.items[pos], total > 0
