"""A live user's side of the ranker's state (rec_core.rank.profile_state): a profile holding exactly a lake user's
history gives that user's features as the batch computes them, but for the columns that need instants a profile
does not carry; a known user's events since the snapshot, added to their snapshot row, give their counts as the
batch computes them later. The API's end of it (a fresh user's likes move their ranked live page) is
tests/test_feed_api.py::test_likes_move_the_live_vector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rec_core.eval.evaluation import load_lake_data
from rec_core.model.inference import UserProfile
from rec_core.rank.events import RankEvents
from rec_core.rank.features import FEATURES, TowerSignals, pair_features
from rec_core.rank.profile_state import profile_state
from rec_core.rank.state import AsOfState, state_at
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data

# What a profile cannot say (it has no instants): how recent each watch is, so the windows' counts, idleness and
# the recent taste.
NEEDS_INSTANTS = {"log_user_events_1d", "log_user_events_7d", "log_user_events_30d", "log_user_idle_days"}
NEEDS_INSTANTS |= {"tag_affinity_recent"}


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[RankEvents, int, int]:
    """The tiny world's events, and two instants: the validation window's start and the test window's."""
    settings = Settings.load({}).override(data_dir=Path(tmp_path_factory.mktemp("profile")) / "data")
    generate_data(settings, "tiny", seed=5)
    data = load_lake_data(settings.paths, settings.batch)
    events = RankEvents.build(data.split.user_ids, data.videos, data.interactions, data.follows)
    return events, data.split.valid_start_ms, data.split.test_start_ms


@pytest.fixture(scope="module")
def state(lake: tuple[RankEvents, int, int]) -> AsOfState:
    events, _, test_start = lake
    return state_at(events, test_start)


def _profile_of(state: AsOfState, user: int, since_ms: int = -1) -> tuple[UserProfile, np.ndarray, np.ndarray]:
    """The user's history before the state's instant (from ``since_ms`` on) as a profile, its videos' state rows
    and followed creators."""
    ev = state.events
    before = (ev.user == user) & (ev.ts_ms < state.t_ms) & (ev.ts_ms >= since_ms)
    rows = ev.item[before].astype(np.int64)
    ids = ev.item_ids[rows].tolist()
    follows = (ev.follow_user == user) & (ev.follow_ts_ms < state.t_ms) & (ev.follow_ts_ms >= since_ms)
    followed = np.unique(ev.follow_creator[follows])
    profile = UserProfile(
        watched=ids[::-1],
        liked=ev.item_ids[ev.item[before & ev.liked]].tolist(),
        followed=ev.creator_ids[followed].tolist(),
        completion_rate=float(ev.completion[before].mean()),
    )
    return profile, rows[::-1], followed


def _features(state: AsOfState, user: int, items: np.ndarray) -> np.ndarray:
    k = len(items)
    signals = TowerSignals(np.zeros(k, np.float32), np.arange(k), np.zeros(k, np.float32))
    return pair_features(state, np.full(k, user), items, signals)


def test_a_profile_of_a_users_history_gives_their_features_but_for_those_that_need_instants(state: AsOfState) -> None:
    ev = state.events
    users = np.flatnonzero(state.user_events > 0)
    followers = np.intersect1d(users, ev.follow_user[ev.follow_ts_ms < state.t_ms])
    items = np.flatnonzero(state.item_posted)[:400]
    checked = 0
    for user in [*users[:5], *followers[:3]]:
        profile, rows, followed = _profile_of(state, int(user))
        batch = _features(state, int(user), items)
        live = _features(profile_state(state, rows, profile, followed), 0, items)
        for k, name in enumerate(FEATURES):
            if name not in NEEDS_INSTANTS:
                np.testing.assert_allclose(live[:, k], batch[:, k], rtol=1e-6, atol=1e-7, err_msg=name)
        checked += 1
    assert checked == 8
    # The columns compared read the user's side at all: a user's affinity to some candidate creator and hashtag.
    assert (batch[:, FEATURES.index("creator_affinity")] > 0).any() and (
        batch[:, FEATURES.index("follows_creator")] > 0
    ).any()


def test_a_profile_counts_unknown_videos_as_events_and_gives_them_no_creator_or_hashtag(state: AsOfState) -> None:
    profile, rows, followed = _profile_of(state, int(np.flatnonzero(state.user_events > 0)[0]))
    items = np.flatnonzero(state.item_posted)[:200]
    alone = _features(profile_state(state, rows, profile, followed), 0, items)
    unknown = UserProfile(watched=[*profile.watched, "v-not-in-the-snapshot"], liked=profile.liked)
    more = profile_state(state, np.append(rows, -1), unknown, followed)
    assert more.user_events[0] == len(rows) + 1
    with_unknown = _features(more, 0, items)
    n = len(rows)
    creator = FEATURES.index("creator_affinity")
    np.testing.assert_allclose(with_unknown[:, creator], alone[:, creator] * n / (n + 1), rtol=1e-6)
    # Nothing in the history: the neutral user's figures (no events, no affinity), not idle for ever.
    empty = profile_state(state, np.zeros(0, dtype=np.int64), UserProfile(), np.zeros(0, dtype=np.int64))
    assert empty.user_events[0] == 0 and not _features(empty, 0, items)[:, creator].any()


def test_a_known_users_events_since_the_snapshot_add_up_to_their_row_as_the_batch_counts_it_later(
    lake: tuple[RankEvents, int, int], state: AsOfState
) -> None:
    """The snapshot as of the validation window's start; the user's events in that window as what the API saw since;
    folded onto their snapshot row, they are the user's counts as of the test window's start, the batch's own."""
    events, valid_start, _ = lake
    snapshot = state_at(events, valid_start)
    active = np.unique(events.user[(events.ts_ms >= valid_start) & (events.ts_ms < state.t_ms)])
    followers = np.intersect1d(active, events.follow_user[events.follow_ts_ms >= valid_start])
    checked = with_history = 0
    for user in [*active[:6], *followers[:2]]:
        user = int(user)
        with_history += snapshot.user_events[user] > 0
        profile, rows, followed = _profile_of(state, user, since_ms=valid_start)
        folded = profile_state(snapshot, rows, profile, followed, base_row=user)
        assert folded.user_events[0] == state.user_events[user]
        np.testing.assert_allclose(folded.user_completion[0], state.user_completion[user], rtol=1e-6)
        np.testing.assert_allclose(folded.user_like_rate[0], state.user_like_rate[user], rtol=1e-6)
        assert folded.user_days_idle[0] == 0.0 and (folded.user_window_events[:, 0] >= len(rows)).all()
        for name in ("user_creator", "user_tag", "follows"):
            mine, batch = getattr(folded, name), getattr(state, name)
            cols = np.arange(batch.n_cols)
            np.testing.assert_array_equal(
                mine.get(np.zeros_like(cols), cols), batch.get(np.full_like(cols, user), cols)
            )
        assert (folded.seen[0] != state.seen[user]).nnz == 0
        checked += 1
    assert checked == 8 and with_history >= 6, with_history  # a snapshot row that holds something
    # Without the snapshot row the same events are a fresh user's whole history: fewer events, other counts.
    alone = profile_state(snapshot, rows, profile, followed)
    assert alone.user_events[0] == len(rows) < folded.user_events[0]
