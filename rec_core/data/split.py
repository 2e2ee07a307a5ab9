"""Train / validation / test splits of the lake's interactions, under two protocols.

``temporal`` (the default, :func:`temporal_split`): one global clock cuts the
data. Train is everything before ``valid_start``, validation is
``[valid_start, test_start)``, test is everything at or after ``test_start``.
The cuts default to the 0.8 and 0.9 quantiles of the interaction timestamps.
This is what a batch recommender lives with: models are trained on the past
and serve the future, so nothing after the cut can leak into training. Its
weakness is statistical: only users active after the cut are evaluated (on
MovieLens-small, 74 of 610).

``leave-last-out`` (:func:`leave_last_out_split`): each user is cut at their
own instants. A user with at least ``min_interactions`` (5) interactions holds
out their last ``test_fraction`` (10 %, rounded up, so at least one) for test
and the ``valid_fraction`` (10 %, at least one) just before them for
validation; everything earlier of theirs is training. The cuts are instants,
not row counts: the test part starts at the timestamp of the user's n-th last
interaction, and every interaction of theirs at or after it is test (ties with
the cut's timestamp join the later part, so a part can be a little larger than
its fraction). Users with fewer interactions, or whose interactions are so
tied in time that nothing would be left before the test cut, stay wholly in
training; one whose validation rows would leave nothing before them gets no
validation (it only steers early stopping). On MovieLens-small every one of
the 610 users is evaluated.

The leakage leave-last-out admits: a user's test interactions are later than
all of *their own* training, but not than other users' -- training holds other
users' interactions from after this user's test period (a 2018 watch trains
the model that is tested on a 1998 user), and so do the popularity and
"views lately" features computed from it. That is the standard trade-off of
the protocol (e.g. SASRec, BERT4Rec and most sequential-recommendation papers
use it): it evaluates every user, which gives intervals narrow enough to tell
models apart, at the price of a mild, global form of look-ahead that favours
popularity-type signals. The temporal protocol, which admits none, stays the
default; reports show both.

What the split's single instants mean under each protocol:

* ``valid_start`` is the instant the model's knowledge ends: training
  features are computed "as of" it (``rec_core.model.training.prepare``), and
  recency-weighted popularity measures ages from it. Temporal: the validation
  cut. Leave-last-out: 1 ms after the latest training interaction, so that
  "before ``valid_start``" is exactly all of training.
* ``test_start``: temporal, the test cut. Leave-last-out has no global test
  period; it equals ``valid_start``.
* ``user_valid_start_ms`` / ``user_test_start_ms`` hold each user's own cuts
  (under temporal, the global ones for everyone; under leave-last-out, the
  largest int64 for users that stay wholly in training), and
  :func:`training_view` cuts any (user_id, ts_ms) frame -- interactions,
  follows -- to what training may see. ``prepare()`` already cuts its frames
  at ``valid_start``; under leave-last-out that is not enough (a user's own
  held-out interactions are before it), so its frames must go through
  :func:`training_view` first.
* :meth:`Split.cuts` says what a prediction of the validation or the test
  part may know, for anything computed "as of" the split (the ranker's
  features, ``rec_core/rank``): each user's own rows before their cut of that
  part, and nothing at or after a reference instant (the one windows and ages
  are measured from). Temporal: one instant for everyone. Leave-last-out:
  validation, the training part and ``valid_start``; test, the training and
  validation parts and 1 ms after the latest validation row.

Ids become dense integer indices:

* items: the FULL catalogue, every row of the videos table, sorted by
  ``video_id`` -- including videos nobody interacted with, because a ranking
  over the full catalogue must be able to recommend (and be penalised for) them;
* users: every user of the users table (if given) plus every user seen in the
  interactions, sorted by ``user_id``.

Held-out users are kept whether or not they have a training interaction;
:attr:`Split.user_has_train` marks the ones that do ("warm" users), so an
evaluation can report all users, only warm ones, or only cold-start ones.

"Cold" items are those with no training interaction at all: a pure
collaborative model cannot have learnt anything about them. Temporal: first
interaction at/after ``valid_start``, or none; leave-last-out: every
interaction of theirs is some user's held-out one, or none.

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

from rec_core.data.lake import Lake

log = logging.getLogger(__name__)

PositiveRule = Literal["any", "completed", "liked"]
SplitPart = Literal["train", "valid", "test"]
Protocol = Literal["temporal", "leave-last-out"]

PROTOCOLS: tuple[Protocol, ...] = ("temporal", "leave-last-out")
_POSITIVE_RULES: tuple[str, ...] = ("any", "completed", "liked")
# A user cut here is never cut: every interaction of theirs is training.
NEVER_MS = int(np.iinfo(np.int64).max)
# Leave-last-out's rule: each user's last 10% for test, the 10% before for validation, users with 5 or more.
LLO_TEST_FRACTION = 0.1
LLO_VALID_FRACTION = 0.1
LLO_MIN_INTERACTIONS = 5


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
class Cuts:
    """What a prediction of one held-out part may know: each user's own rows before ``user_ms[u]``, everyone's
    before ``t_ms`` (the reference instant, from which windows and ages are measured)."""

    t_ms: int
    user_ms: np.ndarray  # int64 per user (NEVER_MS: only t_ms cuts them)

    @property
    def user_t_ms(self) -> np.ndarray:
        """int64 per user: the instant the user's own past ends, ``min(user_ms, t_ms)``."""
        return np.minimum(self.user_ms, self.t_ms)


@dataclass(frozen=True, slots=True)
class Split:
    user_ids: np.ndarray  # object array of str; position = user index
    item_ids: np.ndarray  # object array of str; position = item index; the full catalogue
    item_created_ms: np.ndarray  # int64, the video's created_at
    train: InteractionArrays
    valid: InteractionArrays
    test: InteractionArrays
    valid_start_ms: int  # the end of the model's knowledge (see the module docstring)
    test_start_ms: int
    user_has_train: np.ndarray  # bool per user: at least one train interaction ("warm")
    cold_item_mask: np.ndarray  # bool per item: no train interaction
    protocol: Protocol
    user_valid_start_ms: np.ndarray  # int64 per user: their validation cut (NEVER_MS: wholly in training)
    user_test_start_ms: np.ndarray  # int64 per user: their test cut
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

    @property
    def held_out_users(self) -> np.ndarray:
        """bool per user: some of their interactions may be held out (a cut before the end of time)."""
        return self.user_valid_start_ms < NEVER_MS

    def cuts(self, part: Literal["valid", "test"]) -> Cuts:
        """What a prediction of ``part`` may know (see the module docstring): validation, the training part;
        test, the training and validation parts."""
        if part == "valid":
            return Cuts(self.valid_start_ms, self.user_valid_start_ms)
        if part != "test":
            raise ValueError(f"cuts of 'valid' or 'test', got {part!r}")
        if self.protocol == "temporal":
            return Cuts(self.test_start_ms, self.user_test_start_ms)
        # Leave-last-out has no global test instant: the reference is just after the last row a user's test cut
        # keeps (a validation row can be later than every training row).
        latest = int(self.valid.ts_ms.max()) + 1 if len(self.valid) else self.valid_start_ms
        return Cuts(max(self.valid_start_ms, latest), self.user_test_start_ms)

    def window_before(self, back: int) -> Split | None:
        """This temporal split cut ``back`` validation windows earlier, the same users and catalogue indexed alike:
        its validation part holds as many interactions as this one's and ends where the window after it begins
        (windows of equal size, not equal length: a lake's early months are often quieter). Its validation part is
        one of the ranker's earlier label windows (rec_core.model.ranker_windows); everything from its test cut on is
        its test part (as this split holds it: a test part cut to a sample stays cut). None when no interaction is
        left before it to train on."""
        if self.protocol != "temporal":
            raise ValueError(f"earlier windows are cut from a temporal split, not {self.protocol}")
        if back < 1:
            raise ValueError(f"back must be at least 1, got {back}")
        parts = (self.train, self.valid, self.test)  # time-ordered parts of time-ordered rows: joined, still sorted
        rows = InteractionArrays(*(np.concatenate([getattr(p, f) for p in parts]) for f in InteractionArrays.__slots__))
        first, size = len(self.train) - back * len(self.valid), len(self.valid)
        if first <= 0 or size == 0:
            return None
        valid_ms, test_ms = int(rows.ts_ms[first]), int(rows.ts_ms[first + size])
        if valid_ms <= int(rows.ts_ms[0]) or valid_ms == test_ms:
            return None  # nothing before it to train on, or a window with no instant in it
        return _assemble(
            rows,
            self.user_ids,
            self.item_ids,
            self.item_created_ms,
            "temporal",
            np.full(self.n_users, valid_ms, dtype=np.int64),
            np.full(self.n_users, test_ms, dtype=np.int64),
            (valid_ms, test_ms),
            self.positive,
            self.min_completion,
        )

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
        out: dict[str, int | str] = {
            "protocol": self.protocol,
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
        if self.protocol == "leave-last-out":
            out["held_out_users"] = int(self.held_out_users.sum())
        return out


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
    _check_positive(positive)
    arrays, catalogue, user_frame = _indexed(interactions, videos, users)
    ts = arrays.ts_ms

    # "lower" picks an observed timestamp, so the cut is a real instant and the split is exact.
    valid_ms = _to_ms(valid_start) if valid_start is not None else int(np.quantile(ts, valid_quantile, method="lower"))
    test_ms = _to_ms(test_start) if test_start is not None else int(np.quantile(ts, test_quantile, method="lower"))
    if test_ms < valid_ms:
        raise ValueError("test_start must not be before valid_start")
    n_users = user_frame.height
    return _assemble(
        arrays,
        *_ids(catalogue, user_frame),
        "temporal",
        np.full(n_users, valid_ms, dtype=np.int64),
        np.full(n_users, test_ms, dtype=np.int64),
        (valid_ms, test_ms),
        positive,
        min_completion,
    )


def leave_last_out_split(
    interactions: pa.Table | pl.DataFrame,
    videos: pa.Table | pl.DataFrame,
    users: pa.Table | pl.DataFrame | None = None,
    *,
    test_fraction: float = LLO_TEST_FRACTION,
    valid_fraction: float = LLO_VALID_FRACTION,
    min_interactions: int = LLO_MIN_INTERACTIONS,
    positive: PositiveRule = "any",
    min_completion: float = 0.5,
) -> Split:
    """Split each user's interactions at their own two cuts; see the module docstring.

    Takes the tables of :func:`temporal_split`. A user with ``n >= min_interactions``
    interactions (in the catalogue) holds out ``ceil(test_fraction * n)`` for
    test, widened to whole instants, and ``ceil(valid_fraction * n)`` before
    those for validation, widened likewise.
    """
    if not (0.0 < test_fraction < 1.0 and 0.0 < valid_fraction < 1.0 and test_fraction + valid_fraction < 1.0):
        raise ValueError(f"need fractions in (0, 1) summing below 1, got {test_fraction}, {valid_fraction}")
    if min_interactions < 3:
        raise ValueError(f"min_interactions must be at least 3 (train, validation, test), got {min_interactions}")
    _check_positive(positive)
    arrays, catalogue, user_frame = _indexed(interactions, videos, users)
    n_users = user_frame.height

    # Each user's interactions in time order: a stable sort by user of the (ts, user, item)-sorted rows.
    by_user = np.argsort(arrays.user_idx, kind="stable")
    ts = arrays.ts_ms[by_user]
    counts = np.bincount(arrays.user_idx, minlength=n_users).astype(np.int64)
    starts = np.cumsum(counts) - counts
    # The small epsilon keeps 0.1 * 30 = 3.0000000000000004 from rounding up to 4.
    n_test = np.ceil(counts * test_fraction - 1e-9).astype(np.int64)
    n_valid = np.ceil(counts * valid_fraction - 1e-9).astype(np.int64)
    cut = np.flatnonzero(counts >= min_interactions)
    test_ms = np.full(n_users, NEVER_MS, dtype=np.int64)
    test_ms[cut] = ts[starts[cut] + counts[cut] - n_test[cut]]
    # Validation is counted back from the first test row, once ties have widened the test part.
    n_test_wide = np.bincount(arrays.user_idx[arrays.ts_ms >= test_ms[arrays.user_idx]], minlength=n_users)
    n_before = counts - n_test_wide - n_valid  # the user's rows before their validation cut (at least)
    valid_ms = test_ms.copy()
    fits = cut[n_before[cut] >= 1]
    valid_ms[fits] = ts[starts[fits] + n_before[fits]]
    # A validation cut tied with the user's first interaction would leave nothing to train on: no validation then
    # (it only steers early stopping). A test cut tied with it: the user is not cut at all.
    crowded = fits[valid_ms[fits] <= ts[starts[fits]]]
    valid_ms[crowded] = test_ms[crowded]
    uncut = cut[test_ms[cut] <= ts[starts[cut]]]
    test_ms[uncut] = NEVER_MS
    valid_ms[uncut] = NEVER_MS
    if len(uncut):
        log.info("leave-last-out: %d user(s) too tied in time to cut stay wholly in training", len(uncut))

    in_train = arrays.ts_ms < valid_ms[arrays.user_idx]
    end_ms = int(arrays.ts_ms[in_train].max()) + 1  # training is never empty: an uncut user keeps everything
    return _assemble(
        arrays,
        *_ids(catalogue, user_frame),
        "leave-last-out",
        valid_ms,
        test_ms,
        (end_ms, end_ms),
        positive,
        min_completion,
    )


def split_from_lake(lake: Lake, protocol: Protocol = "temporal", **kwargs: object) -> Split:
    """The ``protocol`` split of the lake's live version; ``kwargs`` go to its function unchanged."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    interactions = lake.read("interactions", columns=["user_id", "video_id", "ts", "completion", "liked"])
    videos = lake.read("videos", columns=["video_id", "created_at"])
    users = lake.read("users", columns=["user_id"]) if lake.has("users") else None
    make = temporal_split if protocol == "temporal" else leave_last_out_split
    return make(interactions, videos, users, **kwargs)  # type: ignore[arg-type]


def training_view(split: Split, frame: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``frame`` (``user_id``, ``ts_ms``) that training may see: each before its user's validation cut.

    For interactions and follows handed to the model code. Under the temporal
    protocol this is "before ``valid_start``"; rows of users the split does not
    know are cut there too.
    """
    return view_before(split, frame, split.cuts("valid"))


def view_before(split: Split, frame: pl.DataFrame, cuts: Cuts) -> pl.DataFrame:
    """The rows of ``frame`` (``user_id``, ``ts_ms``) a prediction at ``cuts`` may see (:meth:`Split.cuts`)."""
    return before_user_cuts(frame, split.user_ids, cuts.user_ms, cuts.t_ms)


def before_user_cuts(frame: pl.DataFrame, user_ids: np.ndarray, user_ms: np.ndarray, t_ms: int) -> pl.DataFrame:
    """The rows of ``frame`` (``user_id``, ``ts_ms``) before their user's cut (``user_ms``, aligned with
    ``user_ids``) and before ``t_ms``; rows of users not in ``user_ids``: before ``t_ms``."""
    cuts = pl.DataFrame(
        {"user_id": pl.Series(user_ids, dtype=pl.String), "_cut_ms": np.minimum(user_ms, t_ms)},
        schema={"user_id": pl.String, "_cut_ms": pl.Int64},
    )
    return (
        frame.join(cuts, on="user_id", how="left", maintain_order="left")
        .filter(pl.col("ts_ms") < pl.col("_cut_ms").fill_null(t_ms))
        .drop("_cut_ms")
    )


def with_positive(split: Split, positive: PositiveRule, min_completion: float | None = None) -> Split:
    """The same split with another positive rule (the arrays are shared, not copied)."""
    _check_positive(positive)
    threshold = split.min_completion if min_completion is None else float(min_completion)
    return dataclasses.replace(split, positive=positive, min_completion=threshold)


# ---- helpers -----------------------------------------------------------------


def _check_positive(positive: str) -> None:
    if positive not in _POSITIVE_RULES:
        raise ValueError(f"positive must be one of {', '.join(_POSITIVE_RULES)}, got {positive!r}")


def _indexed(
    interactions: pa.Table | pl.DataFrame, videos: pa.Table | pl.DataFrame, users: pa.Table | pl.DataFrame | None
) -> tuple[InteractionArrays, pl.DataFrame, pl.DataFrame]:
    """All interactions on the catalogue as arrays sorted by time, the catalogue and the users, both indexed."""
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
    arrays = InteractionArrays(
        user_idx=joined["user_idx"].to_numpy().astype(np.int32),
        item_idx=joined["item_idx"].to_numpy().astype(np.int32),
        ts_ms=joined["ts_ms"].to_numpy().astype(np.int64),
        completion=joined["completion"].to_numpy().astype(np.float32),
        liked=joined["liked"].to_numpy().astype(bool),
    )
    return arrays, catalogue, user_frame


def _ids(catalogue: pl.DataFrame, user_frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The user ids, video ids and videos' created_ms of a split, in index order."""
    return (
        user_frame["user_id"].to_numpy().astype(object),
        catalogue["video_id"].to_numpy().astype(object),
        catalogue["created_ms"].to_numpy().astype(np.int64),
    )


def _assemble(
    arrays: InteractionArrays,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    item_created_ms: np.ndarray,
    protocol: Protocol,
    user_valid_ms: np.ndarray,
    user_test_ms: np.ndarray,
    starts_ms: tuple[int, int],
    positive: PositiveRule,
    min_completion: float,
) -> Split:
    """The split of ``arrays`` at each user's cuts: one definition of the parts for both protocols."""
    valid_cut, test_cut = user_valid_ms[arrays.user_idx], user_test_ms[arrays.user_idx]
    train = arrays.select(arrays.ts_ms < valid_cut)
    valid = arrays.select((arrays.ts_ms >= valid_cut) & (arrays.ts_ms < test_cut))
    test = arrays.select(arrays.ts_ms >= test_cut)
    user_has_train = np.zeros(len(user_ids), dtype=bool)
    user_has_train[train.user_idx] = True
    cold = np.ones(len(item_ids), dtype=bool)
    cold[train.item_idx] = False
    split = Split(
        user_ids=user_ids,
        item_ids=item_ids,
        item_created_ms=item_created_ms,
        train=train,
        valid=valid,
        test=test,
        valid_start_ms=starts_ms[0],
        test_start_ms=starts_ms[1],
        user_has_train=user_has_train,
        cold_item_mask=cold,
        protocol=protocol,
        user_valid_start_ms=user_valid_ms,
        user_test_start_ms=user_test_ms,
        positive=positive,
        min_completion=float(min_completion),
    )
    log.info("split: %s", split.summary())
    return split


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
