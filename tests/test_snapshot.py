"""Snapshot validation, publishing, pruning, rollback, and kills during publish."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.generate_data import generate_data
from rec_core.lake import Lake
from rec_core.settings import Settings
from rec_core.snapshot import list_snapshots, publish, rollback, validate_snapshot
from rec_core.snapshot_layout import SnapshotError, SnapshotPaths, begin_snapshot, live_snapshot_id

DIM = 8


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = dataclasses.replace(Settings.load({}), data_dir=tmp_path_factory.mktemp("snap") / "data", feed_length=20)
    generate_data(settings, "tiny", seed=3)
    return settings


@pytest.fixture
def settings(base: Settings, tmp_path: Path) -> Settings:
    # Each test gets its own snapshots folder over the shared lake.
    return _fresh(base, tmp_path)


def _fresh(base: Settings, tmp_path: Path) -> Settings:
    data = tmp_path / "data"
    data.mkdir()
    (data / "lake").symlink_to(base.lake_dir)
    return dataclasses.replace(base, data_dir=data)


def build(settings: Settings, second: int = 0) -> SnapshotPaths:
    """A small, valid snapshot written by hand: every user gets the same 20 videos."""
    lake = Lake(settings.lake_dir)
    videos = sorted(lake.read("videos", columns=["video_id"])["video_id"].to_pylist())
    users = sorted(
        set(lake.read("users", columns=["user_id"])["user_id"].to_pylist())
        | set(lake.read("interactions", columns=["user_id"])["user_id"].to_pylist())
    )
    paths = begin_snapshot(
        settings,
        model_version="m20260101T000000Z-abcd1234",
        lake_version=lake.current().name,
        as_of=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        video_shards=1,
        user_shards=2,
        embedding_dim=DIM,
        now=dt.datetime(2026, 1, 1, 0, 0, second, tzinfo=dt.UTC),
    )
    vec = pa.list_(pa.float32(), DIM)
    rng = np.random.default_rng(second)

    def vectors(ids: list[str], column: str) -> pa.Table:
        return pa.table({column: ids, "vector": pa.array(list(rng.standard_normal((len(ids), DIM))), vec)})

    pq.write_table(vectors(videos, "video_id"), paths.video_vectors(0, 1))
    half = len(users) // 2
    for shard, part in enumerate([users[:half], users[half:]]):
        pq.write_table(vectors(part, "user_id"), paths.user_vectors(shard, 2))
        rows = [(u, r, videos[r], 1.0 - r / 100, "popular right now") for u in part for r in range(20)]
        pq.write_table(_feeds(rows), paths.feed_part(shard, 2))
    pq.write_table(
        pa.table({"rank": list(range(20)), "video_id": videos[:20], "score": [1.0] * 20, "reason": ["trending"] * 20}),
        paths.trending_file,
    )
    return paths


def _feeds(rows: list[tuple]) -> pa.Table:
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "rank": pa.array([r[1] for r in rows], pa.int32()),
            "video_id": [r[2] for r in rows],
            "score": pa.array([r[3] for r in rows], pa.float32()),
            "reason": [r[4] for r in rows],
        }
    )


def _rewrite_part(paths: SnapshotPaths, change) -> None:
    part = paths.feed_part(0, 2)
    rows = pq.read_table(part).to_pylist()
    pq.write_table(_feeds([tuple(r.values()) for r in change(rows)]), part)


def test_valid_snapshot_publishes_and_rolls_back(settings: Settings) -> None:
    first = build(settings, 1)
    validate_snapshot(settings, first.snapshot_id)
    publish(settings, first.snapshot_id)
    assert live_snapshot_id(settings) == first.snapshot_id
    second = build(settings, 2)
    validate_snapshot(settings, second.snapshot_id)
    result = publish(settings, second.snapshot_id)
    assert result.previous == first.snapshot_id and live_snapshot_id(settings) == second.snapshot_id
    assert not publish(settings, second.snapshot_id).changed  # idempotent
    assert rollback(settings) == first.snapshot_id
    assert live_snapshot_id(settings) == first.snapshot_id
    assert [s["live"] for s in list_snapshots(settings)] == [True, False]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda rows: [*rows, rows[0]], "duplicate (user_id, rank)"),
        (lambda rows: [{**r, "video_id": "nope"} if i == 3 else r for i, r in enumerate(rows)], "unknown video"),
        (lambda rows: [{**r, "score": float("nan")} if i == 5 else r for i, r in enumerate(rows)], "non-finite"),
        (lambda rows: [r for r in rows if r["user_id"] != rows[0]["user_id"]], "users without a feed"),
        (lambda rows: [r for i, r in enumerate(rows) if i != 4], "not contiguous"),
        (lambda rows: rows[::-1], "not sorted"),
    ],
)
def test_corrupt_snapshot_is_refused(settings: Settings, change, reason: str) -> None:
    paths = build(settings)
    _rewrite_part(paths, change)
    with pytest.raises(SnapshotError, match=re.escape(reason)):
        validate_snapshot(settings, paths.snapshot_id)
    with pytest.raises(SnapshotError, match="not been validated"):
        publish(settings, paths.snapshot_id)
    assert live_snapshot_id(settings) is None


def test_missing_shard_is_refused(settings: Settings) -> None:
    paths = build(settings)
    paths.feed_part(1, 2).unlink()
    with pytest.raises(SnapshotError, match="missing file"):
        validate_snapshot(settings, paths.snapshot_id)


def test_file_damaged_after_validation_is_refused_at_publish(settings: Settings) -> None:
    paths = build(settings)
    validate_snapshot(settings, paths.snapshot_id)
    with paths.feed_part(0, 2).open("r+b") as fh:
        fh.seek(10)
        fh.write(b"\x00\x00\x00")
    with pytest.raises(SnapshotError, match="checksum"):
        publish(settings, paths.snapshot_id)
    assert live_snapshot_id(settings) is None


def test_keeps_k_snapshots_never_the_live_or_one_in_progress(settings: Settings) -> None:
    settings = dataclasses.replace(settings, snapshots_keep=2)
    published = []
    for second in range(4):
        paths = build(settings, 10 + second)
        validate_snapshot(settings, paths.snapshot_id)
        publish(settings, paths.snapshot_id)
        published.append(paths.snapshot_id)
    in_progress = build(settings, 30)
    assert sorted(p.name for p in settings.snapshots_dir.glob("s*")) == [*published[2:], in_progress.snapshot_id]


@pytest.mark.parametrize("die_at", ["history", "pointer"])
def test_killed_publish_leaves_the_previous_snapshot_live(settings: Settings, die_at: str) -> None:
    old = build(settings, 40)
    validate_snapshot(settings, old.snapshot_id)
    publish(settings, old.snapshot_id)
    new = build(settings, 41)
    validate_snapshot(settings, new.snapshot_id)
    checksums = {f.name: f.read_bytes() for f in old.feeds_dir.iterdir()}
    # Kill the publisher inside the write of the history (before the swap) or of the pointer itself.
    target = "history.json" if die_at == "history" else "LIVE"
    script = f"""
import os, signal, dataclasses
from pathlib import Path
import rec_core.snapshot as snap
from rec_core.settings import Settings
real = snap.write_bytes_atomic
def dying(path, data):
    if Path(path).name == {target!r}:
        tmp = Path(path).with_name("." + Path(path).name + ".partial")
        tmp.write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, data)
snap.write_bytes_atomic = dying
settings = dataclasses.replace(Settings.load({{}}), data_dir=Path({str(settings.data_dir)!r}))
snap.publish(settings, {new.snapshot_id!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env=dict(os.environ))
    assert proc.returncode == -9, proc.stderr.decode()[-500:]
    assert live_snapshot_id(settings) == old.snapshot_id
    assert {f.name: f.read_bytes() for f in old.feeds_dir.iterdir()} == checksums
    # Publishing again after the crash works.
    publish(settings, new.snapshot_id)
    assert live_snapshot_id(settings) == new.snapshot_id
