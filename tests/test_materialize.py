"""Materialize feeds end to end on a tiny generated lake and a hand-built snapshot of random vectors."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.generate_data import generate_data
from jobs.materialize_feeds import build_trending, main, materialize_feeds
from rec_core.feed_policy import FeedPolicy
from rec_core.lake import Lake
from rec_core.settings import Settings
from rec_core.snapshot_layout import SnapshotError, SnapshotPaths, begin_snapshot, shard_bounds

# Inside the tiny world's interaction window, so some interactions and videos come after it and must be ignored.
AS_OF = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
FEED = 200
DIM = 16
SHARDS = 2
NO_HISTORY_USER = "u9999999"  # has a vector but no lake record: no history at all


@dataclasses.dataclass(frozen=True)
class World:
    settings: Settings
    paths: SnapshotPaths
    summaries: list[dict]
    trending: dict


def _write_vectors(path: Path, id_column: str, ids: list[str], rng: np.random.Generator) -> None:
    x = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), DIM)
    pq.write_table(pa.table({id_column: pa.array(ids, pa.string()), "vector": vectors}), path)


def _begin(settings: Settings, video_ids: list[str], user_ids: list[str]) -> SnapshotPaths:
    lake = Lake(settings.lake_dir)
    paths = begin_snapshot(
        settings,
        model_version="m-test",
        lake_version=lake.current().name,
        as_of=AS_OF,
        video_shards=2,
        user_shards=SHARDS,
        embedding_dim=DIM,
        now=dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC),
    )
    rng = np.random.default_rng(7)
    for shard in range(2):
        lo, hi = shard_bounds(len(video_ids), shard, 2)
        _write_vectors(paths.video_vectors(shard, 2), "video_id", video_ids[lo:hi], rng)
    for shard in range(SHARDS):
        lo, hi = shard_bounds(len(user_ids), shard, SHARDS)
        _write_vectors(paths.user_vectors(shard, SHARDS), "user_id", user_ids[lo:hi], rng)
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("materialize")
    settings = dataclasses.replace(Settings.load({}), data_dir=root / "data", feed_length=FEED)
    generate_data(settings, "tiny", seed=1)
    lake = Lake(settings.lake_dir)
    video_ids = lake.read("videos", ["video_id"])["video_id"].to_pylist()
    user_ids = sorted([*lake.read("users", ["user_id"])["user_id"].to_pylist(), NO_HISTORY_USER])
    paths = _begin(settings, video_ids, user_ids)
    summaries = [materialize_feeds(settings, paths.snapshot_id, shard) for shard in range(SHARDS)]
    trending = build_trending(settings, paths.snapshot_id)
    return World(settings, paths, summaries, trending)


def _lake(world: World, table: str) -> pl.DataFrame:
    out = pl.from_arrow(Lake(world.settings.lake_dir).read(table))
    assert isinstance(out, pl.DataFrame)
    return out


def _feeds(world: World) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(world.paths.feed_part(s, SHARDS)) for s in range(SHARDS)])


def feed_problems(feeds: pl.DataFrame, videos: pl.DataFrame, interactions: pl.DataFrame, policy: FeedPolicy) -> list:
    """Every broken invariant of a feeds table, as readable strings; [] when it is valid."""
    problems: list[str] = []
    if feeds.schema != pl.Schema(
        {"user_id": pl.String, "rank": pl.Int32, "video_id": pl.String, "score": pl.Float32, "reason": pl.String}
    ):
        problems.append(f"schema {feeds.schema}")
    if not feeds.equals(feeds.sort("user_id", "rank")):
        problems.append("not sorted by (user_id, rank)")
    if feeds.select("user_id", "rank").is_duplicated().any():
        problems.append("duplicate (user, rank)")
    if feeds.select("user_id", "video_id").is_duplicated().any():
        problems.append("duplicate (user, video)")
    gaps = feeds.group_by("user_id").agg(pl.col("rank").min().alias("lo"), pl.col("rank").max().alias("hi"), pl.len())
    if gaps.filter((pl.col("lo") != 0) | (pl.col("hi") != pl.col("len") - 1)).height:
        problems.append("ranks are not 0..n-1")
    if (gaps["len"] > policy.feed_length).any():
        problems.append("feed longer than feed_length")
    unknown = feeds.join(videos, on="video_id", how="anti")
    if unknown.height:
        problems.append(f"{unknown.height} unknown video ids")
    if feeds.join(videos, on="video_id").filter(pl.col("created_at") >= AS_OF).height:
        problems.append("videos created at or after as-of")
    seen = interactions.filter(pl.col("ts") < AS_OF).select("user_id", "video_id").unique()
    watched = feeds.join(seen, on=["user_id", "video_id"])
    if watched.height:
        problems.append(f"{watched.height} watched videos")
    own = feeds.join(videos.select("video_id", "creator_id"), on="video_id").filter(
        pl.col("creator_id") == pl.col("user_id")
    )
    if own.height:
        problems.append(f"{own.height} own videos")
    if (feeds["reason"].str.len_chars() == 0).any() or feeds["reason"].null_count():
        problems.append("empty reasons")
    with_creator = feeds.join(videos.select("video_id", "creator_id"), on="video_id").sort("user_id", "rank")
    for (user,), part in with_creator.group_by("user_id", maintain_order=True):
        creators = part["creator_id"].to_list()
        for start in range(max(0, len(creators) - policy.window + 1)):
            window = creators[start : start + policy.window]
            if max(window.count(c) for c in set(window)) > policy.max_per_creator_in_window:
                problems.append(f"creator cap broken for {user} at rank {start}")
                break
    return problems


def test_feeds_are_valid(world: World) -> None:
    feeds = _feeds(world)
    problems = feed_problems(feeds, _lake(world, "videos"), _lake(world, "interactions"), FeedPolicy(feed_length=FEED))
    assert problems == []


def test_every_user_gets_a_full_feed(world: World) -> None:
    feeds = _feeds(world)
    users = {*_lake(world, "users")["user_id"].to_list(), NO_HISTORY_USER}
    assert set(feeds["user_id"].unique().to_list()) == users
    lengths = feeds.group_by("user_id").len()
    assert (lengths["len"] == FEED).all()
    assert sum(s["users"] for s in world.summaries) == len(users)
    assert sum(s["rows"] for s in world.summaries) == feeds.height
    assert all(s["users_per_s"] > 0 for s in world.summaries)


def test_each_part_holds_its_shard_sorted(world: World) -> None:
    for shard in range(SHARDS):
        part = pl.read_parquet(world.paths.feed_part(shard, SHARDS))
        ids = pq.read_table(world.paths.user_vectors(shard, SHARDS))["user_id"].to_pylist()
        assert set(part["user_id"].unique().to_list()) == set(ids)
        assert part.sort("user_id", "rank").equals(part)


def test_fresh_slots_mostly_hold_fresh_videos(world: World) -> None:
    feeds = _feeds(world).join(_lake(world, "videos").select("video_id", "created_at"), on="video_id")
    policy = FeedPolicy(feed_length=FEED)
    fresh_from = AS_OF - dt.timedelta(days=policy.fresh_days)
    slots = np.flatnonzero(policy.fresh_slots(FEED)).tolist()
    at_slots = feeds.filter(pl.col("rank").is_in(slots))
    is_fresh = (at_slots["created_at"] >= fresh_from) & (at_slots["created_at"] < AS_OF)
    # Some users have watched most fresh videos, so not every slot can be fresh, but nearly all are.
    assert is_fresh.mean() >= 0.98
    assert at_slots.filter(is_fresh)["reason"].str.starts_with("new ").all()


def test_reasons_are_varied_and_readable(world: World) -> None:
    reasons = _feeds(world)["reason"]
    prefixes = ["because you liked", "from @", "new from", "trending in #", "popular "]
    for prefix in prefixes:
        assert reasons.str.starts_with(prefix).any(), prefix


def test_user_without_history_gets_the_trending_feed(world: World) -> None:
    feeds = _feeds(world).filter(pl.col("user_id") == NO_HISTORY_USER).sort("rank")
    trending = pl.read_parquet(world.paths.trending_file)
    assert feeds["video_id"].to_list() == trending["video_id"].to_list()
    assert ((feeds["reason"] == "popular right now") | feeds["reason"].str.starts_with("new ")).all()


def test_trending_file(world: World) -> None:
    trending = pl.read_parquet(world.paths.trending_file)
    assert trending.columns == ["rank", "video_id", "score", "reason"]
    assert trending["rank"].to_list() == list(range(FEED))
    assert trending["video_id"].is_unique().all()
    assert (trending["reason"] == "trending").all()
    videos = _lake(world, "videos")
    joined = trending.join(videos, on="video_id", how="left")
    assert joined["creator_id"].null_count() == 0
    assert (joined["created_at"] < AS_OF).all()
    creators = joined.sort("rank")["creator_id"].to_list()
    for start in range(len(creators) - 9):
        window = creators[start : start + 10]
        assert max(window.count(c) for c in set(window)) <= 2
    assert trending["score"][0] == trending["score"].max()
    assert world.trending["rows"] == FEED


def test_rerun_is_byte_identical(world: World) -> None:
    before = [world.paths.feed_part(s, SHARDS).read_bytes() for s in range(SHARDS)]
    trending_before = world.paths.trending_file.read_bytes()
    materialize_feeds(world.settings, world.paths.snapshot_id, 1)
    build_trending(world.settings, world.paths.snapshot_id)
    assert world.paths.feed_part(1, SHARDS).read_bytes() == before[1]
    assert world.paths.trending_file.read_bytes() == trending_before
    assert not [p for p in world.paths.feeds_dir.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_validator_catches_broken_feeds(world: World) -> None:
    """The checks above can fail: each corruption is reported."""
    feeds = _feeds(world)
    videos, inter = _lake(world, "videos"), _lake(world, "interactions")
    policy = FeedPolicy(feed_length=FEED)
    user = feeds["user_id"][0]
    watched = inter.filter((pl.col("user_id") == user) & (pl.col("ts") < AS_OF))["video_id"][0]
    own_video = videos.filter(pl.col("creator_id") == user)
    cases = {
        "watched": feeds.with_columns(
            pl.when((pl.col("user_id") == user) & (pl.col("rank") == 0))
            .then(pl.lit(watched))
            .otherwise(pl.col("video_id"))
            .alias("video_id")
        ),
        "duplicate (user, rank)": feeds.with_columns(
            pl.when(pl.col("rank") == 1).then(0).otherwise(pl.col("rank")).cast(pl.Int32).alias("rank")
        ),
        "ranks": feeds.filter(pl.col("rank") != 3),
        "empty": feeds.with_columns(pl.lit("").alias("reason")),
    }
    for name, broken in cases.items():
        assert feed_problems(broken, videos, inter, policy), name
    # Three items in a row of one creator: give the user's first three videos the same (made-up) creator.
    first3 = feeds.filter((pl.col("user_id") == user) & (pl.col("rank") < 3))["video_id"].implode()
    same_creator = videos.with_columns(
        pl.when(pl.col("video_id").is_in(first3))
        .then(pl.lit("uZZZ"))
        .otherwise(pl.col("creator_id"))
        .alias("creator_id")
    )
    assert any("creator cap" in p for p in feed_problems(feeds, same_creator, inter, policy))
    if own_video.height:
        broken = feeds.with_columns(
            pl.when((pl.col("user_id") == user) & (pl.col("rank") == 0))
            .then(pl.lit(own_video["video_id"][0]))
            .otherwise(pl.col("video_id"))
            .alias("video_id")
        )
        assert any("own" in p for p in feed_problems(broken, videos, inter, policy))


def test_missing_vectors_are_a_clear_error(world: World) -> None:
    lake = Lake(world.settings.lake_dir)
    paths = begin_snapshot(
        world.settings,
        model_version="m-empty",
        lake_version=lake.current().name,
        as_of=AS_OF,
        video_shards=1,
        user_shards=1,
        embedding_dim=DIM,
        now=dt.datetime(2025, 3, 2, tzinfo=dt.UTC),
    )
    with pytest.raises(SnapshotError, match="embed"):
        materialize_feeds(world.settings, paths.snapshot_id, 0)
    with pytest.raises(ValueError, match="shard"):
        materialize_feeds(world.settings, world.paths.snapshot_id, SHARDS)


def test_cli(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = str(world.settings.data_dir)
    assert main(["--snapshot", world.paths.snapshot_id, "--trending", "--data-dir", data_dir]) == 0
    assert '"rows": 200' in capsys.readouterr().out
    assert main(["--snapshot", world.paths.snapshot_id, "--shard", "0", "--data-dir", data_dir]) == 0
    assert main(["--snapshot", "s20250101T000000Z-nope", "--shard", "0", "--data-dir", data_dir]) == 2


def test_prefetch_passes_items_in_order_and_surfaces_errors() -> None:
    from jobs.materialize_feeds import _prefetch

    assert list(_prefetch(iter(range(50)), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise RuntimeError("boom")

    got = []
    with pytest.raises(RuntimeError, match="boom"):
        for item in _prefetch(broken(), depth=1):
            got.append(item)
    assert got == [1]
    # A consumer that stops early does not hang on a producer blocked on a full queue.
    for item in _prefetch(iter(range(1000)), depth=1):
        if item == 3:
            break
