"""The synthetic world: deterministic, schema-true, and with structure a model can learn.

Everything runs on a real lake under a temp folder at the tiny scale. The
thresholds sit well inside what the planted structure produces and well outside
what uniform noise would, so a generator that loses its structure fails here.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from jobs.generate_data import main
from rec_core.data.lake import Lake
from rec_core.data.tables import TABLES
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data
from rec_core.synthetic.truth import Truth, load_truth

SEED = 7
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Generated:
    settings: Settings
    summary: dict
    tables: dict[str, pa.Table]
    truth: Truth

    def col(self, table: str, column: str) -> np.ndarray:
        arr = self.tables[table][column]
        if pa.types.is_timestamp(arr.type):
            return arr.cast(pa.int64()).to_numpy()
        return arr.to_numpy(zero_copy_only=False)


def _generate(data_dir: Path, seed: int = SEED, **kwargs: int) -> dict:
    return generate_data(Settings.of(data_dir=data_dir), "tiny", seed=seed, **kwargs)


def _manifest_sha(data_dir: Path) -> dict[str, str]:
    tables = Lake(data_dir / "lake").current().manifest["tables"]
    return {name: meta["sha256"] for name, meta in tables.items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    data_dir = tmp_path_factory.mktemp("world")
    summary = _generate(data_dir)
    lake = Lake(data_dir / "lake")
    tables = {name: lake.read(name) for name in TABLES}
    return Generated(Settings.of(data_dir=data_dir), summary, tables, load_truth(data_dir / "truth"))


def _top_share(counts: np.ndarray, fraction: float) -> float:
    ranked = np.sort(counts)[::-1]
    return float(ranked[: max(1, int(len(ranked) * fraction))].sum() / ranked.sum())


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)


# ---- the job, determinism, idempotence -----------------------------------------------------------------------------


def test_summary_reports_counts_version_and_time(world: Generated) -> None:
    s = world.summary
    assert s["lake_version"] == "v000001" and s["lake_changed"] is True
    assert s["rows"] == {name: world.tables[name].num_rows for name in sorted(TABLES)}
    assert s["rows"]["users"] == 300 and s["rows"]["videos"] == 1_500
    assert 15_000 <= s["rows"]["interactions"] <= 30_000
    assert s["rows"]["follows"] > 300
    assert s["seconds"] > 0 and s["seed"] == SEED
    json.dumps(s)  # Airflow passes it on as XCom


def test_same_seed_gives_identical_tables_and_rerun_changes_nothing(world: Generated, tmp_path: Path) -> None:
    summary = _generate(tmp_path)
    assert _manifest_sha(tmp_path) == _manifest_sha(world.settings.paths.data_dir)
    again = _generate(tmp_path)
    assert again["lake_version"] == summary["lake_version"] == "v000001"
    assert again["lake_changed"] is False
    assert Lake(tmp_path / "lake").versions() == ["v000001"]


def test_different_seed_gives_different_tables(world: Generated, tmp_path: Path) -> None:
    _generate(tmp_path, seed=SEED + 1)
    mine, theirs = _manifest_sha(tmp_path), _manifest_sha(world.settings.paths.data_dir)
    assert all(mine[name] != theirs[name] for name in TABLES)


def test_progress_and_summary_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        _generate(tmp_path, users=60, videos=200)
    text = caplog.text
    assert "world 6/6" in text and "interactions (users): 60/60" in text
    assert "generate_data done" in text


# ---- schemas and value ranges --------------------------------------------------------------------------------------


def test_tables_match_the_lake_schemas(world: Generated) -> None:
    for name, spec in TABLES.items():
        assert world.tables[name].schema.equals(spec.schema), name
    users, videos = world.col("users", "user_id"), world.col("videos", "video_id")
    assert all(re.fullmatch(r"u\d{7}", u) for u in users)
    assert all(re.fullmatch(r"v\d{8}", v) for v in videos)
    assert users.tolist() == sorted(set(users.tolist())) == world.truth.user_ids.tolist()
    assert videos.tolist() == sorted(set(videos.tolist())) == world.truth.video_ids.tolist()


def test_video_columns_are_plausible(world: Generated) -> None:
    duration = world.col("videos", "duration_s")
    assert duration.min() >= 5 and duration.max() <= 180 and np.median(duration) < 30  # heavy on short clips
    portrait = (world.col("videos", "width") == 1080) & (world.col("videos", "height") == 1920)
    assert 0.75 < portrait.mean() < 0.95
    for tags in world.tables["videos"]["hashtags"].to_pylist():
        assert 1 <= len(tags) <= 6 and len(set(tags)) == len(tags)
        assert all(re.fullmatch(r"[a-z0-9]+", t) for t in tags), tags
    captions = world.col("videos", "caption")
    assert all(c and c == c.strip() for c in captions)
    assert len(set(captions)) > 0.9 * len(captions)
    views = world.col("videos", "views")
    for column in ("likes", "comments", "shares"):
        counts = world.col("videos", column)
        assert (counts >= 0).all() and (counts <= views).all(), column


def test_interaction_values_are_plausible(world: Generated) -> None:
    completion = world.col("interactions", "completion")
    assert completion.min() >= 0.0 and completion.max() <= 1.0
    assert 0.3 < completion.mean() < 0.8
    duration = dict(zip(world.col("videos", "video_id"), world.col("videos", "duration_s"), strict=True))
    watched = world.col("interactions", "watch_time_s")
    limit = np.array([duration[v] for v in world.col("interactions", "video_id")])
    assert (watched >= 0).all() and (watched <= limit + 1e-3).all()
    like = world.col("interactions", "liked").mean()
    assert 0.03 < like < 0.2
    assert world.col("interactions", "shared").mean() < like / 3
    assert world.col("interactions", "commented").mean() < like / 3


def test_user_profiles(world: Generated) -> None:
    users = world.tables["users"]
    assert set(users["age_group"].drop_null().to_pylist()) <= {"13-17", "18-24", "25-34", "35-44", "45-54", "55+"}
    assert users["country"].null_count < users.num_rows * 0.1
    assert len(set(users["country"].drop_null().to_pylist())) >= 8


# ---- distributions -------------------------------------------------------------------------------------------------


def test_user_activity_is_heavy_tailed(world: Generated) -> None:
    idx = world.truth.user_index(world.col("interactions", "user_id"))
    per_user = np.bincount(idx, minlength=len(world.truth.user_ids))
    assert _top_share(per_user, 0.10) > 0.30  # uniform activity would give about 0.10-0.15
    assert per_user.mean() > 1.3 * np.median(per_user)


def test_video_popularity_is_a_power_law(world: Generated) -> None:
    idx = world.truth.video_index(world.col("interactions", "video_id"))
    per_video = np.bincount(idx, minlength=len(world.truth.video_ids))
    assert _top_share(per_video, 0.01) > 0.05  # 5x the uniform share
    assert _top_share(per_video, 0.10) > 0.30
    # Lifetime platform counts follow the sample they were scaled from.
    views = world.col("videos", "views")
    rho = np.corrcoef(_ranks(views), _ranks(per_video))[0, 1]
    assert rho > 0.8


# ---- time ----------------------------------------------------------------------------------------------------------


def test_nothing_happens_before_it_can(world: Generated) -> None:
    t = world.truth
    ts = world.col("interactions", "ts")
    video_created = world.col("videos", "created_at")[t.video_index(world.col("interactions", "video_id"))]
    user_created = world.col("users", "created_at")[t.user_index(world.col("interactions", "user_id"))]
    assert (ts >= video_created).all() and (ts >= user_created).all()
    f_ts = world.col("follows", "ts")
    assert (f_ts >= world.col("users", "created_at")[t.user_index(world.col("follows", "user_id"))]).all()
    assert (f_ts >= world.col("users", "created_at")[t.user_index(world.col("follows", "creator_id"))]).all()
    assert (ts.max() - ts.min()) > 7 * 7 * DAY_MS  # several weeks, so a temporal split is meaningful
    creators = t.user_index(world.col("videos", "creator_id"))
    assert (world.col("videos", "created_at") >= world.col("users", "created_at")[creators]).all()


def test_cold_videos_exist_and_late_videos_are_seen_less(world: Generated) -> None:
    ts = world.col("interactions", "ts")
    created = world.col("videos", "created_at")
    cold = created > ts.max()
    assert 0.02 < cold.mean() < 0.07
    seen = set(world.col("interactions", "video_id").tolist())
    assert not seen & set(world.col("videos", "video_id")[cold].tolist())

    per_video = np.bincount(world.truth.video_index(world.col("interactions", "video_id")), minlength=len(created))
    end = ts.max()
    last_days = (created > end - 4 * DAY_MS) & ~cold
    middle = (created > end - 35 * DAY_MS) & (created < end - 14 * DAY_MS)
    assert per_video[last_days].mean() < 0.6 * per_video[middle].mean()


# ---- planted structure ---------------------------------------------------------------------------------------------


def test_creators_are_users_and_never_see_themselves(world: Generated) -> None:
    users = set(world.col("users", "user_id").tolist())
    creators = set(world.col("videos", "creator_id").tolist())
    assert creators <= users and 0.1 < len(creators) / len(users) < 0.3
    assert not (world.col("follows", "user_id") == world.col("follows", "creator_id")).any()
    creator_of = dict(zip(world.col("videos", "video_id"), world.col("videos", "creator_id"), strict=True))
    own = [
        creator_of[v] == u
        for u, v in zip(world.col("interactions", "user_id"), world.col("interactions", "video_id"), strict=True)
    ]
    assert not any(own)


def test_creators_post_in_their_home_subtopics(world: Generated) -> None:
    t = world.truth
    home = t.creator_home[t.user_index(world.col("videos", "creator_id"))]
    assert (home[:, 0] >= 0).all()  # every creator has a home
    at_home = (home == t.video_subtopic[:, None]).any(axis=1)
    assert at_home.mean() > 0.75


def test_follows_track_interests(world: Generated) -> None:
    t = world.truth
    follower = t.user_index(world.col("follows", "user_id"))
    followed = t.user_index(world.col("follows", "creator_id"))

    def overlap(users: np.ndarray, creators: np.ndarray) -> float:
        home, interests = t.creator_home[creators], t.user_interests[users]
        hit = (home[:, :, None] == interests[:, None, :]) & (home[:, :, None] >= 0)
        return float(hit.any(axis=(1, 2)).mean())

    all_creators = np.unique(t.user_index(world.col("videos", "creator_id")))
    shuffled = np.random.default_rng(0).choice(all_creators, len(followed))
    real, chance = overlap(follower, followed), overlap(follower, shuffled)
    assert real > 0.45 and real > 3 * chance


def test_users_watch_their_interests(world: Generated) -> None:
    t = world.truth
    user = t.user_index(world.col("interactions", "user_id"))
    sub = t.video_subtopic[t.video_index(world.col("interactions", "video_id"))].astype(np.int64)
    interests = t.user_interests[user]
    hit = (interests == sub[:, None]).any(axis=1)
    # The base rate: how often a user's interests would be hit if they watched like the average user.
    overall = np.bincount(sub, minlength=len(t.taxonomy.subtopics)) / len(sub)
    base = np.where(interests >= 0, overall[np.maximum(interests, 0)], 0.0).sum(axis=1)
    assert hit.mean() > 0.35 and hit.mean() > 3 * base.mean()


def test_engagement_rises_with_planted_affinity(world: Generated) -> None:
    affinity = world.truth.pair_affinity(world.col("interactions", "user_id"), world.col("interactions", "video_id"))
    low, high = affinity < np.quantile(affinity, 0.25), affinity > np.quantile(affinity, 0.75)
    liked = world.col("interactions", "liked")
    completion = world.col("interactions", "completion")
    assert liked[high].mean() > 3 * liked[low].mean()
    assert completion[high].mean() > completion[low].mean() + 0.2
    # What users chose to watch is closer to them than random videos are.
    rng = np.random.default_rng(0)
    users = rng.choice(world.truth.user_ids, 5_000)
    random_pairs = world.truth.pair_affinity(users, rng.choice(world.truth.video_ids, 5_000))
    assert affinity.mean() > random_pairs.mean() + 0.15


def test_captions_and_hashtags_speak_their_subtopic(world: Generated) -> None:
    t = world.truth
    subs = t.taxonomy.subtopics
    captions = world.col("videos", "caption")
    tags = world.tables["videos"]["hashtags"].to_pylist()
    has_word = [any(w in c for w in subs[s].words) for c, s in zip(captions, t.video_subtopic, strict=True)]
    has_tag = [bool(set(h) & set(subs[s].hashtags)) for h, s in zip(tags, t.video_subtopic, strict=True)]
    assert np.mean(has_word) > 0.95 and np.mean(has_tag) > 0.95


def test_platform_counts_are_consistent(world: Generated) -> None:
    videos = world.tables["videos"]
    creator = world.col("videos", "creator_id")
    likes, creator_likes = world.col("videos", "likes"), world.col("videos", "creator_likes")
    followers = world.col("videos", "creator_followers")
    lake_followers = dict(zip(*np.unique(world.col("follows", "creator_id"), return_counts=True), strict=True))
    for c in np.unique(creator):
        mine = creator == c
        assert (creator_likes[mine] == likes[mine].sum()).all()
        assert len(set(followers[mine].tolist())) == 1
        assert followers[mine][0] >= lake_followers.get(c, 0)
    assert videos.num_rows == len(creator)


def test_truth_round_trips_and_matches_the_lake(world: Generated) -> None:
    t = world.truth
    assert t.params["seed"] == SEED and t.params["lake_version"] == world.summary["lake_version"]
    assert t.params["lake_sha256"] == _manifest_sha(world.settings.paths.data_dir)
    assert len(t.taxonomy.topics) >= 10 and len(t.taxonomy.subtopics) >= 40
    assert t.user_latent.shape == (300, t.subtopic_latent.shape[1]) and t.video_latent.shape[0] == 1_500
    np.testing.assert_allclose(np.linalg.norm(t.video_latent, axis=1), 1.0, atol=1e-5)
    weights = t.user_interest_weights
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    assert ((t.user_interests >= 0).sum(axis=1) >= 2).all()

    users, videos = t.user_ids[:5], t.video_ids[:7]
    matrix = t.affinity(users, videos)
    assert matrix.shape == (5, 7) and np.abs(matrix).max() <= 1.0 + 1e-5
    np.testing.assert_allclose(np.diag(matrix[:5, :5]), t.pair_affinity(users, videos[:5]), rtol=1e-5)
    # Each video sits nearest its own sub-topic in the latent space.
    nearest = np.argmax(t.video_latent @ t.subtopic_latent.T, axis=1)
    assert (nearest == t.video_subtopic).mean() > 0.9
    with pytest.raises(KeyError):
        t.affinity(["u9999999"], videos)


# ---- command line --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--users", "0"], "--users"),
        (["--videos", "-3"], "--videos"),
        (["--users", "many"], "--users"),
        (["--scale", "huge"], "--scale"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_cli_rejects_bad_input_naming_the_option(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert option in capsys.readouterr().err


def test_cli_generates_into_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["--scale", "tiny", "--users", "50", "--videos", "120", "--seed", "3", "--data-dir", str(tmp_path)]) == 0
    )
    out = capsys.readouterr().out
    assert "v000001" in out and "interactions" in out
    lake = Lake(tmp_path / "lake")
    assert lake.read("users").num_rows == 50 and lake.read("videos").num_rows == 120
    assert load_truth(tmp_path / "truth").params["seed"] == 3
