"""Feeds for active users only (``REC_FEED_ACTIVE_DAYS``, rec_core.snapshot.feed_users): a real snapshot of the tiny
world built, validated, published and served with a window, the rest of the users served by live search."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from rec_core.settings import Settings
from rec_core.snapshot.layout import snapshot_paths
from rec_core.snapshot.validate import validate_snapshot
from rec_core.stages import run_all
from tests.conftest import ApiServer
from tests.test_feed_api import cap_breaks, feeds, live_id, page, walk, watched_before_the_batch

pytestmark = pytest.mark.slow

DAYS = 7


def active_by_hand(data: Path, build: dict) -> set[str]:
    """Who interacted or joined in the week before as-of, read from the build's lake version."""
    as_of = dt.datetime.fromisoformat(build["as_of"])
    since = as_of - dt.timedelta(days=DAYS)
    lake = data / "lake" / build["lake_version"]
    seen = pl.read_parquet(lake / "interactions.parquet").filter(pl.col("ts").is_between(since, as_of, closed="left"))
    joined = pl.read_parquet(lake / "users.parquet").filter(pl.col("created_at").is_between(since, as_of, "left"))
    return set(seen["user_id"].to_list()) | set(joined["user_id"].to_list())


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
    dormant = sorted(u for u in vectors["user_id"].to_list() if u not in active and watched_before_the_batch(data, u))
    assert dormant, "the tiny world has users with a history outside the window"
    server = ApiServer(data, feed_length="200").start()
    try:
        assert page(server, sorted(active)[0])["source"] == "precomputed"
        for user in dormant[:3]:
            items, pages = walk(server, user, limit=50, max_pages=4, to_end=False)
            assert pages[0]["source"] == "live" and pages[0]["snapshot_id"] == snapshot_id
            assert len(items) == 200
            assert not watched_before_the_batch(data, user) & {i["video_id"] for i in items}
            assert cap_breaks(data, [i["video_id"] for i in items]) == []
    finally:
        server.stop()


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
