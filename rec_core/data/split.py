"""Temporal train / validation / test split of the lake's interactions.

One global clock cuts the data: train is everything before ``valid_start``,
validation is ``[valid_start, test_start)``, test is everything at or after
``test_start``. The cuts default to the 0.8 and 0.9 quantiles of the
interaction timestamps. A global cut (rather than a per-user leave-last-out)
is what a batch recommender lives with: models are trained on the past and
serve the future, so nothing after the cut can leak into training.

Ids become dense integer indices:

* items: the FULL catalogue, every row of the videos table, sorted by
  ``video_id`` -- including videos nobody interacted with, because a ranking
  over the full catalogue must be able to recommend (and be penalised for) them;
* users: every user of the users table (if given) plus every user seen in the
  interactions, sorted by ``user_id``.

Held-out users are kept whether or not they have a training interaction;
:attr:`Split.user_has_train` marks the ones that do ("warm" users), so an
evaluation can report all users, only warm ones, or only cold-start ones.

"Cold" items are those with no training interaction at all (first
interaction at/after ``valid_start``, or none): a pure collaborative model
cannot have learnt anything about them.

A "positive" for evaluation is, by default, any held-out interaction
(``positive="any"``); ``"completed"`` keeps those with
``completion >= min_completion`` and ``"liked"`` keeps liked ones. The rule
only filters the held-out targets -- training data and the train-history
exclusion always use every train interaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import scipy.sparse as sp

from rec_core.data.lake import Lake

log = logging.getLogger(__name__)

PositiveRule = Literal["any", "completed", "liked"]
MatrixWeights = Literal["binary", "count", "completion"]
SplitPart = Literal["train", "valid", "test"]

_POSITIVE_RULES: tuple[str, ...] = ("any", "completed", "liked")


@dataclass(frozen=True, slots=True)
class InteractionArrays:
    """Interactions of one period as parallel arrays, sorted by (ts, user_idx, item_idx)."""

    user_idx: np.ndarray  # int32, index into Split.user_ids
    item_idx: np.ndarray  # int32, index into Split.item_ids
    ts_ms: np.ndarray  # int64, milliseconds since the Unix epoch (UTC)
    completion: np.ndarray  # float32
    liked: np.ndarray  # bool

    def __len__(self) -> int:
        return int(self.user_idx.shape[0])

    def select(self, mask: np.ndarray) -> InteractionArrays:
        return InteractionArrays(
            self.user_idx[mask], self.item_idx[mask], self.ts_ms[mask], self.completion[mask], self.liked[mask]
        )


@dataclass(frozen=True, slots=True)
class Split:
    user_ids: np.ndarray  # object array of str; position = user index
    item_ids: np.ndarray  # object array of str; position = item index; the full catalogue
    item_created_ms: np.ndarray  # int64, the video's created_at
    train: InteractionArrays
    valid: InteractionArrays
    test: InteractionArrays
    valid_start_ms: int
    test_start_ms: int
    user_has_train: np.ndarray  # bool per user: at least one train interaction ("warm")
    cold_item_mask: np.ndarray  # bool per item: no train interaction
    positive: PositiveRule = "any"
    min_completion: float = 0.5

    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def cold_items(self) -> np.ndarray:
        """Sorted indices of the items never interacted with in training."""
        return np.flatnonzero(self.cold_item_mask)

    @property
    def valid_start(self) -> dt.datetime:
        return _ms_to_datetime(self.valid_start_ms)

    @property
    def test_start(self) -> dt.datetime:
        return _ms_to_datetime(self.test_start_ms)

    def part(self, on: SplitPart) -> InteractionArrays:
        if on not in ("train", "valid", "test"):
            raise ValueError(f"unknown split part {on!r}; expected train, valid or test")
        return getattr(self, on)

    def positives(self, on: SplitPart) -> InteractionArrays:
        """The interactions of ``on`` that count as positives under :attr:`positive`."""
        part = self.part(on)
        if self.positive == "any":
            return part
        if self.positive == "completed":
            return part.select(part.completion >= self.min_completion)
        return part.select(part.liked)

    def user_positions(self, user_ids: list[str] | np.ndarray) -> np.ndarray:
        """Indices of ``user_ids``; raises KeyError for an unknown id."""
        return _positions(self.user_ids, user_ids, "user")

    def item_positions(self, video_ids: list[str] | np.ndarray) -> np.ndarray:
        """Indices of ``video_ids``; raises KeyError for an id outside the catalogue."""
        return _positions(self.item_ids, video_ids, "video")

    def summary(self) -> dict[str, int | str]:
        return {
            "users": self.n_users,
            "items": self.n_items,
            "train": len(self.train),
            "valid": len(self.valid),
            "test": len(self.test),
            "warm_users": int(self.user_has_train.sum()),
            "cold_items": int(self.cold_item_mask.sum()),
            "valid_start": self.valid_start.isoformat(),
            "test_start": self.test_start.isoformat(),
            "positive": self.positive,
        }


def temporal_split(
    interactions: pa.Table | pl.DataFrame,
    videos: pa.Table | pl.DataFrame,
    users: pa.Table | pl.DataFrame | None = None,
    *,
    valid_quantile: float = 0.8,
    test_quantile: float = 0.9,
    valid_start: dt.datetime | None = None,
    test_start: dt.datetime | None = None,
    positive: PositiveRule = "any",
    min_completion: float = 0.5,
) -> Split:
    """Split ``interactions`` at two global time cuts; see the module docstring.

    ``interactions`` needs ``user_id``, ``video_id``, ``ts`` (a timestamp, or
    integer milliseconds) and may have ``completion`` (default 1.0) and
    ``liked`` (default false). ``videos`` needs ``video_id`` and may have
    ``created_at``. Explicit ``valid_start`` / ``test_start`` override the
    quantiles. Interactions with a video outside the catalogue are dropped
    with a warning. The result depends only on the content of the tables,
    not their row order.
    """
    if not 0.0 < valid_quantile <= test_quantile <= 1.0:
        raise ValueError(f"need 0 < valid_quantile <= test_quantile <= 1, got {valid_quantile}, {test_quantile}")
    if positive not in _POSITIVE_RULES:
        raise ValueError(f"positive must be one of {', '.join(_POSITIVE_RULES)}, got {positive!r}")

    inter = _interactions_frame(interactions)
    if inter.height == 0:
        raise ValueError("cannot split an empty interactions table")
    catalogue = _videos_frame(videos)
    user_frame = _users_frame(inter, users)

    joined = inter.join(catalogue.select("video_id", "item_idx"), on="video_id", how="inner")
    if dropped := inter.height - joined.height:
        log.warning("split: dropped %d interaction(s) whose video is not in the videos table", dropped)
    joined = (
        joined.join(user_frame, on="user_id", how="inner")
        .select("user_idx", "item_idx", "ts_ms", "completion", "liked")
        .sort(["ts_ms", "user_idx", "item_idx", "completion", "liked"])
    )
    if joined.height == 0:
        raise ValueError("no interaction refers to a video of the catalogue")
    ts = joined["ts_ms"].to_numpy()

    # "lower" picks an observed timestamp, so the cut is a real instant and the split is exact.
    valid_ms = _to_ms(valid_start) if valid_start is not None else int(np.quantile(ts, valid_quantile, method="lower"))
    test_ms = _to_ms(test_start) if test_start is not None else int(np.quantile(ts, test_quantile, method="lower"))
    if test_ms < valid_ms:
        raise ValueError("test_start must not be before valid_start")

    arrays = InteractionArrays(
        user_idx=joined["user_idx"].to_numpy().astype(np.int32),
        item_idx=joined["item_idx"].to_numpy().astype(np.int32),
        ts_ms=ts.astype(np.int64),
        completion=joined["completion"].to_numpy().astype(np.float32),
        liked=joined["liked"].to_numpy().astype(bool),
    )
    train = arrays.select(ts < valid_ms)
    valid = arrays.select((ts >= valid_ms) & (ts < test_ms))
    test = arrays.select(ts >= test_ms)

    n_users, n_items = user_frame.height, catalogue.height
    user_has_train = np.zeros(n_users, dtype=bool)
    user_has_train[train.user_idx] = True
    cold = np.ones(n_items, dtype=bool)
    cold[train.item_idx] = False

    split = Split(
        user_ids=user_frame["user_id"].to_numpy().astype(object),
        item_ids=catalogue["video_id"].to_numpy().astype(object),
        item_created_ms=catalogue["created_ms"].to_numpy().astype(np.int64),
        train=train,
        valid=valid,
        test=test,
        valid_start_ms=valid_ms,
        test_start_ms=test_ms,
        user_has_train=user_has_train,
        cold_item_mask=cold,
        positive=positive,
        min_completion=float(min_completion),
    )
    log.info("split: %s", split.summary())
    return split


def split_from_lake(lake: Lake, **kwargs: object) -> Split:
    """:func:`temporal_split` of the lake's live version; ``kwargs`` go to it unchanged."""
    interactions = lake.read("interactions", columns=["user_id", "video_id", "ts", "completion", "liked"])
    videos = lake.read("videos", columns=["video_id", "created_at"])
    users = lake.read("users", columns=["user_id"]) if lake.has("users") else None
    return temporal_split(interactions, videos, users, **kwargs)  # type: ignore[arg-type]


def with_positive(split: Split, positive: PositiveRule, min_completion: float | None = None) -> Split:
    """The same split with another positive rule (the arrays are shared, not copied)."""
    if positive not in _POSITIVE_RULES:
        raise ValueError(f"positive must be one of {', '.join(_POSITIVE_RULES)}, got {positive!r}")
    threshold = split.min_completion if min_completion is None else float(min_completion)
    return dataclasses.replace(split, positive=positive, min_completion=threshold)


def interaction_matrix(
    split: Split, on: SplitPart = "train", weights: MatrixWeights = "binary", *, positives_only: bool = False
) -> sp.csr_matrix:
    """User x item CSR matrix (float32, n_users x n_items) of one period.

    ``binary``: 1 for every (user, item) pair with an interaction;
    ``count``: the number of interactions of the pair (re-watches add up);
    ``completion``: the sum of the pair's completion ratios. Rows are users with
    no interaction in the period stay empty, so the shape always covers every
    user and the full catalogue. With ``positives_only`` the period is first
    filtered by the split's positive rule.
    """
    part = split.positives(on) if positives_only else split.part(on)
    if weights == "completion":
        values = part.completion.astype(np.float32)
    elif weights in ("binary", "count"):
        values = np.ones(len(part), dtype=np.float32)
    else:
        raise ValueError(f"weights must be binary, count or completion, got {weights!r}")
    # COO -> CSR sums duplicates, which is exactly "count" / summed completion.
    matrix = sp.csr_matrix(
        (values, (part.user_idx, part.item_idx)), shape=(split.n_users, split.n_items), dtype=np.float32
    )
    matrix.sum_duplicates()
    matrix.sort_indices()
    if weights == "binary":
        matrix.data[:] = 1.0
    return matrix


def train_matrix(split: Split, weights: MatrixWeights = "binary") -> sp.csr_matrix:
    """The user x item training matrix; only interactions before ``valid_start`` are in it."""
    return interaction_matrix(split, "train", weights)


# ---- helpers -----------------------------------------------------------------


def _interactions_frame(table: pa.Table | pl.DataFrame) -> pl.DataFrame:
    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    missing = {"user_id", "video_id", "ts"} - set(df.columns)
    if missing:
        raise ValueError(f"interactions: missing column(s) {', '.join(sorted(missing))}")
    return df.select(
        pl.col("user_id").cast(pl.String),
        pl.col("video_id").cast(pl.String),
        _epoch_ms(df, "ts").alias("ts_ms"),
        (pl.col("completion").cast(pl.Float32) if "completion" in df.columns else pl.lit(1.0, pl.Float32)).alias(
            "completion"
        ),
        (pl.col("liked").cast(pl.Boolean) if "liked" in df.columns else pl.lit(False)).alias("liked"),
    )


def _videos_frame(table: pa.Table | pl.DataFrame) -> pl.DataFrame:
    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    if "video_id" not in df.columns:
        raise ValueError("videos: missing column video_id")
    created = _epoch_ms(df, "created_at") if "created_at" in df.columns else pl.lit(0, pl.Int64)
    out = df.select(pl.col("video_id").cast(pl.String), created.alias("created_ms")).sort("video_id")
    if out["video_id"].n_unique() != out.height:
        raise ValueError("videos: video_id is not unique")
    return out.with_row_index("item_idx")


def _users_frame(inter: pl.DataFrame, users: pa.Table | pl.DataFrame | None) -> pl.DataFrame:
    ids = inter.select("user_id")
    if users is not None:
        df = users if isinstance(users, pl.DataFrame) else pl.from_arrow(users)
        assert isinstance(df, pl.DataFrame)
        ids = pl.concat([ids, df.select(pl.col("user_id").cast(pl.String))])
    return ids.unique().sort("user_id").with_row_index("user_idx")


def _epoch_ms(df: pl.DataFrame, column: str) -> pl.Expr:
    dtype = df.schema[column]
    if isinstance(dtype, pl.Datetime):
        return pl.col(column).dt.epoch("ms")
    if dtype.is_integer():
        return pl.col(column).cast(pl.Int64)
    raise ValueError(f"{column}: expected a timestamp or integer milliseconds, got {dtype}")


def _to_ms(value: dt.datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("cut timestamps must be timezone-aware (UTC)")
    return round(value.timestamp() * 1000)


def _ms_to_datetime(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def _positions(universe: np.ndarray, ids: list[str] | np.ndarray, what: str) -> np.ndarray:
    wanted = np.asarray(ids, dtype=object)
    pos = np.searchsorted(universe, wanted)
    pos = np.clip(pos, 0, max(len(universe) - 1, 0))
    if len(universe) == 0 or not np.all(universe[pos] == wanted):
        bad = [w for w, p in zip(wanted, pos, strict=True) if len(universe) == 0 or universe[p] != w]
        raise KeyError(f"unknown {what} id(s): {bad[:5]}")
    return pos.astype(np.int64)
