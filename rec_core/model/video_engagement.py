"""A video's engagement as of an instant: what the video tower's time-dependent dense features are made of.

Counted at one instant (:meth:`EngagementCounts.at`, what every catalogue read at its as-of needs), or read at any
earlier instant from an :class:`ItemTimeline` (what training needs, to show a video as it was when it was watched).
Both give :func:`time_columns` the same integers, so the features agree to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY_MS = 86_400_000
RECENT_WINDOWS_DAYS = (1, 7, 30, 180)  # views in the last N days: VIDEO_DENSE's log_views_<N>d columns
LIKE_RATE_SMOOTHING = 20.0  # rates are likes / (views + this): three views and one like is not a 33% like rate


@dataclass(frozen=True, slots=True)
class ItemTimeline:
    """Each catalogue row's interactions before ``as_of``, sorted by time: engagement at any earlier instant.

    ``keys`` is ``row * span + (ts - t0)``, sorted, so one ``searchsorted`` finds, for
    many (row, instant) pairs at once, how many of the row's interactions came before.
    ``cum_*`` are running totals over ``keys`` with a leading zero.
    """

    indptr: np.ndarray  # int64 (n_rows + 1,)
    keys: np.ndarray  # int64, sorted
    t0: int
    span: int
    cum_likes: np.ndarray  # int64 (len(keys) + 1,)
    cum_comments: np.ndarray
    cum_shares: np.ndarray

    @classmethod
    def build(
        cls, rows: np.ndarray, ts_ms: np.ndarray, liked: np.ndarray, commented: np.ndarray, shared: np.ndarray, n: int
    ) -> ItemTimeline:
        rows, ts_ms = rows.astype(np.int64), ts_ms.astype(np.int64)
        t0 = int(ts_ms.min()) if len(ts_ms) else 0
        span = (int(ts_ms.max()) - t0 + 2) if len(ts_ms) else 2
        if n * span >= 2**62:
            raise ValueError(f"timeline too long to index: {n} videos over {span} ms")
        keys = rows * span + (ts_ms - t0)
        order = np.argsort(keys, kind="stable")

        def running(flag: np.ndarray) -> np.ndarray:
            return np.concatenate([[0], np.cumsum(flag.astype(np.int64)[order])])

        return cls(
            indptr=np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64),
            keys=keys[order],
            t0=t0,
            span=span,
            cum_likes=running(liked),
            cum_comments=running(commented),
            cum_shares=running(shared),
        )

    def position(self, rows: np.ndarray, t_ms: np.ndarray | int) -> np.ndarray:
        """Index into ``keys`` of each row's first interaction at or after ``t_ms``."""
        offset = np.clip(np.asarray(t_ms, dtype=np.int64) - self.t0, 0, self.span - 1)
        return np.searchsorted(self.keys, rows.astype(np.int64) * self.span + offset, side="left")

    def count_before(self, rows: np.ndarray, t_ms: np.ndarray | int) -> np.ndarray:
        return self.position(rows, t_ms) - self.indptr[rows]

    def counts(self, rows: np.ndarray, t: np.ndarray) -> EngagementCounts:
        """What ``rows`` had gathered by instants ``t`` (one per row)."""
        pos = self.position(rows, t)
        start = self.indptr[rows]
        views = pos - start
        return EngagementCounts(
            views=views,
            likes=self.cum_likes[pos] - self.cum_likes[start],
            comments=self.cum_comments[pos] - self.cum_comments[start],
            shares=self.cum_shares[pos] - self.cum_shares[start],
            windows=tuple(views - self.count_before(rows, t - d * DAY_MS) for d in RECENT_WINDOWS_DAYS),
        )


@dataclass(frozen=True, slots=True)
class EngagementCounts:
    """Per video: interactions, likes, comments and shares before an instant, and interactions in each of the
    RECENT_WINDOWS_DAYS before it (int64, one per row asked about)."""

    views: np.ndarray
    likes: np.ndarray
    comments: np.ndarray
    shares: np.ndarray
    windows: tuple[np.ndarray, ...]

    @classmethod
    def at(
        cls,
        rows: np.ndarray,
        ts_ms: np.ndarray,
        liked: np.ndarray,
        commented: np.ndarray,
        shared: np.ndarray,
        n: int,
        t_ms: int,
    ) -> EngagementCounts:
        """Every one of ``n`` rows at the one instant ``t_ms``, from events all before it, by counting: what an
        :class:`ItemTimeline` answers for that instant, without sorting the events to build one."""
        rows, ts_ms = rows.astype(np.int64), ts_ms.astype(np.int64)

        def total(weights: np.ndarray | None = None) -> np.ndarray:
            # Float sums of integer flags are exact far beyond any video's interaction count.
            return np.bincount(rows, weights=weights, minlength=n).astype(np.int64)

        return cls(
            views=total(),
            likes=total(liked.astype(np.float64)),
            comments=total(commented.astype(np.float64)),
            shares=total(shared.astype(np.float64)),
            windows=tuple(total((ts_ms >= t_ms - d * DAY_MS).astype(np.float64)) for d in RECENT_WINDOWS_DAYS),
        )


def time_columns(counts: EngagementCounts, age_ms: np.ndarray) -> np.ndarray:
    """The TIME_VIDEO_COLUMNS (same order as NEW_VIDEO_COLUMNS) of videos with these counts and ages."""
    views = counts.views.astype(np.float64)

    def rate(events: np.ndarray) -> np.ndarray:
        return events / (views + LIKE_RATE_SMOOTHING)

    age_days = np.maximum(age_ms, 0) / DAY_MS
    return np.stack(
        [
            np.log1p(views),
            rate(counts.likes),
            rate(counts.comments),
            rate(counts.shares),
            np.log1p(age_days),
            *(np.log1p(w) for w in counts.windows),
        ],
        axis=1,
    ).astype(np.float32)
