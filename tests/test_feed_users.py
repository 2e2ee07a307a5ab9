"""Feeds for active users only (``REC_FEED_ACTIVE_DAYS``, rec_core.snapshot.feed_users): a real snapshot of the tiny
world built, validated, published and served with a window, the rest of the users served by live search."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feed_api.pager import next_page
from feed_api.snapshot_load import load_view
from rec_core.data.lake import lake_version_dir
from rec_core.feed.cursor import Cursor
from rec_core.feed.policy import FeedPolicy
from rec_core.settings import Settings
from rec_core.snapshot.feed_users import active_user_ids
from rec_core.snapshot.layout import BuildInfo, snapshot_paths
from rec_core.snapshot.validate import validate_snapshot
from rec_core.stages import run_all
from tests.conftest import ApiServer
from tests.test_feed_api import cap_breaks, feeds, live_id, page, walk, watched_before_the_batch

DAYS = 7


def _ts(values: list[str]) -> pa.Array:
    return pa.array([dt.datetime.fromisoformat(v) for v in values], pa.timestamp("ms", tz="UTC"))


def test_the_window_counts_interactions_before_as_of_and_sign_ups_from_its_start_on(tmp_path: Path) -> None:
    """Pure logic on a hand-made lake version: the boundaries, and a user who joined after the newest interaction
    (a profile posted then), who had a feed before the window existed and keeps one."""
    settings = Settings.load({"REC_DATA_DIR": str(tmp_path)})
    lake = lake_version_dir(settings.paths, "v000001")
    lake.mkdir(parents=True)
    as_of, since = "2025-03-08T00:00:00+00:00", "2025-03-01T00:00:00+00:00"
    interactions = {
        "in_window": "2025-03-05T00:00:00+00:00",
        "at_since": since,
        "before_window": "2025-02-28T23:59:59.999+00:00",
        "at_as_of": as_of,  # after the batch's cut: not the build's
    }
    pq.write_table(
        pa.table({"user_id": list(interactions), "ts": _ts(list(interactions.values()))}), lake / "interactions.parquet"
    )
    users = {
        "in_window": "2024-01-01T00:00:00+00:00",
        "before_window": "2024-01-01T00:00:00+00:00",
        "joined_in_window": "2025-03-02T00:00:00+00:00",
        "joined_after_as_of": "2025-03-09T00:00:00+00:00",
        "joined_long_ago": "2023-06-01T00:00:00+00:00",
    }
    pq.write_table(pa.table({"user_id": list(users), "created_at": _ts(list(users.values()))}), lake / "users.parquet")
    build = BuildInfo("s", "m", "v000001", as_of, 1, 1, 8, 10, as_of, feed_active_since=since)
    active = active_user_ids(settings.paths, build)
    assert active is not None
    assert active.to_list() == ["at_since", "in_window", "joined_after_as_of", "joined_in_window"]
    assert active_user_ids(settings.paths, dataclasses.replace(build, feed_active_since=None)) is None


def active_by_hand(data: Path, build: dict) -> set[str]:
    """Who interacted or joined in the week before as-of, read from the build's lake version."""
    as_of = dt.datetime.fromisoformat(build["as_of"])
    since = as_of - dt.timedelta(days=DAYS)
    lake = data / "lake" / build["lake_version"]
    seen = pl.read_parquet(lake / "interactions.parquet").filter(pl.col("ts").is_between(since, as_of, closed="left"))
    joined = pl.read_parquet(lake / "users.parquet").filter(pl.col("created_at") >= since)
    return set(seen["user_id"].to_list()) | set(joined["user_id"].to_list())


@pytest.mark.slow
def test_only_users_active_in_the_window_get_a_feed_and_the_others_are_served_live(
    api_world: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(api_world.parent / "pristine", data)
    settings = Settings.load({"REC_DATA_DIR": str(data), "REC_FEED_LENGTH": "200", "REC_FEED_ACTIVE_DAYS": str(DAYS)})
    snapshot_id = run_all(settings, retrain=False, video_shards=1, user_shards=2)
    build = json.loads((data / "snapshots" / snapshot_id / "build.json").read_text())
    assert dt.datetime.fromisoformat(build["feed_active_since"]) == dt.datetime.fromisoformat(
        build["as_of"]
    ) - dt.timedelta(days=DAYS)

    active = active_by_hand(data, build)
    with_feed = set(feeds(data, snapshot_id)["user_id"].to_list())
    vectors = pl.read_parquet(data / "snapshots" / snapshot_id / "vectors" / "users-*.parquet")
    assert with_feed == active, "a feed for exactly the users active in the window"
    assert 0 < len(active) < len(vectors), "the window leaves some users out, and keeps some"
    assert with_feed < set(vectors["user_id"].to_list()), "every user keeps their vector"
    manifest = validate_snapshot(settings.paths, snapshot_id)  # again: the rule is checked, not assumed
    assert manifest.counts["feed_users"] == manifest.counts["active_users"] == len(active)

    # A user outside the window with a history: live search from the first page, nothing they watched before.
    lake = data / "lake" / build["lake_version"]
    as_of = dt.datetime.fromisoformat(build["as_of"])
    with_history = set(pl.read_parquet(lake / "interactions.parquet").filter(pl.col("ts") < as_of)["user_id"])
    dormant = sorted(u for u in vectors["user_id"].to_list() if u not in active and u in with_history)
    assert dormant, "the tiny world has users with a history outside the window"
    # A user outside the window with no history at all: the trending list, as the batch gives such a user.
    trending = pl.read_parquet(data / "snapshots" / snapshot_id / "trending.parquet").sort("rank")["video_id"]
    quiet = sorted(u for u in vectors["user_id"].to_list() if u not in active and u not in with_history)
    assert quiet, "the tiny world has users who never interacted and joined before the window"
    server = ApiServer(data, feed_length="200").start()
    try:
        assert page(server, sorted(active)[0])["source"] == "precomputed"
        first = page(server, quiet[0], limit=10)
        assert first["source"] == "trending"
        assert [i["video_id"] for i in first["items"]] == trending.head(10).to_list()
        for user in dormant[:3]:
            items, pages = walk(server, user, limit=50, max_pages=4, to_end=False)
            assert pages[0]["source"] == "live" and pages[0]["snapshot_id"] == snapshot_id
            assert len(items) == 200
            assert not watched_before_the_batch(data, user) & {i["video_id"] for i in items}
            assert cap_breaks(data, [i["video_id"] for i in items]) == []
    finally:
        server.stop()
    # Trending for a user the snapshot knows without a feed (a MostPop arm's, outside the window): less what they
    # watched before it, as the batch's MostPop list would have been.
    view = load_view(settings.paths, snapshot_paths(settings.paths, snapshot_id))
    try:
        top = set(trending.head(100).to_list())
        user = max(dormant, key=lambda u: len(watched_before_the_batch(data, u) & top))
        assert watched_before_the_batch(data, user) & top, "the check can fail: they watched trending videos"
        listed = next_page(view, Cursor(snapshot_id, user, "trending", 0), 100, None, lambda: None, FeedPolicy())
        assert listed.source == "trending" and len(listed.items) == 100
        assert not watched_before_the_batch(data, user) & {i.video_id for i in listed.items}
    finally:
        view.close()


@pytest.mark.slow
def test_validation_refuses_a_feed_for_a_user_outside_the_window(api_world: Path, tmp_path: Path) -> None:
    """A build that wrote feeds for everyone (one begun without the window, say) is refused under it."""
    data = tmp_path / "data"
    shutil.copytree(api_world.parent / "pristine", data)
    paths = snapshot_paths(Settings.load({"REC_DATA_DIR": str(data)}).paths, live_id(data))
    raw = json.loads(paths.build_file.read_text())
    as_of = dt.datetime.fromisoformat(raw["as_of"])
    raw["feed_active_since"] = (as_of - dt.timedelta(days=DAYS)).isoformat()
    paths.build_file.write_text(json.dumps(raw))
    settings = Settings.load({"REC_DATA_DIR": str(data)})
    with pytest.raises(Exception, match=r"feeds for \d+ user\(s\) not active since"):
        validate_snapshot(settings.paths, paths.snapshot_id)
