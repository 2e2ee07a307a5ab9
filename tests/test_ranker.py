"""The ranking stage: features as of t never read t or later, the ranker learns what it is shown, it saves and loads
exactly, and retrieval + ranking scores the full catalogue like any other model."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rec_core.data.split_matrices import interaction_matrix
from rec_core.eval.evaluation import LakeData, load_lake_data
from rec_core.eval.ranking_metrics import evaluate_scores
from rec_core.model.ranking import ranker_objectives
from rec_core.model.towers import TowerConfig, TwoTower
from rec_core.rank.candidates import POPULAR_SOURCE, candidate_block, popular_items, with_popular
from rec_core.rank.events import RankEvents
from rec_core.rank.examples import (
    RankExamples,
    as_of_split,
    build_examples,
    example_users,
    label_matrix,
    split_examples,
)
from rec_core.rank.features import FEATURES, TIME_ONLY, block_features
from rec_core.rank.ranker import OBJECTIVES, Ranker, RankerConfig
from rec_core.rank.ranker_training import choose_objective, list_metrics, train_ranker
from rec_core.rank.retrieval import PostedVideos, Towers, TowerView, tower_view
from rec_core.rank.scoring import RankedRetrieval, rank_order
from rec_core.rank.state import AsOfState, PairCounts, state_at
from rec_core.runtime import thread_budget
from rec_core.settings import ModelSettings, Settings
from rec_core.synthetic.commit import generate_data

DAY_MS = 86_400_000
FAST = RankerConfig(max_rounds=60, early_stopping=15, min_data_in_leaf=20, folds=3, cv_groups=0)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings.load({}).override(data_dir=tmp_path_factory.mktemp("rank") / "data")
    generate_data(settings, "tiny", seed=11)
    return settings


@pytest.fixture(scope="module")
def world(lake: Settings) -> tuple[LakeData, Towers]:
    """The tiny synthetic world and towers over it. The towers are untrained and read seeded random caption vectors:
    these tests are about what the ranking stage does with whatever towers it is given, and training them or
    encoding captions would be most of this file's time (tests/test_training.py covers both)."""
    data = load_lake_data(lake.paths, lake.batch)
    text = np.random.default_rng(0).normal(size=(data.videos.height, 384)).astype(np.float32)
    prepared = data.prepare(text / np.linalg.norm(text, axis=1, keepdims=True))
    n_items, n_creators, n_tags = prepared.vocabs.sizes
    torch.manual_seed(0)
    config = TowerConfig(text_dim=text.shape[1], n_items=n_items, n_creators=n_creators, n_hashtags=n_tags)
    model = TwoTower(config)
    return data, Towers.from_training(model, prepared)


def _frames(data: LakeData) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    return data.videos, data.interactions, data.follows


@pytest.fixture(scope="module")
def llo(lake: Settings) -> LakeData:
    """The same world under the leave-last-out split (the towers of ``world`` read it: the catalogue is the same)."""
    return load_lake_data(lake.paths, lake.batch, "leave-last-out")


def _as_of(
    towers: Towers, user_ids: np.ndarray, frames: tuple[pl.DataFrame, ...], t: int, user_cut: np.ndarray | None = None
) -> tuple[TowerView, AsOfState]:
    view = tower_view(towers, user_ids, *frames, t, user_cut)
    return view, state_at(RankEvents.build(user_ids, *frames), t, user_cut)


def _features_on(view: TowerView, state: AsOfState, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Every feature of fixed (user, item) pairs, the towers' signals included, as of the view's / state's t."""
    user_vecs = view.user_vectors(users)
    scores = np.take_along_axis(view.scores(user_vecs).numpy(), items, axis=1)
    features, _ = block_features(state, users, items, scores, view.engagement(user_vecs, items))
    return features


def _append_after(
    data: LakeData, users: np.ndarray, items: np.ndarray, t: int | np.ndarray, later: int | np.ndarray
) -> tuple[pl.DataFrame, ...]:
    """The frames plus watches and likes of each user's first candidates by the user at ``t`` and by another of
    ``users`` at ``later`` (popularity moves), and follows of those candidates' creators by the user at ``t``:
    events that touch every feature of these pairs. ``t`` and ``later``: one instant, or one per user."""
    split = data.split
    user_ids = split.user_ids[np.repeat(users, 5)]
    video_ids = split.item_ids[items[:, :5].reshape(-1)]
    others = np.roll(np.repeat(np.arange(len(users)), 5), 1)  # someone else watches them too
    at, other_at = (np.broadcast_to(np.asarray(x, dtype=np.int64), len(users)) for x in (t, later))
    new = pl.DataFrame(
        {
            "user_id": [*user_ids, *split.user_ids[users[others]]],
            "video_id": [*video_ids, *video_ids],
            "ts_ms": np.concatenate([np.repeat(at, 5), other_at[others]]),
        }
    )
    interactions = _like(data.interactions, new).with_columns(
        pl.lit(1.0, pl.Float32).alias("completion"), pl.lit(True).alias("liked")
    )
    creators = data.videos["creator_id"].to_numpy()[items[:, :3].reshape(-1)]
    follows = _like(
        data.follows,
        pl.DataFrame(
            {"user_id": [*np.repeat(split.user_ids[users], 3)], "creator_id": [*creators], "ts_ms": np.repeat(at, 3)}
        ),
    )
    return (
        data.videos,
        pl.concat([data.interactions, interactions]),
        pl.concat([data.follows, follows]),
    )


def _like(frame: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    """``new``'s rows with ``frame``'s columns: ``ts`` from ``ts_ms``, any other column from ``frame``'s first row."""
    rest = frame.head(1).drop(*new.columns, "ts")
    out = new.join(rest, how="cross").with_columns(
        pl.from_epoch("ts_ms", time_unit="ms").dt.replace_time_zone("UTC").alias("ts")
    )
    return out.select(frame.columns).cast(frame.schema)


def test_features_as_of_t_never_read_t_or_later(world: tuple[LakeData, Towers]) -> None:
    """Appending interactions and follows at or after t leaves every feature (and the candidates) as of t unchanged.

    The same appended events, seen from a later instant, change every column that reads interactions or follows:
    so a feature that looked past its example's t would fail the first check, not slip through it.
    """
    data, towers = world
    split = data.split
    t = split.valid_start_ms
    users = np.unique(split.valid.user_idx)[:40]
    view, state = _as_of(towers, split.user_ids, _frames(data), t)
    before = candidate_block(view, state, users, n=60)
    appended = _append_after(data, users, before.items, t, t + DAY_MS)
    view_a, state_a = _as_of(towers, split.user_ids, appended, t)
    after = candidate_block(view_a, state_a, users, n=60)
    np.testing.assert_array_equal(after.items, before.items)
    np.testing.assert_array_equal(after.features, before.features)  # NaN-aware: equal NaNs pass

    late = t + 3 * DAY_MS // 2  # the appended events are then within the last 1 day
    plain = _features_on(*_as_of(towers, split.user_ids, _frames(data), late), users, before.items)
    leaked = _features_on(*_as_of(towers, split.user_ids, appended, late), users, before.items)
    changed = {name for k, name in enumerate(FEATURES) if not np.array_equal(plain[:, k], leaked[:, k])}
    assert changed == set(FEATURES) - set(TIME_ONLY), set(FEATURES) - set(TIME_ONLY) - changed


def test_under_leave_last_out_no_feature_reads_a_users_own_rows_from_their_cut(
    world: tuple[LakeData, Towers], llo: LakeData
) -> None:
    """Each user has their own cut: rows of a user at or after it (their validation and test) reach none of the
    features, neither that user's nor, through popularity, anyone else's; other users' earlier rows may.

    The appended rows are each user's own (at their cut, and half a day before the reference instant t, which is
    after their cut) and another user's, after that user's cut too. Moving these users' cuts to t makes every
    column that reads interactions or follows change: a feature that ignored the cuts would fail the first check."""
    _, towers = world
    split = llo.split
    cuts = split.cuts("valid")
    t = cuts.t_ms
    # Users cut over two days before t, so that their own later rows fall inside every window ending at t.
    users = np.flatnonzero(split.held_out_users & (cuts.user_ms < t - 2 * DAY_MS))[:40]
    assert len(users) == 40
    view, state = _as_of(towers, split.user_ids, _frames(llo), t, cuts.user_ms)
    np.testing.assert_array_equal(state.user_t_ms[users], cuts.user_ms[users])
    before = candidate_block(view, state, users, n=60)
    appended = _append_after(llo, users, before.items, cuts.user_ms[users], t - DAY_MS // 2)
    after = candidate_block(*_as_of(towers, split.user_ids, appended, t, cuts.user_ms), users, n=60)
    np.testing.assert_array_equal(after.items, before.items)
    np.testing.assert_array_equal(after.features, before.features)

    lifted = cuts.user_ms.copy()
    lifted[users] = t  # the same users, seen from t: their appended rows are then their past
    appended = _append_after(llo, users, before.items, t - DAY_MS // 2, t - DAY_MS // 2)
    plain = _features_on(*_as_of(towers, split.user_ids, _frames(llo), t, lifted), users, before.items)
    leaked = _features_on(*_as_of(towers, split.user_ids, appended, t, lifted), users, before.items)
    changed = {name for k, name in enumerate(FEATURES) if not np.array_equal(plain[:, k], leaked[:, k])}
    assert changed == set(FEATURES) - set(TIME_ONLY), set(FEATURES) - set(TIME_ONLY) - changed


def test_under_leave_last_out_examples_see_the_training_part_and_are_labelled_by_the_validation_part(
    world: tuple[LakeData, Towers], llo: LakeData
) -> None:
    """Validation examples know exactly each user's training rows and are labelled by exactly their validation
    rows; the test is scored knowing exactly the training and validation rows."""
    _, towers = world
    split = llo.split
    events = RankEvents.build(split.user_ids, *_frames(llo))
    _, valid_state = as_of_split(towers, events, split, _frames(llo), "valid")
    _, test_state = as_of_split(towers, events, split, _frames(llo), "test")
    train, valid = interaction_matrix(split, "train"), interaction_matrix(split, "valid")
    assert (valid_state.seen.astype(bool) != train.astype(bool)).nnz == 0
    assert (test_state.seen.astype(bool) != (train + valid).astype(bool)).nnz == 0
    assert valid_state.user_events.sum() == len(split.train)
    labels = label_matrix(events, valid_state.user_t_ms, split.user_test_start_ms)
    assert ((labels > 0) != valid.astype(bool)).nnz == 0
    examples = split_examples(towers, events, split, _frames(llo), n=100, max_users=10_000)
    assert examples.t_ms == split.valid_start_ms and examples.until_ms == split.cuts("test").t_ms
    assert set(examples.users.tolist()) <= set(split.valid.user_idx.tolist()) and len(examples.groups) >= 50


def _planted_examples(rng: np.random.Generator, n_groups: int, width: int = 60) -> RankExamples:
    """Candidate lists where what the user watches is planted in two columns the towers' order ignores: they watch
    videos of creators they follow and videos that are trending now; the towers' position is only weakly related."""
    rows = n_groups * width
    x = rng.normal(size=(rows, len(FEATURES))).astype(np.float32)
    follows = rng.random(rows) < 0.15
    trend = rng.random(rows)
    rank = np.tile(np.arange(width), n_groups)
    logit = 2.5 * follows + 3.0 * trend - 0.01 * rank - 3.0
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int32)
    x[:, FEATURES.index("follows_creator")] = follows
    x[:, FEATURES.index("share_7d")] = trend
    x[:, FEATURES.index("tower_rank")] = rank
    return RankExamples(x, labels, np.full(n_groups, width), np.arange(n_groups), 0, 1, width, 1.0)


def test_a_view_of_some_users_scores_them_as_the_whole_view_does_and_refuses_the_others(
    world: tuple[LakeData, Towers],
) -> None:
    """An evaluation's view builds only its users' histories (``tower_view(users=...)``): their vectors, and so their
    candidates, are the whole view's to the bit, and a user it did not build is refused, not read as a newcomer."""
    data, towers = world
    split = data.split
    t = split.test_start_ms
    users = np.unique(split.test.user_idx)
    some, others = users[::2], users[1::2]
    whole = tower_view(towers, split.user_ids, *_frames(data), t)
    part = tower_view(towers, split.user_ids, *_frames(data), t, users=some)
    assert torch.equal(part.user_vectors(some), whole.user_vectors(some))
    assert torch.equal(part.video_vectors, whole.video_vectors)
    with pytest.raises(ValueError, match="not built"):
        part.user_vectors(others[:3])


@pytest.mark.parametrize("protocol", ["temporal", "leave-last-out"])
def test_examples_of_a_sample_of_users_are_those_a_view_of_every_user_gives(
    world: tuple[LakeData, Towers], llo: LakeData, protocol: str
) -> None:
    """``split_examples`` builds the towers' view of its sampled users alone: their examples must be the ones a view
    of every user gives, to the bit (features, labels, groups, users), under both protocols."""
    data = world[0] if protocol == "temporal" else llo
    towers, split = world[1], data.split
    events = RankEvents.build(split.user_ids, *_frames(data))
    sampled = split_examples(towers, events, split, _frames(data), n=60, max_users=40)
    view, state = as_of_split(towers, events, split, _frames(data), "valid")
    user_until = None if protocol == "temporal" else split.user_test_start_ms
    whole = build_examples(view, state, split.cuts("test").t_ms, 60, 40, user_until_ms=user_until)
    assert len(example_users(state, split.cuts("test").t_ms, 40, user_until_ms=user_until)[1]) == 40
    for name in ("features", "labels", "groups", "users"):
        np.testing.assert_array_equal(getattr(sampled, name), getattr(whole, name), err_msg=name)


def test_the_ranker_learns_a_planted_signal_the_towers_order_misses() -> None:
    rng = np.random.default_rng(0)
    train, test = _planted_examples(rng, 240), _planted_examples(rng, 120)
    chosen, rankers = choose_objective(train, FAST)
    assert set(rankers) == set(OBJECTIVES) and chosen in rankers.values()
    tower_ndcg, _ = list_metrics(-test.features[:, FEATURES.index("tower_rank")], test, 20)
    for objective, ranker in rankers.items():
        ndcg, _ = list_metrics(ranker.predict(test.features), test, 20)
        assert ndcg > tower_ndcg + 0.15, (objective, ndcg, tower_ndcg)
        # Cross-validation measured the same gain without the test groups.
        assert ranker.cv[objective]["ndcg"] > ranker.cv[objective]["tower_ndcg"] + 0.15
    importance = dict(zip(FEATURES, chosen.booster.feature_importance("gain"), strict=True))
    assert set(sorted(importance, key=importance.__getitem__)[-2:]) == {"follows_creator", "share_7d"}


def test_one_named_objective_trains_one_ranker_with_one_cross_validation_pass() -> None:
    """REC_RANKER_OBJECTIVE=binary: nothing to compare, so the folds are not redrawn (auto redraws them on small data
    to make the comparison stable)."""
    examples = _planted_examples(np.random.default_rng(2), 60)
    config = dataclasses.replace(FAST, cv_groups=1000)  # 60 groups: auto would draw the folds 5 times
    chosen, rankers = choose_objective(examples, config, ranker_objectives(ModelSettings(ranker_objective="binary")))
    assert set(rankers) == {"binary"} and chosen.config.objective == "binary"
    assert len(chosen.cv["binary"]["rounds"]) == config.folds
    _, both = choose_objective(examples, config, ranker_objectives(ModelSettings(ranker_objective="auto")))
    assert set(both) == set(OBJECTIVES) and len(both["binary"].cv["binary"]["rounds"]) > config.folds


def test_folds_fitted_at_once_give_the_ranker_fitted_one_at_a_time() -> None:
    """A release cross-validates as many folds at once as it has threads: every fold's fit, the rounds kept and
    the refitted model must be what one fold at a time gives, whatever order the threads finish in."""
    examples = _planted_examples(np.random.default_rng(3), 60)
    config = dataclasses.replace(FAST, cv_groups=150)  # 60 groups: the folds drawn three times, 9 fits
    alone = train_ranker(examples, config, workers=1)
    for workers in (2, 4):
        together = train_ranker(examples, config, workers=workers)
        assert together.cv == alone.cv and len(together.cv[config.objective]["rounds"]) == 9
        assert together.model == alone.model


def test_a_release_fits_as_many_folds_at_once_as_its_job_may_keep_threads_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert thread_budget(ModelSettings(torch_threads=3)) == 3  # REC_TORCH_THREADS, where a worker sets it
    assert thread_budget(ModelSettings(torch_threads=0)) == 2  # else OpenMP's cap, where the process has one
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert thread_budget(ModelSettings(torch_threads=0)) == len(os.sched_getaffinity(0))


def test_save_and_load_give_identical_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    examples = _planted_examples(rng, 60)
    ranker = train_ranker(examples, FAST)
    loaded = Ranker.load(ranker.save(tmp_path / "ranker"))
    np.testing.assert_array_equal(loaded.predict(examples.features), ranker.predict(examples.features))
    assert (loaded.n_candidates, loaded.rounds, loaded.config) == (ranker.n_candidates, ranker.rounds, ranker.config)
    meta = (tmp_path / "ranker" / "ranker.json").read_text()
    assert '"as_of_rule"' in meta and '"features"' in meta
    # Columns are positional: a ranker saved with other features is refused, not misread.
    (tmp_path / "ranker" / "ranker.json").write_text(meta.replace('"tower_score"', '"another_feature"'))
    with pytest.raises(ValueError, match="other features"):
        Ranker.load(tmp_path / "ranker")


def test_rank_order_puts_missing_candidates_last_and_keeps_the_towers_order_on_ties() -> None:
    class Constant:
        def predict(self, features: np.ndarray) -> np.ndarray:
            return np.where(features[:, 0] > 0, 1.0, 0.0)

    valid = np.array([[True, False, True, True], [True, True, True, True]])
    features = np.array([[0], [1], [0], [0], [0], [1], [1]], dtype=np.float32)
    order = rank_order(Constant(), features, valid)  # type: ignore[arg-type]
    np.testing.assert_array_equal(order, [[2, 0, 3, 1], [2, 3, 0, 1]])


def test_retrieval_plus_ranker_scores_the_full_catalogue_and_beats_retrieval_alone(
    world: tuple[LakeData, Towers], tmp_path: Path
) -> None:
    """End to end on the tiny world: examples from the validation window, the ranker applied as of test_start over
    the full catalogue by the project's own evaluation; it must beat the same candidates in the towers' order,
    and a saved and loaded ranker must give the very same scores."""
    data, towers = world
    split = data.split
    events = RankEvents.build(split.user_ids, *_frames(data))
    examples = split_examples(towers, events, split, _frames(data), n=200, max_users=300)
    assert examples.t_ms == split.valid_start_ms and examples.until_ms == split.test_start_ms
    assert len(examples.groups) >= 100 and 0 < (examples.labels > 0).mean() < 0.5
    ranker = train_ranker(examples, dataclasses.replace(FAST, objective="lambdarank"))
    view, state = _as_of(towers, split.user_ids, _frames(data), split.test_start_ms)
    ranked = RankedRetrieval(view, state, ranker, n=200)
    alone = evaluate_scores(RankedRetrieval(view, state, None, n=200), split, on="test")
    with_ranker = evaluate_scores(ranked, split, on="test")
    assert with_ranker["recall@20"] > alone["recall@20"] + 0.02, (with_ranker, alone)
    assert with_ranker["ndcg@20"] > alone["ndcg@20"] + 0.02
    assert ranked.users_per_second() > 0
    users = np.unique(split.test.user_idx)[:50]
    loaded = RankedRetrieval(view, state, Ranker.load(ranker.save(tmp_path / "r")), n=200)
    np.testing.assert_array_equal(loaded(users).numpy(), ranked(users).numpy())


def test_candidates_are_the_best_posted_unseen_videos() -> None:
    """``PostedVideos.top`` searches the posted videos alone, tile by tile, with each user's seen ones left out; it
    must equal a selection from the full masked product: on ties (the lower index first), for a user with fewer
    posted unseen videos than it takes, for one who has seen them all, and for unordered and repeated seen rows."""
    rng = np.random.default_rng(5)
    n_items, dim, n = 20_000, 8, 40
    posted = rng.random(n_items) < 0.8
    vectors = rng.standard_normal((n_items, dim)).astype(np.float32)
    vectors[:300] = vectors[0]  # ties for every user
    user_vecs = rng.standard_normal((7, dim)).astype(np.float32)
    seen = np.zeros((7, n_items), dtype=bool)
    seen[1, rng.choice(n_items, 500, replace=False)] = True
    seen[2, np.flatnonzero(posted)[n // 2 :]] = True  # n / 2 posted videos left unseen
    seen[3, posted] = True  # none left
    seen[4, :150] = True  # half of the tied videos
    # Columns unordered within rows, one twice: the shape a matrix built straight from events may have.
    per_row = [rng.permutation(np.flatnonzero(row)) for row in seen]
    per_row[1] = np.append(per_row[1], per_row[1][0])
    indptr = np.cumsum([0, *map(len, per_row)])
    indices = np.concatenate(per_row)
    seen_csr = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=seen.shape)
    assert not seen_csr.has_sorted_indices
    users = np.array([4, 0, 2, 6, 3, 1, 5])
    top = PostedVideos.of(torch.from_numpy(vectors), posted)
    items, values = top.top(torch.from_numpy(user_vecs[users]), seen_csr, users, n)
    full = user_vecs[users] @ vectors.T
    for r, u in enumerate(users):
        masked = np.where(posted & ~seen[u], full[r], -np.inf)
        best = np.lexsort((np.arange(n_items), -masked))[:n]
        real = np.isfinite(masked[best])
        assert items[r].tolist() == np.where(real, best, -1).tolist(), u
        np.testing.assert_allclose(values[r], np.where(real, masked[best], np.nan), rtol=1e-5)
    assert (items[users == 2] == -1).sum() == n - n // 2
    assert (items[users == 3] == -1).all() and np.isnan(values[users == 3]).all()


def test_popular_candidates_sit_behind_the_towers_list_once_and_never_seen() -> None:
    """The layout every path gives a ranker trained on popular videos (pure logic): the towers' top n, then the
    popular videos the row's top n does not hold and the user has not seen, then the rest of a deeper top-k
    without what the popular part kept."""
    items = np.array([[5, 3, 9, 7, 1], [2, 4, -1, -1, -1]])
    scores = np.where(items >= 0, np.arange(10).reshape(2, 5), np.nan).astype(np.float32)
    popular = np.array([9, 1, 4, 6])
    popular_scores = np.array([[0.9, 0.1, 0.4, -np.inf], [0.9, np.nan, 0.4, 0.6]], dtype=np.float32)
    laid, laid_scores = with_popular(items, scores, popular, popular_scores, n=2)
    np.testing.assert_array_equal(laid[0], [5, 3, 9, 1, 4, -1, -1, 7, -1])  # 6 seen; 9 and 1 leave the rest
    np.testing.assert_array_equal(laid[1], [2, 4, 9, -1, -1, 6, -1, -1, -1])  # 4 is the towers'; 1 unscored
    assert np.isnan(laid_scores[laid < 0]).all() and laid_scores[0, 2] == np.float32(0.9)
    for row in laid:
        kept = row[row >= 0]
        assert len(kept) == len(set(kept.tolist()))
    only_towers, _ = with_popular(items[:, :2], scores[:, :2], popular, popular_scores)
    np.testing.assert_array_equal(only_towers[0], [5, 3, 9, 1, 4, -1])


@settings(deadline=None)  # the first example also loads the compiled lookup
@given(seed=st.integers(0, 10_000), n_rows=st.integers(1, 12), n_cols=st.integers(1, 9), grouped=st.booleans())
def test_pair_counts_read_the_value_at_each_pair_and_zero_elsewhere(
    seed: int, n_rows: int, n_cols: int, grouped: bool
) -> None:
    """PairCounts.get against a dict, on random tables and lookups in any order, rows and columns outside the table
    included (pure logic)."""
    rng = np.random.default_rng(seed)
    table = {(int(r), int(c)): float(v) for r, c, v in rng.integers(0, [n_rows, n_cols, 100], (rng.integers(0, 20), 3))}
    keys = np.array(sorted(r * n_cols + c for r, c in table), dtype=np.int64)
    values = np.array([table[divmod(int(k), n_cols)] for k in keys], dtype=np.float32)
    counts = PairCounts(keys, values, n_cols)
    rows, cols = rng.integers(-1, n_rows + 2, 60), rng.integers(-1, n_cols + 2, 60)
    if grouped:
        rows = np.sort(rows)
    expected = [table.get((int(r), int(c)), 0.0) for r, c in zip(rows, cols, strict=True)]
    np.testing.assert_array_equal(counts.get(rows, cols), np.array(expected, dtype=np.float32))
    np.testing.assert_array_equal(counts.get(rows.reshape(6, 10), cols.reshape(6, 10)).ravel(), expected)


@given(seed=st.integers(0, 10_000), rows=st.integers(1, 8), n=st.integers(0, 6), deeper=st.integers(0, 6))
def test_popular_layout_is_the_rule_row_by_row(seed: int, rows: int, n: int, deeper: int) -> None:
    """with_popular against its rule spelled out with a set per row, on random lists (pure logic)."""
    rng = np.random.default_rng(seed)
    items = np.stack([rng.permutation(30)[: n + deeper] for _ in range(rows)]).reshape(rows, n + deeper)
    items[rng.random(items.shape) < 0.2] = -1
    scores = np.where(items >= 0, rng.random(items.shape), np.nan).astype(np.float32)
    popular = rng.permutation(30)[: rng.integers(0, 8)]
    popular_scores = rng.random((rows, len(popular))).astype(np.float32)
    popular_scores[rng.random(popular_scores.shape) < 0.3] = -np.inf
    laid, laid_scores = with_popular(items, scores, popular, popular_scores, n=n)
    for r in range(rows):
        head = items[r, :n].tolist()
        unseen = np.isfinite(popular_scores[r]).tolist()
        extra = [v if ok and v not in head else -1 for v, ok in zip(popular.tolist(), unseen, strict=True)]
        rest = [v if v not in extra else -1 for v in items[r, n:].tolist()]
        np.testing.assert_array_equal(laid[r], head + extra + rest)
    assert np.isnan(laid_scores[laid < 0]).all()
    np.testing.assert_array_equal(laid_scores[:, :n], scores[:, :n])


def test_a_ranker_trained_with_popular_videos_ranks_them_everywhere_it_is_applied(
    world: tuple[LakeData, Towers], tmp_path: Path
) -> None:
    """Examples over the towers' top 60 and the 30 most popular videos as of the cut: the popular ones are in the
    examples with tower_rank 60, a saved ranker carries its count and rule, and the evaluation ranks the same
    candidates with it (the popular videos it lifts into the top 20 are ones the towers' top 60 did not hold)."""
    data, towers = world
    split = data.split
    events = RankEvents.build(split.user_ids, *_frames(data))
    examples = split_examples(towers, events, split, _frames(data), n=60, max_users=300, n_popular=30)
    rank = examples.features[:, FEATURES.index("tower_rank")]
    assert rank.max() == 60 and (rank == 60).sum() > len(examples.groups), "popular rows behind the towers' 60"
    ranker = train_ranker(examples, dataclasses.replace(FAST, objective="binary"))
    loaded = Ranker.load(ranker.save(tmp_path / "r"))
    assert (loaded.n_candidates, loaded.n_popular, loaded.popular_source) == (60, 30, POPULAR_SOURCE)
    view, state = _as_of(towers, split.user_ids, _frames(data), split.test_start_ms)
    users = np.unique(split.test.user_idx)[:100]
    block = candidate_block(view, state, users, 60, popular_items(state, 30))
    assert block.items.shape == (len(users), 90)
    scores = RankedRetrieval(view, state, loaded, n=60)(users)
    top20 = torch.topk(scores, 20, dim=1).indices.numpy()
    lifted = [np.isin(top20[r], block.items[r, 60:][block.items[r, 60:] >= 0]).sum() for r in range(len(users))]
    assert sum(lifted) > 0, "the ranker puts some popular videos into the top 20"
    seen = state.seen[users]
    for r in range(len(users)):
        row = block.items[r][block.items[r] >= 0]
        assert len(row) == len(set(row.tolist())) and not seen[r, row].nnz
