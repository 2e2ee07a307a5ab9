"""Tower inputs built from the lake "as of" a point in time.

Everything a tower sees is computed from what was known at ``as_of``: the
engagement counts of a video are counted from the interactions before it (the
lake's lifetime counters would leak the future into an evaluation), a user's
history is their interactions before it. Training uses ``as_of`` = the start
of the validation period; the batch that serves feeds uses "now".

Videos are addressed by their position in the catalogue (the videos table
sorted by ``video_id``, the same order as ``Split.item_ids``); ids enter the
model through :class:`Vocabs`, fixed when a model is trained.

A video's engagement features change with time (views, rates, age, views in
the last 1/7/30/180 days), so the catalogue keeps each video's timeline of
interactions before ``as_of`` and can give its features as they were at any
earlier instant (:meth:`Catalogue.dense_at`). Training shows every positive as
it looked when it was watched, not as it looks at the cut: otherwise a
training interaction from years ago sees the video's later fame, the model
never sees what a video looks like in the days it is new and rising, and it
cannot learn that recency matters (it does: on MovieLens most held-out watches
are of films released after the cut).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import torch

from rec_core.ids import per_distinct
from rec_core.model.history_text_kernel import mean_text
from rec_core.model.towers import USER_DENSE, VIDEO_DENSE, UserBatch, VideoBatch
from rec_core.model.video_engagement import (
    RECENT_WINDOWS_DAYS,
    EngagementCounts,
    ItemTimeline,
    time_columns,
)
from rec_core.model.vocabs import Vocabs

HISTORY_CAP = 64  # most recent videos per user that the user tower pools over (recency, and training speed)
# Raw dense columns that are zero for a video the moment it is posted (no views yet, age 0).
NEW_VIDEO_COLUMNS = [
    VIDEO_DENSE.index(c)
    for c in (
        "log_views",
        "like_rate",
        "comment_rate",
        "share_rate",
        "age_days",
        *(f"log_views_{d}d" for d in RECENT_WINDOWS_DAYS),
    )
]
# The columns that depend on time (all the others are fixed properties of the video or its creator).
TIME_VIDEO_COLUMNS = NEW_VIDEO_COLUMNS
STATIC_VIDEO_COLUMNS = ("log_duration", "log_aspect", "log_creator_followers", "log_creator_likes")


# ---- standardisation ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureStats:
    video_mean: list[float]
    video_std: list[float]
    user_mean: list[float]
    user_std: list[float]

    @classmethod
    def fit(cls, video_dense: np.ndarray, user_dense: np.ndarray) -> FeatureStats:
        def std(x: np.ndarray) -> list[float]:
            return np.maximum(x.std(axis=0), 1e-6).tolist()

        return cls(
            video_dense.mean(axis=0).tolist(), std(video_dense), user_dense.mean(axis=0).tolist(), std(user_dense)
        )

    def video(self, x: np.ndarray) -> np.ndarray:
        # A model saved before columns were appended to VIDEO_DENSE reads only the columns it was trained on.
        x = x[:, : len(self.video_mean)]
        return ((x - np.asarray(self.video_mean)) / np.asarray(self.video_std)).astype(np.float32)

    def user(self, x: np.ndarray) -> np.ndarray:
        return ((x - np.asarray(self.user_mean)) / np.asarray(self.user_std)).astype(np.float32)

    def to_json(self) -> str:
        return json.dumps(
            {
                "video": dict(zip(VIDEO_DENSE, zip(self.video_mean, self.video_std, strict=True), strict=False)),
                "user": dict(zip(USER_DENSE, zip(self.user_mean, self.user_std, strict=True), strict=True)),
                "raw": asdict(self),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureStats:
        return cls(**json.loads(text)["raw"])


# ---- the catalogue ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Video-tower inputs for every video, in catalogue order; unstandardised dense features."""

    video_ids: np.ndarray  # str (object, or unicode mapped from a snapshot's serving index), sorted
    creator_ids: np.ndarray  # str (object, or unicode mapped)
    text: np.ndarray  # (n, text_dim) float32
    # The video tower's own inputs; None in a catalogue that only feeds the user tower (the API's, serving_catalogue).
    duration_s: np.ndarray | None  # float32
    item_idx: np.ndarray  # int32 model vocab index, 0 = unknown
    creator_idx: np.ndarray | None  # int32
    hashtag_idx: np.ndarray | None  # int32, flattened vocab indices
    hashtag_offsets: np.ndarray | None  # int32 (n,)
    dense: np.ndarray  # (n, len(VIDEO_DENSE)) float32, as of ``as_of_ms``
    created_ms: np.ndarray | None = None  # int64 (n,)
    timeline: ItemTimeline | None = None  # interactions before as_of, for features at an earlier instant
    creator_debut: np.ndarray | None = None  # bool (n,): no earlier video of the same creator
    as_of_ms: int = 0

    def __post_init__(self) -> None:
        # Held as int32: every API worker keeps a catalogue, and these four are ~4 values per video (about 16 MiB per
        # worker at 500,000 videos as int64). Batches hand the towers int64, as built.
        for name in ("item_idx", "creator_idx", "hashtag_idx", "hashtag_offsets"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _int32(getattr(self, name), name))

    def __len__(self) -> int:
        return len(self.video_ids)

    def dense_at(self, rows: np.ndarray, t_ms: np.ndarray | int) -> np.ndarray:
        """Unstandardised dense features of ``rows`` as they were at ``t_ms`` (one instant, or one per row).

        Only the past of ``as_of`` is known, so an instant after it gives the features at ``as_of``.
        """
        if self.timeline is None or self.created_ms is None:
            raise ValueError("this catalogue has no timeline; build it with build_catalogue")
        rows = np.asarray(rows, dtype=np.int64)
        t = np.minimum(np.broadcast_to(np.asarray(t_ms, dtype=np.int64), rows.shape), self.as_of_ms)
        out = self.dense[rows].copy()
        out[:, TIME_VIDEO_COLUMNS] = time_columns(self.timeline.counts(rows, t), t - self.created_ms[rows])
        return out

    def batch(
        self,
        rows: np.ndarray,
        stats: FeatureStats,
        as_new: np.ndarray | None = None,
        at_ms: np.ndarray | None = None,
        dense: np.ndarray | None = None,
    ) -> VideoBatch:
        """Video-tower inputs for ``rows``, as of ``at_ms`` (default: ``as_of``).

        ``dense`` gives the rows' unstandardised dense features directly, when the
        caller already has them at the instant it wants (training's time windows).

        Rows flagged in ``as_new`` look as on the day they were posted: no id, no
        views, age zero, and no creator vector when the video was its creator's
        first (on MovieLens every film is its own creator, so a cold film's creator
        is always unknown). Training shows some positives like that because that is
        how every video looks when it most needs to be recommended; without it the
        model learns that a video with no views is never watched, and cold videos
        never reach a feed.
        """
        if self.creator_idx is None or self.hashtag_idx is None or self.hashtag_offsets is None:
            raise ValueError("this catalogue holds the user tower's inputs only: it cannot feed the video tower")
        if dense is None:
            dense = self.dense[rows] if at_ms is None else self.dense_at(rows, at_ms)
        item_idx = self.item_idx[rows].astype(np.int64)
        creator_idx = self.creator_idx[rows].astype(np.int64)
        if as_new is not None and as_new.any():
            dense = dense.copy()
            dense[np.ix_(as_new, NEW_VIDEO_COLUMNS)] = 0.0
            item_idx = np.where(as_new, 0, item_idx)
            if self.creator_debut is not None:
                creator_idx = np.where(as_new & self.creator_debut[rows], 0, creator_idx)
        starts = self.hashtag_offsets[rows]
        ends = np.append(self.hashtag_offsets, len(self.hashtag_idx))[rows + 1]
        tags, offsets = _gather_ranges(self.hashtag_idx, starts, ends)
        return VideoBatch(
            text=torch.from_numpy(self.text[rows]),
            item_idx=torch.from_numpy(item_idx),
            creator_idx=torch.from_numpy(creator_idx),
            hashtag_idx=torch.from_numpy(tags),
            hashtag_offsets=torch.from_numpy(offsets),
            dense=torch.from_numpy(stats.video(dense)),
        )


def _int32(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype == np.int32:
        return values
    if len(values) and (values.min() < 0 or values.max() > np.iinfo(np.int32).max):
        raise ValueError(f"catalogue {name} out of int32's range")
    return values.astype(np.int32)


def video_frame(videos: pa.Table) -> pl.DataFrame:
    df = pl.from_arrow(videos)
    assert isinstance(df, pl.DataFrame)
    return df.with_columns(pl.col("created_at").dt.epoch("ms").alias("created_ms")).sort("video_id")


def interaction_frame(interactions: pa.Table) -> pl.DataFrame:
    df = pl.from_arrow(interactions)
    assert isinstance(df, pl.DataFrame)
    return df.with_columns(pl.col("ts").dt.epoch("ms").alias("ts_ms"))


def one_string_each(column: pa.Array) -> np.ndarray:
    """``column`` as an object array holding one Python string per distinct value: a creator's id repeated on each
    of their videos is one object, not one per video (19,814 creators for 500,000 videos at the large scale; ~26
    MiB less in every process that holds a catalogue, each API worker among them)."""
    return per_distinct(column, lambda distinct: distinct, None)


def build_catalogue(
    videos: pl.DataFrame,
    interactions: pl.DataFrame,
    text: np.ndarray,
    vocabs: Vocabs,
    as_of_ms: int,
    *,
    timeline: bool = False,
) -> Catalogue:
    """Catalogue inputs as of ``as_of``; ``text`` is aligned with ``videos`` (sorted by video_id).

    ``interactions`` needs ``video_id``, ``ts_ms``, ``liked``, ``commented`` and ``shared``. ``timeline`` also
    keeps every video's interactions in time order, for features at earlier instants (:meth:`Catalogue.dense_at`):
    training needs it; a catalogue read only as of ``as_of`` (the embed shards', an evaluation's) is the same
    without it, and sorting ten million interactions for it was most of a user shard's time at the large scale.
    """
    v = videos.sort("video_id")
    n = v.height
    rows = pl.DataFrame({"video_id": v["video_id"]}).with_row_index("row")
    events = (
        interactions.filter(pl.col("ts_ms") < as_of_ms)
        .select("video_id", "ts_ms", "liked", "commented", "shared")
        .join(rows, on="video_id", how="inner")
    )
    columns = [events[c].to_numpy() for c in ("row", "ts_ms", "liked", "commented", "shared")]
    kept = ItemTimeline.build(*columns, n) if timeline else None
    created = v["created_ms"].to_numpy().astype(np.int64)
    all_rows = np.arange(n, dtype=np.int64)
    at = np.full(n, as_of_ms, dtype=np.int64)
    counts = kept.counts(all_rows, at) if kept is not None else EngagementCounts.at(*columns, n, as_of_ms)
    static = np.stack(
        [
            np.log1p(v["duration_s"].to_numpy()),
            np.log(np.maximum(v["width"].to_numpy(), 1) / np.maximum(v["height"].to_numpy(), 1)),
            np.log1p(v["creator_followers"].to_numpy()),
            np.log1p(v["creator_likes"].to_numpy()),
        ],
        axis=1,
    )
    dense = np.zeros((n, len(VIDEO_DENSE)), dtype=np.float32)
    dense[:, [VIDEO_DENSE.index(c) for c in STATIC_VIDEO_COLUMNS]] = static
    dense[:, TIME_VIDEO_COLUMNS] = time_columns(counts, at - created)
    # A creator's debut: no video of theirs was posted before this one (ties: the smaller id is first).
    debut = (
        v.with_row_index("row")
        .sort(["creator_id", "created_ms", "video_id"])
        .with_columns((pl.col("creator_id") != pl.col("creator_id").shift(1)).fill_null(True).alias("debut"))
        .sort("row")["debut"]
        .to_numpy()
        .astype(bool)
    )
    tags = v["hashtags"].to_arrow()  # flattened in Arrow: 2.5 M tags as Python lists took a second at large scale
    lengths = pc.fill_null(pc.list_value_length(tags), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    creators = v["creator_id"].to_arrow()
    return Catalogue(
        video_ids=v["video_id"].to_numpy().astype(object),
        creator_ids=one_string_each(creators),
        text=np.ascontiguousarray(text, dtype=np.float32),
        duration_s=v["duration_s"].to_numpy().astype(np.float32),
        item_idx=Vocabs.lookup(vocabs.items, v["video_id"].to_numpy()),
        creator_idx=Vocabs.codes(vocabs.creators, creators),
        hashtag_idx=Vocabs.codes(vocabs.hashtags, pc.list_flatten(tags)),
        hashtag_offsets=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
        dense=dense,
        created_ms=created,
        timeline=kept,
        creator_debut=debut,
        as_of_ms=int(as_of_ms),
    )


# ---- users --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Histories:
    """What each user did before ``as_of``: the user tower's raw inputs, one row per user."""

    user_ids: np.ndarray  # object, sorted
    watched: sp.csr_matrix  # users x catalogue positions, the most recent HISTORY_CAP watches
    liked: sp.csr_matrix  # users x catalogue positions
    watched_text_sum: np.ndarray  # (n_users, text_dim): sum of the watched videos' text vectors
    liked_text_sum: np.ndarray
    followed_idx: np.ndarray  # int64 creator vocab indices, flattened
    followed_offsets: np.ndarray  # int64 (n_users,)
    dense: np.ndarray  # (n_users, len(USER_DENSE)) float32, unstandardised
    built: np.ndarray | None = None  # bool per user: whose rows were built (None: everyone's); see build_histories

    def __len__(self) -> int:
        return len(self.user_ids)

    def batch(
        self,
        rows: np.ndarray,
        catalogue: Catalogue,
        stats: FeatureStats,
        exclude: np.ndarray | None = None,
        as_new: np.ndarray | None = None,
    ) -> UserBatch:
        """User-tower inputs for ``rows``.

        ``exclude`` (catalogue positions, one per row) leaves the training target out
        of its own user's history, so the model cannot learn to find itself. Rows
        flagged in ``as_new`` look like a user who just signed up (no history, no
        follows): training shows some of those so that the model learns what to
        recommend to a newcomer, who otherwise never appears in training data.
        """
        if self.built is not None and not self.built[rows].all():
            # An unbuilt row reads as a newcomer's: a wrong vector, not an error, unless refused here.
            raise ValueError(f"histories of {int((~self.built[rows]).sum())} of these users were not built")
        w_idx, w_off, w_text = _pool_rows(self.watched, self.watched_text_sum, rows, catalogue, exclude, as_new)
        l_idx, l_off, l_text = _pool_rows(self.liked, self.liked_text_sum, rows, catalogue, exclude, as_new)
        starts = self.followed_offsets[rows]
        ends = np.append(self.followed_offsets, len(self.followed_idx))[rows + 1]
        dense = self.dense[rows]
        if as_new is not None and as_new.any():
            ends = np.where(as_new, starts, ends)
            dense = np.where(as_new[:, None], NEW_USER_DENSE, dense)
        f_idx, f_off = _gather_ranges(self.followed_idx, starts, ends)
        return UserBatch(
            watched_text=torch.from_numpy(w_text),
            liked_text=torch.from_numpy(l_text),
            watched_idx=torch.from_numpy(w_idx),
            watched_offsets=torch.from_numpy(w_off),
            liked_idx=torch.from_numpy(l_idx),
            liked_offsets=torch.from_numpy(l_off),
            followed_idx=torch.from_numpy(f_idx),
            followed_offsets=torch.from_numpy(f_off),
            dense=torch.from_numpy(stats.user(dense)),
        )


def user_dense_features(
    n_watched: np.ndarray,
    n_liked: np.ndarray,
    n_followed: np.ndarray,
    avg_completion: np.ndarray,
    avg_watch: np.ndarray,
) -> np.ndarray:
    """The one definition of the user tower's dense features, shared by the batch and the API."""
    return np.stack(
        [np.log1p(n_watched), np.log1p(n_liked), np.log1p(n_followed), avg_completion, np.log1p(avg_watch)], axis=1
    ).astype(np.float32)


# What a user who just signed up looks like to the user tower.
NEW_USER_DENSE = user_dense_features(*(np.zeros(1),) * 5)[0]


def build_histories(
    user_ids: np.ndarray,
    interactions: pl.DataFrame,
    follows: pl.DataFrame,
    catalogue: Catalogue,
    vocabs: Vocabs,
    as_of_ms: int,
    only: np.ndarray | None = None,
) -> Histories:
    """What each of ``user_ids`` did before ``as_of_ms``; with ``only`` (positions in ``user_ids``), those users'
    rows alone are built (the rest stay empty and :meth:`Histories.batch` refuses them): an evaluation of 20,000
    users at the large scale then reads a fifth of the interactions."""
    n_users, n_items = len(user_ids), len(catalogue)
    users = pl.DataFrame({"user_id": pl.Series(user_ids, dtype=pl.String)}).with_row_index("u")
    built = None
    if only is not None:
        built = np.zeros(n_users, dtype=bool)
        built[np.asarray(only, dtype=np.int64)] = True
        users = users.filter(pl.Series(built))
    items = pl.DataFrame({"video_id": pl.Series(catalogue.video_ids, dtype=pl.String)}).with_row_index("i")
    before = (
        interactions.filter(pl.col("ts_ms") < as_of_ms)
        .join(users, on="user_id")
        .join(items, on="video_id")
        .select("u", "i", "ts_ms", "completion", "watch_time_s", "liked")
    )
    agg = before.group_by("u").agg(
        pl.len().alias("n"),
        pl.col("liked").sum().alias("n_liked"),
        pl.col("completion").mean().alias("completion"),
        pl.col("watch_time_s").mean().alias("watch"),
    )
    recent = before.sort(["u", "ts_ms"], descending=[False, True]).group_by("u", maintain_order=True).head(HISTORY_CAP)
    watched = _csr(recent["u"].to_numpy(), recent["i"].to_numpy(), n_users, n_items)
    likes = before.filter(pl.col("liked"))
    liked = _csr(likes["u"].to_numpy(), likes["i"].to_numpy(), n_users, n_items)

    f = follows.filter(pl.col("ts_ms") < as_of_ms).join(users, on="user_id").sort(["u", "creator_id"])
    f_idx = Vocabs.lookup(vocabs.creators, f["creator_id"].to_numpy())
    f_counts = np.bincount(f["u"].to_numpy(), minlength=n_users) if f.height else np.zeros(n_users, dtype=np.int64)

    def per_user(col: str, default: float) -> np.ndarray:
        out = np.full(n_users, default, dtype=np.float64)
        out[agg["u"].to_numpy()] = agg[col].to_numpy()
        return out

    dense = user_dense_features(
        per_user("n", 0), per_user("n_liked", 0), f_counts, per_user("completion", 0.0), per_user("watch", 0.0)
    )
    return Histories(
        user_ids=np.asarray(user_ids, dtype=object),
        watched=watched,
        liked=liked,
        watched_text_sum=np.asarray(watched @ catalogue.text, dtype=np.float32),
        liked_text_sum=np.asarray(liked @ catalogue.text, dtype=np.float32),
        followed_idx=f_idx,
        followed_offsets=np.concatenate([[0], np.cumsum(f_counts)[:-1]]).astype(np.int64),
        dense=dense,
        built=built,
    )


def follows_frame(follows: pa.Table) -> pl.DataFrame:
    df = pl.from_arrow(follows)
    assert isinstance(df, pl.DataFrame)
    return df.with_columns(pl.col("ts").dt.epoch("ms").alias("ts_ms"))


def to_ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


# ---- helpers ------------------------------------------------------------------


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_rows, n_cols))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _gather_ranges(flat: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``flat[starts[k]:ends[k]]`` for every k; return (values, offsets into them)."""
    lengths = (ends - starts).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), offsets
    index = np.repeat(starts - offsets, lengths) + np.arange(total)
    return flat[index].astype(np.int64), offsets


def _pool_rows(
    matrix: sp.csr_matrix,
    text_sum: np.ndarray,
    rows: np.ndarray,
    catalogue: Catalogue,
    exclude: np.ndarray | None,
    as_new: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the bag of item vocab indices and the mean text vector, optionally leaving one item out.

    The text mean starts from the precomputed per-user sum and subtracts the left-out
    item, so a training step touches ``batch x text_dim`` floats, not a whole history each.
    Rows flagged ``as_new`` get an empty history.
    """
    positions, offsets = _gather_ranges(matrix.indices, matrix.indptr[rows], matrix.indptr[rows + 1])
    lengths = np.diff(np.append(offsets, len(positions)))
    removed, left_out = np.zeros(len(rows), dtype=np.int64), np.zeros(0, dtype=np.int64)
    if exclude is not None and len(positions):
        keep = positions != np.repeat(exclude, lengths)
        owner = np.repeat(np.arange(len(rows)), lengths)
        removed = np.bincount(owner[~keep], minlength=len(rows))
        positions = positions[keep]
        lengths = lengths - removed
        left_out = np.ascontiguousarray(exclude, dtype=np.int64)
    new = np.zeros(len(rows), dtype=bool) if as_new is None else np.ascontiguousarray(as_new, dtype=bool)
    if new.any():
        positions = positions[~np.repeat(new, lengths)]
        lengths = np.where(new, 0, lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    text = np.empty((len(rows), text_sum.shape[1]), dtype=np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    mean_text(text_sum, rows, catalogue.text, left_out, removed, lengths, new, text)
    return catalogue.item_idx[positions].astype(np.int64), offsets, text
