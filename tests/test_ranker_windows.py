"""The ranker's earlier label windows (rec_core.model.ranker_windows): cut like the validation window from the same
rows, each window's examples from towers that never saw it, folds of users across windows, and nothing more on a
lake whose validation window holds enough users. Real training on the tiny world; the split's cuts on a table
small enough to count by hand."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from rec_core.data.split import leave_last_out_split, temporal_split
from rec_core.eval.evaluation import LakeData, load_lake_data
from rec_core.model import ranker_windows
from rec_core.model.ranker_windows import LabelWindows, ranker_examples
from rec_core.model.training import TrainConfig, TrainingData, train
from rec_core.rank.events import RankEvents
from rec_core.rank.examples import RankExamples, split_examples
from rec_core.rank.examples import pooled as concatenated
from rec_core.rank.ranker_training import user_folds
from rec_core.rank.retrieval import Towers
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data

TOWERS = TrainConfig(epochs=2, embedding_dim=32, batch_size=256, seed=3)
DAY = dt.timedelta(days=1)
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def _table(n: int = 100) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``n`` interactions one day apart, 5 users and 10 videos taking turns; every video posted before them."""
    interactions = pl.DataFrame(
        {
            "user_id": [f"u{i % 5}" for i in range(n)],
            "video_id": [f"v{i % 10}" for i in range(n)],
            "ts": [T0 + i * DAY for i in range(n)],
        }
    )
    videos = pl.DataFrame({"video_id": [f"v{i}" for i in range(10)], "created_at": [T0 - DAY] * 10})
    return interactions, videos


def test_an_earlier_window_holds_as_many_rows_and_ends_where_the_next_begins() -> None:
    interactions, videos = _table()
    split = temporal_split(interactions, videos, valid_start=T0 + 80 * DAY, test_start=T0 + 90 * DAY)
    assert (len(split.train), len(split.valid)) == (80, 10)
    later = split
    for back in range(1, 8):
        window = split.window_before(back)
        assert window is not None
        assert window.valid_start == T0 + (80 - 10 * back) * DAY
        assert window.test_start == later.valid_start  # windows tile the past without a gap or an overlap
        assert (len(window.train), len(window.valid)) == (80 - 10 * back, 10)
        # The same rows, users and catalogue, indexed alike: the split cut at those instants from the tables.
        direct = temporal_split(interactions, videos, valid_start=window.valid_start, test_start=window.test_start)
        for part in ("train", "valid", "test"):
            for field in ("user_idx", "item_idx", "ts_ms"):
                assert np.array_equal(getattr(window.part(part), field), getattr(direct.part(part), field))
        assert np.array_equal(window.user_ids, split.user_ids) and np.array_equal(window.item_ids, split.item_ids)
        later = window
    assert split.window_before(8) is None  # nothing before it to train on
    with pytest.raises(ValueError, match="at least 1"):
        split.window_before(0)
    with pytest.raises(ValueError, match="temporal"):
        leave_last_out_split(interactions, videos).window_before(1)


def test_folds_are_of_users_and_one_windows_folds_are_the_groups_permutation() -> None:
    users = np.array([5, 7, 5, 9, 7, 11, 5])
    folds = user_folds(users, 3, seed=0)
    for user in np.unique(users):
        assert len(set(folds[users == user])) == 1, "a user's lists in several windows share one fold"
    one_window = np.arange(0, 40, 3)
    expected = np.random.default_rng(4).permutation(len(one_window)) % 4
    assert np.array_equal(user_folds(one_window, 4, seed=4), expected)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, LakeData, Towers]:
    """The tiny world's lake and towers trained before its validation window (about 230 users with a positive)."""
    settings = Settings.load({}).override(data_dir=tmp_path_factory.mktemp("windows") / "data")
    generate_data(settings, "tiny", seed=11)
    data = load_lake_data(settings.paths, settings.batch)
    prepared = data.prepare(data.text(settings.paths, settings.model))
    return settings, data, Towers.from_training(train(prepared, TOWERS).model, prepared)


def _same(a: RankExamples, b: RankExamples) -> None:
    for field in ("features", "labels", "groups", "users"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.slow
def test_each_earlier_windows_examples_come_from_towers_that_never_saw_it(
    tiny: tuple[Settings, LakeData, Towers], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data, towers = tiny
    trained: list[TrainingData] = []

    def spy(prepared: TrainingData, config: TrainConfig):
        trained.append(prepared)
        return train(prepared, config)

    monkeypatch.setattr(ranker_windows, "train", spy)
    events = RankEvents.build(data.split.user_ids, data.videos, data.interactions, data.follows)
    pooled = ranker_examples(data, towers, LabelWindows(3, 10**6, TOWERS), 50, 2000, 0, 20, events)
    assert pooled.windows == 3 and len(trained) == 2
    frames = (data.videos, data.interactions, data.follows)
    latest = split_examples(towers, events, data.split, frames, 50, 2000, 0, 20)
    assert (pooled.t_ms, pooled.until_ms) == (latest.t_ms, latest.until_ms)
    for back, window_data in enumerate(trained, start=1):
        window = data.split.window_before(back)
        assert window is not None and window_data.split.valid_start_ms == window.valid_start_ms
        # Its towers trained on the rows before the window alone (their histories and early stopping too are as of
        # the split's cut: tests/test_training.py), nothing of the window or after it.
        assert np.array_equal(window_data.split.train.ts_ms, window.train.ts_ms)
        assert window_data.split.train.ts_ms.max() < window.valid_start_ms
    # The pool is the validation window's examples, then each earlier window's from towers trained the same way
    # again by hand (training is deterministic on the CPU): features as of the window's start, labels inside it.
    parts = [latest]
    for back in (1, 2):
        window = data.split.window_before(back)
        again = LakeData(data.dataset, data.lake_version, window, data.videos, data.interactions, data.follows)
        ready = again.prepare(towers.text)
        window_towers = Towers.from_training(train(ready, TOWERS).model, ready)
        part = split_examples(window_towers, events, window, frames, 50, 2000, 0, 20)
        assert (part.t_ms, part.until_ms) == (window.valid_start_ms, window.test_start_ms)
        parts.append(part)
    _same(pooled, concatenated(parts))
    assert len(pooled.groups) == sum(len(part.groups) for part in parts) > len(latest.groups)


@pytest.mark.slow
def test_a_validation_window_with_enough_users_trains_nothing_more(
    tiny: tuple[Settings, LakeData, Towers], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, data, towers = tiny

    def refuse(*_: object) -> None:
        raise AssertionError("no earlier window's towers should be trained")

    monkeypatch.setattr(ranker_windows, "train", refuse)
    frames = (data.videos, data.interactions, data.follows)
    events = RankEvents.build(data.split.user_ids, *frames)
    alone = split_examples(towers, events, data.split, frames, 50, 2000, 0, 20)
    for windows in (LabelWindows(4, len(alone.groups)), LabelWindows(1, 10**6)):
        examples = ranker_examples(data, towers, windows, 50, 2000, 0, 20, events)
        assert examples.windows == 1
        _same(examples, alone)
    # Leave-last-out labels every user in a window of their own: no earlier windows there, whatever the settings.
    llo = load_lake_data(settings.paths, settings.batch, "leave-last-out")
    llo_events = RankEvents.build(llo.split.user_ids, *frames)
    assert ranker_examples(llo, towers, LabelWindows(4, 10**6), 50, 2000, 0, 20, llo_events).windows == 1


def test_label_windows_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="most >= 1"):
        LabelWindows(0, 10)
    with pytest.raises(ValueError, match="min_users >= 0"):
        LabelWindows(2, -1)
