"""Temporal split: cuts, no leakage, full catalogue, cold items, determinism."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from rec_core.data.lake import Lake
from rec_core.data.split import leave_last_out_split, split_from_lake, temporal_split, with_positive
from rec_core.data.split_matrices import interaction_matrix, train_matrix

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def day(d: float) -> dt.datetime:
    return T0 + dt.timedelta(days=d)


def frame(rows: list[tuple]) -> pl.DataFrame:
    """Interactions from (user, video, day[, completion, liked]) tuples."""
    full = [(*r, 1.0, False)[:5] if len(r) == 3 else r for r in rows]
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in full],
            "video_id": [r[1] for r in full],
            "ts": [day(r[2]) for r in full],
            "completion": [float(r[3]) for r in full],
            "liked": [bool(r[4]) for r in full],
        }
    )


def videos(ids: list[str], created_day: float = -30.0) -> pl.DataFrame:
    return pl.DataFrame({"video_id": ids, "created_at": [day(created_day)] * len(ids)})


# Ten interactions on days 0..9; video "z" is in the catalogue but never watched.
ROWS = [
    ("u1", "a", 0),
    ("u2", "a", 1),
    ("u1", "b", 2),
    ("u3", "b", 3),
    ("u2", "c", 4),
    ("u1", "c", 5),
    ("u3", "a", 6),
    ("u1", "d", 7),  # validation
    ("u4", "e", 8),  # test: u4 is new, e is new
    ("u1", "a", 9),  # test: a re-watch
]
CATALOGUE = ["a", "b", "c", "d", "e", "z"]


def test_quantile_cuts_by_hand() -> None:
    split = temporal_split(frame(ROWS), videos(CATALOGUE))
    # 10 sorted timestamps: the "lower" 0.8 quantile is element floor(0.8 * 9) = 7, the 0.9 one element 8.
    assert split.valid_start == day(7) and split.test_start == day(8)
    assert (len(split.train), len(split.valid), len(split.test)) == (7, 1, 2)


def test_no_leakage_between_periods() -> None:
    split = temporal_split(frame(ROWS), videos(CATALOGUE))
    assert (split.train.ts_ms < split.valid_start_ms).all()
    assert ((split.valid.ts_ms >= split.valid_start_ms) & (split.valid.ts_ms < split.test_start_ms)).all()
    assert (split.test.ts_ms >= split.test_start_ms).all()
    assert len(split.train) + len(split.valid) + len(split.test) == len(ROWS)
    # The train matrix holds exactly the training pairs: (u1, d) and (u4, e) happen later.
    x = train_matrix(split).toarray()
    u, i = split.user_positions(["u1", "u4"]), split.item_positions(["d", "e"])
    assert x[u[0], i[0]] == 0 and x[u[1], i[1]] == 0
    assert x.sum() == 7  # seven distinct training pairs


def test_full_catalogue_cold_items_and_warm_users() -> None:
    users = pl.DataFrame({"user_id": ["u0"]})  # a registered user who never watched anything
    split = temporal_split(frame(ROWS), videos(CATALOGUE), users)
    assert list(split.item_ids) == CATALOGUE  # z included although never interacted with
    assert list(split.user_ids) == ["u0", "u1", "u2", "u3", "u4"]
    assert set(split.item_ids[split.cold_items]) == {"d", "e", "z"}
    assert dict(zip(split.user_ids, split.user_has_train, strict=True)) == {
        "u0": False,
        "u1": True,
        "u2": True,
        "u3": True,
        "u4": False,
    }
    assert split.summary()["cold_items"] == 3 and split.summary()["warm_users"] == 3


def test_result_does_not_depend_on_row_order() -> None:
    a = temporal_split(frame(ROWS), videos(CATALOGUE))
    shuffled = frame(ROWS).sample(fraction=1.0, shuffle=True, seed=3)
    b = temporal_split(shuffled, videos(CATALOGUE[::-1]))
    for part in ("train", "valid", "test"):
        pa_, pb = a.part(part), b.part(part)
        for field in ("user_idx", "item_idx", "ts_ms", "completion", "liked"):
            assert np.array_equal(getattr(pa_, field), getattr(pb, field)), (part, field)
    assert np.array_equal(a.item_ids, b.item_ids) and np.array_equal(a.user_ids, b.user_ids)


def test_explicit_cuts_and_arrow_input() -> None:
    table = frame(ROWS).to_arrow()
    split = temporal_split(table, videos(CATALOGUE).to_arrow(), valid_start=day(5), test_start=day(5))
    assert (len(split.train), len(split.valid), len(split.test)) == (5, 0, 5)
    with pytest.raises(ValueError, match="timezone"):
        temporal_split(table, videos(CATALOGUE), valid_start=dt.datetime(2026, 1, 5))
    with pytest.raises(ValueError, match="quantile"):
        temporal_split(table, videos(CATALOGUE), valid_quantile=0.9, test_quantile=0.8)
    with pytest.raises(ValueError, match="empty"):
        temporal_split(frame(ROWS).head(0), videos(CATALOGUE))


def test_positive_rules_filter_only_the_held_out_targets() -> None:
    rows = [("u1", "a", 0, 0.9, False), ("u1", "b", 10, 0.2, True), ("u1", "c", 11, 0.7, False)]
    split = temporal_split(frame(rows), videos(["a", "b", "c"]), valid_start=day(5), test_start=day(5))
    names = lambda part: sorted(split.item_ids[part.item_idx])  # noqa: E731
    assert names(split.positives("test")) == ["b", "c"]
    completed = with_positive(split, "completed")
    assert sorted(completed.item_ids[completed.positives("test").item_idx]) == ["c"]
    liked = with_positive(split, "liked")
    assert sorted(liked.item_ids[liked.positives("test").item_idx]) == ["b"]
    strict = with_positive(split, "completed", min_completion=0.8)
    assert len(strict.positives("test")) == 0
    assert len(liked.train) == 1  # training data is never filtered
    with pytest.raises(ValueError, match="positive"):
        temporal_split(frame(rows), videos(["a", "b", "c"]), positive="watched")  # type: ignore[arg-type]


def test_matrix_weights() -> None:
    rows = [("u1", "a", 0, 0.5, False), ("u1", "a", 1, 0.25, False), ("u1", "b", 2, 1.0, False), ("u2", "b", 9)]
    split = temporal_split(frame(rows), videos(["a", "b"]), valid_start=day(5), test_start=day(5))
    assert train_matrix(split).toarray().tolist() == [[1, 1], [0, 0]]
    assert train_matrix(split, "count").toarray().tolist() == [[2, 1], [0, 0]]
    assert train_matrix(split, "completion").toarray().tolist() == [[0.75, 1.0], [0, 0]]
    assert interaction_matrix(split, "test").toarray().tolist() == [[0, 0], [0, 1]]
    assert train_matrix(split).shape == (split.n_users, split.n_items)


def test_unknown_videos_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rec_core.data.split"):
        split = temporal_split(frame([*ROWS, ("u1", "ghost", 3)]), videos(CATALOGUE))
    assert "dropped 1 interaction" in caplog.text
    assert len(split.train) + len(split.valid) + len(split.test) == len(ROWS)


def test_positions() -> None:
    split = temporal_split(frame(ROWS), videos(CATALOGUE))
    assert split.item_positions(["z", "a"]).tolist() == [5, 0]
    assert split.user_positions(np.array(["u4"], dtype=object)).tolist() == [3]
    with pytest.raises(KeyError, match="nope"):
        split.item_positions(["a", "nope"])


def test_split_from_lake(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    n = len(CATALOGUE)
    video_table = pa.table(
        {
            "video_id": CATALOGUE,
            "creator_id": ["c"] * n,
            "caption": [""] * n,
            "hashtags": [[] for _ in range(n)],
            "duration_s": [10.0] * n,
            "width": [720] * n,
            "height": [1280] * n,
            "created_at": [day(-30)] * n,
            **{col: [0] * n for col in ("creator_followers", "creator_likes", "views", "likes", "comments", "shares")},
        }
    )
    inter = frame(ROWS).with_columns(
        pl.lit(1.0).alias("watch_time_s"), pl.lit(False).alias("shared"), pl.lit(False).alias("commented")
    )
    lake.commit({"videos": video_table, "interactions": inter.to_arrow()}, source="test")
    split = split_from_lake(lake)
    direct = temporal_split(frame(ROWS), videos(CATALOGUE))
    assert np.array_equal(split.train.item_idx, direct.train.item_idx)
    assert split.valid_start == direct.valid_start
    assert np.array_equal(split.item_created_ms, np.full(n, int(day(-30).timestamp() * 1000)))
    per_user = split_from_lake(lake, "leave-last-out", min_interactions=3)
    direct = leave_last_out_split(frame(ROWS), videos(CATALOGUE), min_interactions=3)
    assert per_user.summary() == direct.summary() and per_user.summary()["protocol"] == "leave-last-out"
    assert np.array_equal(per_user.test.user_idx, direct.test.user_idx)
    with pytest.raises(ValueError, match="protocol"):
        split_from_lake(lake, "random")  # type: ignore[arg-type]


def test_the_global_cuts_are_every_users_cuts() -> None:
    split = temporal_split(frame(ROWS), videos(CATALOGUE))
    assert split.protocol == "temporal" and split.summary()["protocol"] == "temporal"
    assert (split.user_valid_start_ms == split.valid_start_ms).all()
    assert (split.user_test_start_ms == split.test_start_ms).all()
    assert split.held_out_users.all()
