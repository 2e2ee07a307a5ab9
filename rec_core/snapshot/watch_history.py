"""What each user watched before the build's as-of, in the snapshot: so the API never serves it again.

The batch leaves out of a user's feed every video they interacted with before as-of
(:mod:`rec_core.feed.history`). The API knows only what they did since the snapshot, so once a walk passes the
materialized feed its live continuation would serve those videos again: on the tiny world, 44-50 of the first 50
live items of the most active users were videos they had watched. Validation therefore writes the same pairs,
from the same lake version, as three arrays under ``serve/`` (hashed into the manifest with the rest), which the API
maps:

    serve/watched_users.npy      the users with a history, sorted (fixed-width unicode)
    serve/watched_offsets.npy    user i's videos are codes [offsets[i], offsets[i + 1]) (int64)
    serve/watched_codes.npy      catalogue codes (int32), ascending per user

A snapshot begun before them (``BuildInfo.watch_history`` false) has an empty history: its API excludes only what
it saw since, as it did.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from rec_core.arrays import sorted_unique
from rec_core.snapshot.files import map_array, save_array
from rec_core.snapshot.layout import SERVE_DIR, WATCHED_ARRAYS, BuildInfo, SnapshotPaths
from rec_core.snapshot.serving_index import IdIndex


@dataclass(frozen=True, slots=True)
class WatchHistory:
    user_row: IdIndex
    offsets: np.ndarray  # int64, len(users) + 1
    codes: np.ndarray  # int32 catalogue codes, ascending within each user

    def codes_of(self, user_id: str) -> np.ndarray:
        """The catalogue codes ``user_id`` watched before as-of (empty for a user without a history)."""
        row = self.user_row.get(user_id)
        if row is None:
            return self.codes[:0]
        return self.codes[int(self.offsets[row]) : int(self.offsets[row + 1])]

    def __len__(self) -> int:
        return len(self.codes)


def empty_history() -> WatchHistory:
    return WatchHistory(IdIndex(np.zeros(0, dtype="<U1")), np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32))


def build_watch_history(interactions: Path, as_of: str, video_ids: np.ndarray) -> WatchHistory:
    """Every (user, video) of ``interactions`` before ``as_of`` whose video is in the catalogue ``video_ids`` (sorted:
    code -> id), as a per-user list of codes. The history is the batch's own ``seen`` (``feed.history``)."""
    as_of_ms = int(dt.datetime.fromisoformat(as_of).timestamp() * 1000)
    pairs = (
        pl.scan_parquet(interactions)
        .filter(pl.col("ts").dt.epoch("ms") < as_of_ms)
        .select("user_id", "video_id")
        .collect()
    )
    users = pairs["user_id"].unique().sort()  # UTF-8 byte order: the code-point order numpy searches in
    catalogue = pl.DataFrame({"video_id": pl.Series(video_ids, dtype=pl.String), "v": np.arange(len(video_ids))})
    # Integers from here: a (user, video) key sorts and dedupes at a fraction of what string pairs cost (10.5 M
    # interactions of the large world: 4 s against 8).
    coded = pairs.join(pl.DataFrame({"user_id": users, "u": np.arange(len(users))}), on="user_id").join(
        catalogue, on="video_id"
    )
    width = max(len(video_ids), 1)
    keys = sorted_unique(coded["u"].to_numpy().astype(np.int64) * width + coded["v"].to_numpy())
    offsets = np.searchsorted(keys // width, np.arange(len(users) + 1)).astype(np.int64)
    # Users whose every video left the catalogue have an empty row: harmless, and dropping them would cost a copy.
    ids = np.asarray(users.to_list(), dtype=str) if len(users) else np.zeros(0, dtype="<U1")
    return WatchHistory(IdIndex(ids), offsets, (keys % width).astype(np.int32))


def write_watch_history(
    paths: SnapshotPaths, build: BuildInfo, interactions: Path, video_ids: np.ndarray
) -> WatchHistory:
    """Build the history from the lake's interactions and write it under ``serve/`` (each file atomically)."""
    history = build_watch_history(interactions, build.as_of, video_ids)
    arrays = (history.user_row.ids, history.offsets, history.codes)
    for name, array in zip(WATCHED_ARRAYS, arrays, strict=True):
        save_array(paths.root / SERVE_DIR / f"{name}.npy", array)
    return history


def open_watch_history(paths: SnapshotPaths, build: BuildInfo) -> WatchHistory:
    """The history written by :func:`write_watch_history`, mapped; empty for a snapshot begun before it."""
    if not build.watch_history:
        return empty_history()
    what = f"snapshot {paths.snapshot_id}: watch history file"
    users, offsets, codes = (map_array(paths.root / SERVE_DIR / f"{name}.npy", what) for name in WATCHED_ARRAYS)
    return WatchHistory(IdIndex(users), offsets, codes)
