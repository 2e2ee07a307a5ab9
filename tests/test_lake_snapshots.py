"""Lake versions vs. snapshots: pruning keeps what a kept snapshot reads; ingest never reverts a concurrent import."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

import rec_core.data.inbox_merge as ingest_job
from feed_api.snapshot_load import load_view
from rec_core.data.inbox import InboxBatch, InboxWriter, consumed_offsets
from rec_core.data.inbox_merge import ingest_inbox
from rec_core.data.lake import Lake
from rec_core.settings import Settings
from rec_core.snapshot.files import read_lake_table
from rec_core.snapshot.layout import begin_snapshot, live_snapshot_id, snapshot_paths
from rec_core.snapshot.publish import rollback
from rec_core.stages import run_all
from rec_core.synthetic.commit import generate_data

AT = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


@pytest.fixture
def world(tmp_path: Path) -> Settings:
    # Keep ONE lake version: every commit then prunes everything but the live version and what snapshots pin.
    settings = Settings.load({}).override(data_dir=tmp_path / "data", lake_versions_keep=1)
    generate_data(settings, "tiny", seed=3)
    return settings


def _ingest_one_event(settings: Settings, user_id: str) -> str:
    video = Lake(settings.paths.lake_dir).read("videos")["video_id"][0].as_py()
    InboxWriter(settings.paths.inbox_dir).append("event", {"user_id": user_id, "video_id": video, "type": "like"}, AT)
    return ingest_inbox(settings)["lake_version"]


def test_lake_pruning_keeps_the_version_a_snapshot_reads(world: Settings) -> None:
    built_from = Lake(world.paths.lake_dir).current().name
    paths = begin_snapshot(
        world.paths,
        feed_length=world.batch.feed_length,
        model_version="m-test",
        lake_version=built_from,
        as_of=AT,
        video_shards=1,
        user_shards=1,
        embedding_dim=8,
    )
    for i in range(3):  # each through a real writer job; with keep=1 each would prune the snapshot's version
        assert _ingest_one_event(world, f"late{i}") != built_from
    assert built_from in Lake(world.paths.lake_dir).versions()
    build = paths.read_build()
    assert read_lake_table(world.paths, build, "videos").num_rows > 0  # what the embed stages and validation read
    assert read_lake_table(world.paths, build, "interactions").num_rows > 0

    # Once the snapshot is gone, its lake version is an ordinary old version again.
    shutil.rmtree(paths.root)
    _ingest_one_event(world, "later")
    assert built_from not in Lake(world.paths.lake_dir).versions()


def test_regenerating_the_world_keeps_the_version_a_snapshot_reads(world: Settings) -> None:
    built_from = Lake(world.paths.lake_dir).current().name
    begin_snapshot(
        world.paths,
        feed_length=world.batch.feed_length,
        model_version="m-test",
        lake_version=built_from,
        as_of=AT,
        video_shards=1,
        user_shards=1,
        embedding_dim=8,
    )
    for seed in (4, 5):  # whole-lake replacements prune like any commit
        generate_data(world, "tiny", seed=seed)
    assert built_from in Lake(world.paths.lake_dir).versions()


def test_ingest_retries_when_an_import_lands_during_its_merge(world: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = Lake(world.paths.lake_dir)
    video = lake.read("videos")["video_id"][0].as_py()
    InboxWriter(world.paths.inbox_dir).append("event", {"user_id": "from_inbox", "video_id": video, "type": "like"}, AT)
    real_merge = ingest_job.merge
    calls: list[str] = []

    def merge_then_import(view: Lake, batch: InboxBatch) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
        result = real_merge(view, batch)
        if not calls:  # the race: an import commits after the inbox merge read the lake, before its commit
            users = pl.from_arrow(lake.read("users"))
            assert isinstance(users, pl.DataFrame)
            imported = pl.concat(
                [users, users.head(1).with_columns(pl.lit("from_import").alias("user_id"))], how="vertical"
            )
            lake.commit({"users": imported.to_arrow()}, source="import (racing)")
        calls.append("merge")
        return result

    monkeypatch.setattr(ingest_job, "merge", merge_then_import)
    summary = ingest_inbox(world)

    assert len(calls) == 2  # the first commit was refused, the second merged onto the import
    ids = set(lake.read("users")["user_id"].to_pylist())
    assert {"from_import", "from_inbox"} <= ids
    assert summary["lake_version"] == lake.current().name
    assert any(r["user_id"] == "from_inbox" for r in lake.read("interactions").to_pylist())
    assert consumed_offsets(world.paths.inbox_dir)  # consumed only once the commit landed


def test_ingest_that_keeps_losing_the_race_consumes_nothing(world: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from rec_core.data.lake import LakeConflict

    lake = Lake(world.paths.lake_dir)
    video = lake.read("videos")["video_id"][0].as_py()
    InboxWriter(world.paths.inbox_dir).append("event", {"user_id": "from_inbox", "video_id": video, "type": "like"}, AT)
    real_merge = ingest_job.merge
    n = iter(range(1000))

    def merge_then_import(view: Lake, batch: InboxBatch) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
        result = real_merge(view, batch)
        users = lake.read("users").to_pylist()
        lake.commit({"users": pa.Table.from_pylist([*users, {**users[0], "user_id": f"imp{next(n)}"}])}, source="x")
        return result

    monkeypatch.setattr(ingest_job, "merge", merge_then_import)
    with pytest.raises(LakeConflict, match="moved"):
        ingest_inbox(world)
    assert consumed_offsets(world.paths.inbox_dir) == {}
    assert "from_inbox" not in lake.read("users")["user_id"].to_pylist()


def test_live_and_rollback_snapshots_stay_loadable_after_lake_commits(api_world: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(api_world.parent / "pristine", data)
    settings = Settings.load(
        {"REC_DATA_DIR": str(data), "REC_FEED_LENGTH": "200", "REC_SNAPSHOTS_KEEP": "2", "REC_LAKE_VERSIONS_KEEP": "1"}
    )
    first = live_snapshot_id(settings.paths)
    assert first is not None
    video = Lake(settings.paths.lake_dir).read("videos")["video_id"][0].as_py()
    InboxWriter(settings.paths.inbox_dir).append(
        "event", {"user_id": "newcomer", "video_id": video, "type": "like"}, AT
    )
    second = run_all(settings, retrain=False, video_shards=1, user_shards=1)  # ingests, then builds on the new version
    versions = {s: snapshot_paths(settings.paths, s).read_build().lake_version for s in (first, second)}
    assert versions[first] != versions[second]
    for i in range(2):
        _ingest_one_event(settings, f"after{i}")
    assert Lake(settings.paths.lake_dir).current().name not in versions.values()

    # A restart loads the live snapshot; a rollback loads the one before: each from its own folder alone.
    for snapshot_id in (second, rollback(settings.paths)):
        view = load_view(settings.paths, snapshot_paths(settings.paths, snapshot_id))
        try:
            assert view.snapshot_id == snapshot_id and view.catalogue_size() > 0
        finally:
            view.close()
    assert live_snapshot_id(settings.paths) == first
