"""Snapshot validation, publishing, pruning, rollback, and kills during publish (real files, real DuckDB).

Snapshots are written by hand over a tiny generated lake, so each test controls
exactly what is wrong with them. The helpers here are reused by test_warehouse.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs.pipeline import main as pipeline_main
from jobs.publish import main as publish_main
from rec_core.data.lake import Lake
from rec_core.settings import PathSettings, Settings
from rec_core.snapshot.files import catalogue_table
from rec_core.snapshot.layout import SnapshotError, SnapshotPaths, begin_snapshot, live_snapshot_id
from rec_core.snapshot.manifest import Manifest, read_manifest, sha256_file, verify_checksums
from rec_core.snapshot.publish import (
    ABANDONED_AFTER,
    list_snapshots,
    live_snapshot,
    prune,
    publish,
    read_history,
    rollback,
)
from rec_core.snapshot.validate import validate_snapshot
from rec_core.synthetic.commit import generate_data
from tests.conftest import ROOT

DIM = 8
FEED = 20
USER_SHARDS = 2
REASONS = ["because you liked a video", "from @c1 you follow", "popular right now", "trending in #tag"]
MODEL = "m20260101T000000Z-abcd1234"


# ---- helpers (also used by test_warehouse.py) -----------------------------------------------------------------------


def fresh_settings(lake_settings: Settings, tmp_path: Path) -> Settings:
    """A data root of its own (snapshots, models, warehouse) over an already generated lake."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "lake").symlink_to(lake_settings.paths.lake_dir)
    return lake_settings.override(data_dir=data)


def lake_ids(settings: Settings) -> tuple[list[str], list[str], dt.datetime]:
    """Video ids, the users a snapshot must cover, and a mid-history as-of (so some interactions come after)."""
    lake = Lake(settings.paths.lake_dir)
    videos = sorted(lake.read("videos", columns=["video_id"])["video_id"].to_pylist())
    inter = lake.read("interactions", columns=["user_id", "ts"])
    as_of = pc.quantile(pc.cast(inter["ts"], pa.int64()), q=0.75)[0].as_py()
    as_of_dt = dt.datetime.fromtimestamp(as_of / 1000, dt.UTC)
    before = pc.filter(inter["user_id"], pc.less(pc.cast(inter["ts"], pa.int64()), int(as_of))).to_pylist()
    users = sorted(set(lake.read("users", columns=["user_id"])["user_id"].to_pylist()) | set(before))
    return videos, users, as_of_dt


def feed_table(rows: list[tuple]) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.string()),
            "rank": pa.array([r[1] for r in rows], pa.int32()),
            "video_id": pa.array([r[2] for r in rows], pa.string()),
            "score": pa.array([r[3] for r in rows], pa.float32()),
            "reason": pa.array([r[4] for r in rows], pa.string()),
        }
    )


def vector_table(column: str, ids: list[str], rng: np.random.Generator, dim: int = DIM) -> pa.Table:
    values = pa.array(rng.standard_normal(len(ids) * dim).astype(np.float32))
    return pa.table({column: pa.array(ids, pa.string()), "vector": pa.FixedSizeListArray.from_arrays(values, dim)})


def catalogue_part(settings: Settings, videos: list[str], rng: np.random.Generator) -> pa.Table:
    """The catalogue part of ``videos`` (sorted ids of the lake): lake columns, random tower inputs."""
    lake = Lake(settings.paths.lake_dir).read(
        "videos", columns=["video_id", "creator_id", "caption", "hashtags", "created_at"]
    )
    lake = lake.take(pc.sort_indices(lake["video_id"]))
    assert lake["video_id"].to_pylist() == videos
    served = {c: lake[c].to_pylist() for c in ("video_id", "creator_id", "caption", "hashtags")}
    served["created_ms"] = pc.cast(lake["created_at"], pa.int64()).to_pylist()
    served["duration_s"] = [10.0] * len(videos)
    text = rng.standard_normal((len(videos), 4)).astype(np.float32)
    return catalogue_table(served, text, rng.standard_normal((len(videos), 3)).astype(np.float32))


def build_snapshot(settings: Settings, second: int = 0, *, milvus: bool = True) -> SnapshotPaths:
    """A small valid snapshot: each user gets FEED distinct videos (rotated per user), two user shards."""
    videos, users, as_of = lake_ids(settings)
    lake = Lake(settings.paths.lake_dir)
    paths = begin_snapshot(
        settings.paths,
        feed_length=settings.batch.feed_length,
        model_version=MODEL,
        lake_version=lake.current().name,
        as_of=as_of,
        video_shards=1,
        user_shards=USER_SHARDS,
        embedding_dim=DIM,
        now=dt.datetime(2026, 1, 1, 0, 0, second, tzinfo=dt.UTC),
    )
    rng = np.random.default_rng(second)
    pq.write_table(vector_table("video_id", videos, rng), paths.video_vectors(0, 1))
    pq.write_table(catalogue_part(settings, videos, rng), paths.catalogue_part(0, 1))
    for shard in range(USER_SHARDS):
        lo, hi = len(users) * shard // USER_SHARDS, len(users) * (shard + 1) // USER_SHARDS
        part = users[lo:hi]
        pq.write_table(vector_table("user_id", part, rng), paths.user_vectors(shard, USER_SHARDS))
        rows = [
            (u, r, videos[(i + r) % len(videos)], 1.0 - r / 100, REASONS[(i + r) % len(REASONS)])
            for i, u in enumerate(part, start=lo)
            for r in range(FEED)
        ]
        pq.write_table(feed_table(rows), paths.feed_part(shard, USER_SHARDS))
    trending = {
        "rank": pa.array(range(FEED), pa.int32()),
        "video_id": videos[:FEED],
        "score": pa.array([1.0] * FEED, pa.float32()),
        "reason": ["trending"] * FEED,
    }
    pq.write_table(pa.table(trending), paths.trending_file)
    if milvus:
        # Validation only requires the Lite file to exist (opening it needs a Milvus Lite server).
        paths.milvus_lite_file.write_bytes(b"SQLite format 3\x00 stand-in for a Milvus Lite file")
    return paths


def valid_snapshot(settings: Settings, second: int = 0) -> SnapshotPaths:
    paths = build_snapshot(settings, second)
    validate_snapshot(settings.paths, paths.snapshot_id)
    return paths


def rewrite_part(paths: SnapshotPaths, change: Callable[[list[dict]], list[dict]], shard: int = 0) -> None:
    part = paths.feed_part(shard, USER_SHARDS)
    rows = pq.read_table(part).to_pylist()
    pq.write_table(feed_table([tuple(r.values()) for r in change(rows)]), part)


def file_bytes(paths: SnapshotPaths) -> dict[str, bytes]:
    return {str(f.relative_to(paths.root)): f.read_bytes() for f in sorted(paths.root.rglob("*")) if f.is_file()}


def assert_intact(settings: Settings, paths: SnapshotPaths, before: dict[str, bytes]) -> None:
    assert paths.root.is_dir(), f"{paths.snapshot_id} is gone"
    assert file_bytes(paths) == before
    assert verify_checksums(paths, read_manifest(paths)) == []


# ---- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lake_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings.load({}).override(data_dir=tmp_path_factory.mktemp("snaplake") / "data", feed_length=FEED)
    generate_data(settings, "tiny", seed=1)
    return settings


@pytest.fixture
def settings(lake_settings: Settings, tmp_path: Path) -> Settings:
    return fresh_settings(lake_settings, tmp_path)


# ---- validation -----------------------------------------------------------------------------------------------------


def test_valid_snapshot_gets_a_manifest_with_counts_and_checksums(settings: Settings) -> None:
    paths = build_snapshot(settings)
    manifest = validate_snapshot(settings.paths, paths.snapshot_id)
    _, users, _ = lake_ids(settings)
    on_disk = Manifest.from_json(paths.manifest_file.read_text())
    assert on_disk == manifest
    json.dumps(dataclasses.asdict(manifest))  # JSON-serialisable as it is
    assert manifest.counts["feed_users"] == manifest.counts["lake_users"] == manifest.counts["user_vectors"]
    assert manifest.counts["lake_users"] == len(users)
    assert manifest.counts["feed_rows"] == len(users) * FEED
    assert manifest.counts["video_vectors"] == manifest.counts["videos"] == manifest.counts["catalogue"] == 1500
    assert manifest.counts["trending"] == FEED
    expected = {"build.json", "trending.parquet", "milvus.db", "vectors/videos-00000-of-00001.parquet"}
    expected |= {"catalogue/part-00000-of-00001.parquet"}
    expected |= {f"vectors/users-0000{i}-of-00002.parquet" for i in range(2)}
    expected |= {f"feeds/part-0000{i}-of-00002.parquet" for i in range(2)}
    serve = ["video_ids", "video_creators", "video_created_ms", "feed_users", "feed_offsets", "feed_codes"]
    serve += ["feed_scores", "feed_reason_codes", "trending_codes", "trending_scores", "trending_reason_codes"]
    serve += ["catalogue_text", "catalogue_dense"]
    serve += ["video_vectors", "user_ids", "user_vectors"]
    serve += ["watched_users", "watched_offsets", "watched_codes"]
    expected |= {f"serve/{name}.npy" for name in serve} | {"serve/index.json"}
    assert set(manifest.checksums) == expected
    assert all(sha256_file(paths.root / rel) == digest for rel, digest in manifest.checksums.items())
    ts = Lake(settings.paths.lake_dir).read("interactions", columns=["ts"])["ts"]
    assert dt.datetime.fromisoformat(manifest.lake_watermark) == pc.max(ts).as_py()
    assert (manifest.milvus_uri, manifest.milvus_collection) == ("milvus.db", "videos")
    assert manifest.model_version == MODEL and manifest.embedding_dim == DIM and manifest.feed_length == FEED


def _swap_two_rows(rows: list[dict]) -> list[dict]:
    rows[1], rows[2] = rows[2], rows[1]
    return rows


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda rows: [*rows, {**rows[0], "video_id": rows[-1]["video_id"]}], "duplicate (user_id, rank)"),
        (
            lambda rows: [{**r, "video_id": rows[0]["video_id"]} if i == 1 else r for i, r in enumerate(rows)],
            "(user_id, video_id)",
        ),
        (lambda rows: [{**r, "video_id": "v_nope"} if i == 3 else r for i, r in enumerate(rows)], "unknown video ids"),
        (lambda rows: [{**r, "score": float("nan")} if i == 5 else r for i, r in enumerate(rows)], "non-finite scores"),
        (lambda rows: [{**r, "score": float("inf")} if i == 6 else r for i, r in enumerate(rows)], "non-finite scores"),
        (lambda rows: [r for r in rows if r["user_id"] != rows[0]["user_id"]], "users without a feed: 1 of"),
        (lambda rows: [r for i, r in enumerate(rows) if i != 4], "not contiguous from 0"),
        (lambda rows: [{**r, "rank": r["rank"] + 1} for r in rows], "not contiguous from 0"),
        (_swap_two_rows, "not sorted by (user_id, rank)"),
        (lambda rows: [{**r, "reason": ""} if i == 0 else r for i, r in enumerate(rows)], "without a reason"),
        (lambda rows: [*rows, {**rows[0], "user_id": "u_stranger"}], "unknown to the lake"),
    ],
)
def test_corrupt_feeds_are_refused_with_the_reason(settings: Settings, change: Callable, reason: str) -> None:
    paths = build_snapshot(settings)
    rewrite_part(paths, change)
    with pytest.raises(SnapshotError, match=re.escape(reason)):
        validate_snapshot(settings.paths, paths.snapshot_id)
    assert not paths.manifest_file.exists()
    with pytest.raises(SnapshotError, match="not been validated"):
        publish(settings.paths, paths.snapshot_id, keep=settings.batch.snapshots_keep)
    assert live_snapshot_id(settings.paths) is None


def _repeat_first_video(rows: list[dict]) -> list[dict]:
    """The first user's second row, and the fourth user's third and fourth rows, take that user's first video."""
    users = list(dict.fromkeys(r["user_id"] for r in rows))
    first = {u: next(r["video_id"] for r in rows if r["user_id"] == u) for u in users}
    changed, seen = [], {}
    for r in rows:
        at = seen[r["user_id"]] = seen.get(r["user_id"], -1) + 1
        repeat = (r["user_id"] == users[0] and at == 1) or (r["user_id"] == users[3] and at in (2, 3))
        changed.append({**r, "video_id": first[r["user_id"]]} if repeat else r)
    return changed


@pytest.mark.parametrize("indexed", [True, False], ids=["from the serving index", "in DuckDB"])
def test_repeated_videos_are_counted_alike_from_the_index_and_in_duckdb(settings: Settings, indexed: bool) -> None:
    """The rule a feed repeats no video is read off the serving index's codes where validation writes one, and
    counted in DuckDB where it does not (a snapshot begun before the index): the same refusal either way."""
    paths = build_snapshot(settings)
    if not indexed:
        build = json.loads(paths.build_file.read_text())
        paths.build_file.write_text(json.dumps({**build, "serving_index": False}))
    rewrite_part(paths, _repeat_first_video)
    users = sorted({r["user_id"] for r in pq.read_table(paths.feed_part(0, USER_SHARDS)).to_pylist()})
    reason = f"duplicate (user_id, video_id): 3 extra row(s), e.g. user {users[0]}, {users[3]}"
    with pytest.raises(SnapshotError, match=re.escape(reason)):
        validate_snapshot(settings.paths, paths.snapshot_id)
    assert (paths.root / "serve").is_dir() == indexed


def _drop_first_video_vector(paths: SnapshotPaths) -> None:
    table = pq.read_table(paths.video_vectors(0, 1))
    pq.write_table(table.slice(1), paths.video_vectors(0, 1))


def _nan_user_vector(paths: SnapshotPaths) -> None:
    table = pq.read_table(paths.user_vectors(1, USER_SHARDS))
    values = table["vector"].combine_chunks().flatten().to_numpy().copy()
    values[3] = np.nan
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(values), DIM)
    pq.write_table(table.set_column(1, "vector", vectors), paths.user_vectors(1, USER_SHARDS))


def _wrong_dim(paths: SnapshotPaths) -> None:
    table = pq.read_table(paths.video_vectors(0, 1))
    rng = np.random.default_rng(0)
    pq.write_table(vector_table("video_id", table["video_id"].to_pylist(), rng, dim=DIM + 1), paths.video_vectors(0, 1))


def _rewrite_catalogue(paths: SnapshotPaths, change: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(change(pq.read_table(paths.catalogue_part(0, 1))), paths.catalogue_part(0, 1))


def _catalogue_out_of_step(table: pa.Table) -> pa.Table:
    # Two rows swapped: every video is still there, but row i no longer describes vector i.
    order = list(range(table.num_rows))
    order[0], order[1] = 1, 0
    return table.take(order)


def _nan_catalogue_text(table: pa.Table) -> pa.Table:
    text = table["text"].combine_chunks()
    values = text.flatten().to_numpy().copy()
    values[5] = np.nan
    index = table.schema.get_field_index("text")
    return table.set_column(index, "text", pa.FixedSizeListArray.from_arrays(pa.array(values), text.type.list_size))


def _rank_int64(paths: SnapshotPaths) -> None:
    table = pq.read_table(paths.feed_part(1, USER_SHARDS))
    pq.write_table(table.set_column(1, "rank", pc.cast(table["rank"], pa.int64())), paths.feed_part(1, USER_SHARDS))


def _duplicate_trending(paths: SnapshotPaths) -> None:
    table = pq.read_table(paths.trending_file)
    ids = table["video_id"].to_pylist()
    pq.write_table(table.set_column(1, "video_id", pa.array([ids[0], *ids[1:-1], ids[0]])), paths.trending_file)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.feed_part(1, USER_SHARDS).unlink(), "missing file(s): feeds/part-00001-of-00002.parquet"),
        (lambda p: p.user_vectors(0, USER_SHARDS).unlink(), "missing file(s): vectors/users-00000-of-00002.parquet"),
        (lambda p: p.trending_file.unlink(), "missing file(s): trending.parquet"),
        (lambda p: p.milvus_lite_file.unlink(), "milvus.db missing"),
        (_drop_first_video_vector, "1499 video vectors for 1500 videos"),
        (_nan_user_vector, "1 non-finite vector component"),
        (_wrong_dim, "fixed_size_list<float>[8] (the build's dim)"),
        (_rank_int64, "rank is int64, expected int32"),
        (_duplicate_trending, "trending has 1 duplicate video id"),
        (lambda p: p.feed_part(0, USER_SHARDS).write_bytes(b"PAR1 not really"), "not a readable Parquet file"),
        (lambda p: (p.feeds_dir / "part-00000-of-00004.parquet").write_bytes(b""), "unexpected file(s)"),
        (lambda p: p.catalogue_part(0, 1).unlink(), "missing file(s): catalogue/part-00000-of-00001.parquet"),
        (lambda p: (p.catalogue_dir / "part-00001-of-00002.parquet").write_bytes(b""), "unexpected file(s)"),
        (lambda p: _rewrite_catalogue(p, _catalogue_out_of_step), "does not list the videos of videos-00000"),
        (lambda p: _rewrite_catalogue(p, lambda t: t.slice(1)), "does not list the videos of videos-00000"),
        (lambda p: _rewrite_catalogue(p, _nan_catalogue_text), "null or non-finite text"),
        (lambda p: _rewrite_catalogue(p, lambda t: t.drop_columns(["creator_id"])), "creator_id is absent"),
    ],
)
def test_damaged_snapshot_files_are_refused(settings: Settings, damage: Callable, reason: str) -> None:
    paths = build_snapshot(settings)
    damage(paths)
    with pytest.raises(SnapshotError, match=re.escape(reason)):
        validate_snapshot(settings.paths, paths.snapshot_id)


def test_every_reason_is_listed_and_a_stale_manifest_is_withdrawn(settings: Settings) -> None:
    paths = valid_snapshot(settings)
    assert paths.manifest_file.is_file()
    rewrite_part(
        paths,
        lambda rows: [{**r, "score": float("nan"), "video_id": "v_x"} if i == 0 else r for i, r in enumerate(rows)],
    )
    paths.trending_file.unlink()
    with pytest.raises(SnapshotError) as err:
        validate_snapshot(settings.paths, paths.snapshot_id)
    for reason in ("non-finite scores", "unknown video ids", "trending.parquet", "v_x"):
        assert reason in str(err.value)
    assert not paths.manifest_file.exists()  # the earlier "valid" verdict no longer stands


# ---- publish, history, idempotence, checksums -----------------------------------------------------------------------


def test_publish_swaps_live_and_appends_history(settings: Settings) -> None:
    first, second = valid_snapshot(settings, 1), valid_snapshot(settings, 2)
    assert live_snapshot(settings.paths) is None
    result = publish(settings.paths, first.snapshot_id, keep=settings.batch.snapshots_keep)
    assert result.changed and result.previous is None and result.model_version == MODEL
    assert (settings.paths.snapshots_dir / "LIVE").read_text() == f"{first.snapshot_id}\n"
    assert live_snapshot(settings.paths) == first
    result = publish(settings.paths, second.snapshot_id, keep=settings.batch.snapshots_keep)
    assert result.previous == first.snapshot_id and live_snapshot_id(settings.paths) == second.snapshot_id
    history = read_history(settings.paths)
    assert [(h["snapshot_id"], h["action"], h["previous"]) for h in history] == [
        (first.snapshot_id, "publish", None),
        (second.snapshot_id, "publish", first.snapshot_id),
    ]
    assert all(h["model_version"] == MODEL and h["published_at"] for h in history)
    again = publish(
        settings.paths, second.snapshot_id, keep=settings.batch.snapshots_keep
    )  # idempotent: nothing changes
    assert not again.changed and again.snapshot_id == second.snapshot_id
    assert read_history(settings.paths) == history
    assert [(s.snapshot_id, s.state) for s in list_snapshots(settings.paths)] == [
        (first.snapshot_id, "published"),
        (second.snapshot_id, "live"),
    ]


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_file_damaged_after_validation_is_refused_at_publish(settings: Settings, how: str) -> None:
    old = valid_snapshot(settings, 1)
    publish(settings.paths, old.snapshot_id, keep=settings.batch.snapshots_keep)
    new = valid_snapshot(settings, 2)
    part = new.feed_part(1, USER_SHARDS)
    if how == "flip":
        with part.open("r+b") as fh:
            fh.seek(100)
            byte = fh.read(1)
            fh.seek(100)
            fh.write(bytes([byte[0] ^ 0xFF]))
    elif how == "truncate":
        with part.open("r+b") as fh:
            fh.truncate(part.stat().st_size // 2)
    else:
        part.unlink()
    with pytest.raises(SnapshotError, match=re.escape("feeds/part-00001-of-00002.parquet (")):
        publish(settings.paths, new.snapshot_id, keep=settings.batch.snapshots_keep)
    assert live_snapshot_id(settings.paths) == old.snapshot_id
    assert [h["snapshot_id"] for h in read_history(settings.paths)] == [old.snapshot_id]


def test_unvalidated_or_unknown_snapshot_is_refused(settings: Settings) -> None:
    paths = build_snapshot(settings)
    with pytest.raises(SnapshotError, match="not been validated"):
        publish(settings.paths, paths.snapshot_id, keep=settings.batch.snapshots_keep)
    with pytest.raises(SnapshotError, match="no snapshot"):
        publish(settings.paths, "s20200101T000000Z-gone", keep=settings.batch.snapshots_keep)
    with pytest.raises(SnapshotError, match="malformed snapshot id"):
        publish(settings.paths, "../../etc", keep=settings.batch.snapshots_keep)


# ---- pruning --------------------------------------------------------------------------------------------------------


def _age(paths: SnapshotPaths, days: float) -> None:
    when = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).timestamp()
    for f in [paths.root, *paths.root.rglob("*")]:
        os.utime(f, (when, when))


def test_keeps_k_published_never_the_live_or_one_in_progress(settings: Settings) -> None:
    settings = settings.override(snapshots_keep=2)
    abandoned = build_snapshot(settings, 5)  # begun long ago, never finished
    _age(abandoned, 3)
    in_progress = build_snapshot(settings, 50)  # newer than anything published, still being written
    published = []
    for second in range(10, 14):
        paths = valid_snapshot(settings, second)
        result = publish(settings.paths, paths.snapshot_id, keep=settings.batch.snapshots_keep)
        published.append(paths.snapshot_id)
    assert result.pruned == [published[1]]
    remaining = sorted(p.name for p in settings.paths.snapshots_dir.iterdir() if p.is_dir())
    assert remaining == [*published[2:], in_progress.snapshot_id]
    assert live_snapshot_id(settings.paths) == published[-1]
    # A rollback makes an older one live; the next publish keeps it (most recently live) and the new one.
    assert rollback(settings.paths) == published[2]
    newest = valid_snapshot(settings, 20)
    result = publish(settings.paths, newest.snapshot_id, keep=settings.batch.snapshots_keep)
    assert result.pruned == [published[3]]
    assert {s.snapshot_id for s in list_snapshots(settings.paths)} == {
        published[2],
        newest.snapshot_id,
        in_progress.snapshot_id,
    }
    # Once the in-progress build is abandoned for longer than the threshold, pruning removes it too.
    _age(in_progress, ABANDONED_AFTER.days + 1)
    assert prune(settings.paths, keep=settings.batch.snapshots_keep) == [in_progress.snapshot_id]
    assert live_snapshot_id(settings.paths) == newest.snapshot_id and live_snapshot(settings.paths).root.is_dir()


def test_the_history_keeps_its_tail_and_what_it_says_of_snapshots_still_held(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publish log does not grow with every publish: past HISTORY_KEPT entries the older ones go, except
    those naming a snapshot still held, which pruning and rollback read."""
    import rec_core.snapshot.publish as snapshot

    monkeypatch.setattr(snapshot, "HISTORY_KEPT", 1)
    settings = settings.override(snapshots_keep=2)
    ids = []
    for second in range(1, 5):
        paths = valid_snapshot(settings, second)
        publish(settings.paths, paths.snapshot_id, keep=settings.batch.snapshots_keep)
        ids.append(paths.snapshot_id)
    # Trimmed as each publish writes it, before that publish prunes: the two held, and the one pruned just now.
    assert [e["snapshot_id"] for e in read_history(settings.paths)] == ids[1:]
    assert rollback(settings.paths) == ids[2]  # the older held one's entry is what rollback goes back to
    assert [(e["snapshot_id"], e["action"]) for e in read_history(settings.paths)] == [
        (ids[2], "publish"),
        (ids[3], "publish"),
        (ids[2], "rollback"),
    ]


def test_pruning_drops_server_collections_and_retries_failed_drops(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rec_core.snapshot.publish as snapshot

    settings = settings.override(snapshots_keep=1)
    ids = []
    for second in (1, 2):
        paths = build_snapshot(settings, second, milvus=False)
        validate_snapshot(settings.paths, paths.snapshot_id, require_milvus=False)
        ids.append(paths.snapshot_id)
    server = settings.override(milvus_uri="http://milvus.invalid:19530")
    dropped: list[str] = []
    fail = {"on": True}

    def drop(paths: PathSettings, snapshot_id: str) -> None:
        if fail["on"]:
            raise ConnectionError("milvus unreachable")
        dropped.append(SnapshotPaths(paths.snapshots_dir / snapshot_id).collection_name(paths))

    monkeypatch.setattr(snapshot, "_drop_collection", drop)
    publish(server.paths, ids[0], keep=server.batch.snapshots_keep)
    publish(
        server.paths, ids[1], keep=server.batch.snapshots_keep
    )  # prunes ids[0]; its drop fails, so its trash folder stays for a retry
    assert not (settings.paths.snapshots_dir / ids[0]).exists()
    assert (settings.paths.snapshots_dir / f".trash-{ids[0]}").is_dir()
    fail["on"] = False
    prune(server.paths, keep=server.batch.snapshots_keep)
    assert dropped == [f"videos_{ids[0].replace('-', '_')}"]
    assert not (settings.paths.snapshots_dir / f".trash-{ids[0]}").exists()


# ---- rollback -------------------------------------------------------------------------------------------------------


def test_rollback_goes_back_and_never_returns_to_a_snapshot_rolled_back_from(settings: Settings) -> None:
    with pytest.raises(SnapshotError, match="nothing has been published"):
        rollback(settings.paths)
    a, b, c = (valid_snapshot(settings, s) for s in (1, 2, 3))
    for paths in (a, b, c):
        publish(settings.paths, paths.snapshot_id, keep=settings.batch.snapshots_keep)
    assert rollback(settings.paths) == b.snapshot_id
    assert live_snapshot_id(settings.paths) == b.snapshot_id
    last = read_history(settings.paths)[-1]
    assert (last["snapshot_id"], last["action"], last["previous"]) == (b.snapshot_id, "rollback", c.snapshot_id)
    assert rollback(settings.paths) == a.snapshot_id  # not back to c, which was rolled back from
    with pytest.raises(SnapshotError, match="no earlier published snapshot"):
        rollback(settings.paths)
    assert live_snapshot_id(settings.paths) == a.snapshot_id
    publish(settings.paths, c.snapshot_id, keep=settings.batch.snapshots_keep)  # an explicit publish rehabilitates c
    assert rollback(settings.paths) == a.snapshot_id


def test_rollback_refuses_a_damaged_target(settings: Settings) -> None:
    a, b = valid_snapshot(settings, 1), valid_snapshot(settings, 2)
    publish(settings.paths, a.snapshot_id, keep=settings.batch.snapshots_keep)
    publish(settings.paths, b.snapshot_id, keep=settings.batch.snapshots_keep)
    a.trending_file.write_bytes(b"garbage")
    with pytest.raises(SnapshotError, match=re.escape("trending.parquet")):
        rollback(settings.paths)
    assert live_snapshot_id(settings.paths) == b.snapshot_id


def test_rollback_tolerates_a_milvus_lite_file_rewritten_while_live(settings: Settings) -> None:
    a, b = valid_snapshot(settings, 1), valid_snapshot(settings, 2)
    publish(settings.paths, a.snapshot_id, keep=settings.batch.snapshots_keep)
    a.milvus_lite_file.write_bytes(b"SQLite pages rewritten by the API's Milvus Lite")
    publish(settings.paths, b.snapshot_id, keep=settings.batch.snapshots_keep)
    assert rollback(settings.paths) == a.snapshot_id


# ---- the command line -----------------------------------------------------------------------------------------------


def test_command_line(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(settings.paths.data_dir)]
    good, bad = build_snapshot(settings, 1), build_snapshot(settings, 2)
    rewrite_part(bad, lambda rows: rows[1:])
    assert publish_main(["--snapshot", good.snapshot_id, "--validate-only", *data]) == 0
    assert live_snapshot_id(settings.paths) is None
    assert publish_main(["--snapshot", good.snapshot_id, *data]) == 0
    assert live_snapshot_id(settings.paths) == good.snapshot_id and settings.paths.warehouse_path.is_file()
    capsys.readouterr()
    assert publish_main(["--snapshot", bad.snapshot_id, *data]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "not contiguous from 0" in err
    assert publish_main(["--snapshot", good.snapshot_id, *data]) == 0
    assert "already live" in capsys.readouterr().out
    assert publish_main(["--list", *data]) == 0
    out = capsys.readouterr().out
    assert good.snapshot_id in out and "building" in out and "live" in out
    assert publish_main(["--rollback", *data]) == 2
    assert "no earlier published snapshot" in capsys.readouterr().err


def test_the_dag_tasks_one_at_a_time_from_the_command_line(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`jobs.pipeline stage` runs what the DAG's validate, publish and rebuild_warehouse tasks run, and no more:
    its publish does not validate, so an unvalidated snapshot is refused, as the task refuses it."""
    monkeypatch.setenv("REC_DATA_DIR", str(settings.paths.data_dir))
    paths = build_snapshot(settings, 1)
    assert pipeline_main(["stage", "publish", "--snapshot", paths.snapshot_id]) == 2
    assert live_snapshot_id(settings.paths) is None
    assert pipeline_main(["stage", "validate"]) == 2
    assert "works on a snapshot: pass --snapshot" in capsys.readouterr().err
    assert pipeline_main(["stage", "validate", "--snapshot", paths.snapshot_id]) == 0
    assert json.loads(capsys.readouterr().out)["snapshot_id"] == paths.snapshot_id
    assert not settings.paths.warehouse_path.exists()
    assert pipeline_main(["stage", "publish", "--snapshot", paths.snapshot_id]) == 0
    assert live_snapshot_id(settings.paths) == paths.snapshot_id
    assert not settings.paths.warehouse_path.exists()
    assert pipeline_main(["stage", "rebuild_warehouse"]) == 0
    assert settings.paths.warehouse_path.is_file()


# ---- kills during publish -------------------------------------------------------------------------------------------

# Runs publish in a child process that SIGKILLs itself at one chosen point, through wrappers around the file
# operations publish uses (no test hooks in the product code).
CHILD = textwrap.dedent(
    """
    import dataclasses, os, pathlib, shutil, signal, sys
    import rec_core.snapshot.manifest as manifest
    import rec_core.snapshot.publish as snap
    from rec_core.settings import Settings

    data_dir, snapshot_id, point, keep = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    real_replace, real_write, real_rmtree = os.replace, pathlib.Path.write_bytes, shutil.rmtree
    real_sha = manifest.sha256_file
    calls = {"sha": 0}

    def replace(src, dst, *a, **k):
        target = pathlib.Path(dst).name
        if point == "before-rename" and target == "LIVE":
            die()
        real_replace(src, dst, *a, **k)
        if point == "after-rename" and target == "LIVE":
            die()

    def write_bytes(self, data):
        if (point == "mid-pointer" and self.name.startswith(".LIVE.")) or (
            point == "mid-history" and self.name.startswith(".history.json.")
        ):
            real_write(self, data[: len(data) // 2])
            die()
        return real_write(self, data)

    def rmtree(path, *a, **k):
        if point == "mid-prune":
            files = sorted(p for p in pathlib.Path(path).rglob("*") if p.is_file())
            for f in files[: len(files) // 2]:
                f.unlink()
            die()
        return real_rmtree(path, *a, **k)

    def sha(path):
        calls["sha"] += 1
        if point == "mid-verify" and calls["sha"] == 3:
            die()
        return real_sha(path)

    os.replace, pathlib.Path.write_bytes, shutil.rmtree, manifest.sha256_file = replace, write_bytes, rmtree, sha
    settings = Settings.load({}).override( data_dir=pathlib.Path(data_dir), snapshots_keep=keep)
    snap.publish(settings.paths, snapshot_id, keep=settings.batch.snapshots_keep)
    print("publish finished without being killed", file=sys.stderr)
    """
)


@pytest.mark.parametrize(
    ("point", "new_is_live"),
    [
        ("mid-verify", False),
        ("mid-pointer", False),
        ("before-rename", False),
        ("after-rename", True),
        ("mid-history", True),
        ("mid-prune", True),
    ],
)
def test_publish_killed_at_any_point_leaves_one_whole_snapshot_live(
    settings: Settings, point: str, new_is_live: bool
) -> None:
    keep = 1 if point == "mid-prune" else 3
    settings = settings.override(snapshots_keep=keep)
    old = valid_snapshot(settings, 1)
    publish(settings.paths, old.snapshot_id, keep=settings.batch.snapshots_keep)
    new = valid_snapshot(settings, 2)
    before = {p.snapshot_id: file_bytes(p) for p in (old, new)}
    history = read_history(settings.paths)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(settings.paths.data_dir), new.snapshot_id, point, str(keep)],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]

    # Exactly one whole snapshot is live: the old one, or (once the rename happened) the new one.
    live = (settings.paths.snapshots_dir / "LIVE").read_text()
    expected = new if new_is_live else old
    assert live == f"{expected.snapshot_id}\n"
    assert_intact(settings, expected, before[expected.snapshot_id])
    if not new_is_live:
        assert read_history(settings.paths) == history  # nothing but the pointer is ever the visible change
        assert_intact(settings, new, before[new.snapshot_id])
    elif point == "mid-prune":
        assert not (settings.paths.snapshots_dir / old.snapshot_id).exists()  # renamed to trash before any deletion
        assert [s.snapshot_id for s in list_snapshots(settings.paths)] == [new.snapshot_id]

    # The next publish finishes the job: history records the live snapshot once, the trash is gone.
    result = publish(settings.paths, new.snapshot_id, keep=settings.batch.snapshots_keep)
    assert result.changed is not new_is_live
    assert live_snapshot_id(settings.paths) == new.snapshot_id
    entries = read_history(settings.paths)
    assert [e["snapshot_id"] for e in entries] == [old.snapshot_id, new.snapshot_id]
    assert not [
        p for p in settings.paths.snapshots_dir.iterdir() if p.name.startswith((".trash-", ".LIVE.", ".history"))
    ]
    assert_intact(settings, new, before[new.snapshot_id])
    if point != "mid-prune":
        assert_intact(settings, old, before[old.snapshot_id])
        assert rollback(settings.paths) == old.snapshot_id


def test_serving_index_damaged_after_validation_is_refused_at_publish(settings: Settings) -> None:
    """The API maps serve/ as it is: a byte changed there after validation must keep the snapshot from going live."""
    old = valid_snapshot(settings, 1)
    publish(settings.paths, old.snapshot_id, keep=settings.batch.snapshots_keep)
    new = valid_snapshot(settings, 2)
    codes = new.root / "serve" / "feed_codes.npy"
    with codes.open("r+b") as fh:
        fh.seek(-1, 2)
        byte = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(SnapshotError, match=re.escape("serve/feed_codes.npy (checksum mismatch)")):
        publish(settings.paths, new.snapshot_id, keep=settings.batch.snapshots_keep)
    assert live_snapshot_id(settings.paths) == old.snapshot_id


def test_a_build_record_from_a_newer_batch_still_reads(settings: Settings) -> None:
    """A field a newer batch added to build.json is left out, so an API not yet upgraded keeps loading snapshots."""
    paths = build_snapshot(settings)
    raw = json.loads(paths.build_file.read_text())
    paths.build_file.write_text(json.dumps({**raw, "added_by_a_newer_batch": {"x": 1}}))
    assert dataclasses.asdict(paths.read_build()) == raw


def test_two_builds_begun_in_one_second_are_a_clear_error(settings: Settings) -> None:
    """Snapshot ids are to the second: the second build of a model that began in the same one died with a bare
    FileExistsError."""
    first = build_snapshot(settings, 7, milvus=False)
    with pytest.raises(SnapshotError, match="began this second; begin again"):
        build_snapshot(settings, 7, milvus=False)
    assert first.read_build().snapshot_id == first.snapshot_id


def test_a_snapshot_begun_before_the_live_one_is_not_published_over_it(settings: Settings) -> None:
    """An old pipeline run cleared and run again in the Airflow UI published its snapshot over the newer live one:
    a rollback, recorded as a publish."""
    older, newer = valid_snapshot(settings, 1), valid_snapshot(settings, 2)
    publish(settings.paths, newer.snapshot_id, keep=3)
    with pytest.raises(SnapshotError, match="began before the live"):
        publish(settings.paths, older.snapshot_id, keep=3)
    assert live_snapshot_id(settings.paths) == newer.snapshot_id
    publish(settings.paths, older.snapshot_id, keep=3, allow_older=True)  # the operator's deliberate choice
    assert live_snapshot_id(settings.paths) == older.snapshot_id
    assert publish(settings.paths, newer.snapshot_id, keep=3).changed  # forward again


def test_a_run_resumes_only_a_snapshot_still_in_progress(settings: Settings) -> None:
    """The materialize_feeds DAG given the live snapshot's id rewrote its feeds in place, under the API."""
    from rec_core.snapshot.begin import resume

    live, building = valid_snapshot(settings, 1), build_snapshot(settings, 2, milvus=False)
    publish(settings.paths, live.snapshot_id, keep=3)
    assert resume(settings, snapshot_id=building.snapshot_id) == {"snapshot_id": building.snapshot_id}
    assert resume(settings, snapshot_id=None) == {"snapshot_id": building.snapshot_id}
    with pytest.raises(SnapshotError, match="is validated already"):
        resume(settings, snapshot_id=live.snapshot_id)
