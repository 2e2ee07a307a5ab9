"""Where a snapshot build starts: the current model over the live lake, pinned in its build.json, and which
snapshot a run that starts mid-build continues."""

from __future__ import annotations

import datetime as dt

import pyarrow.compute as pc

from rec_core.data.inbox import consumed_offsets
from rec_core.data.lake import Lake, LakeError, lake_for
from rec_core.model.store import ModelStore, ModelStoreError
from rec_core.settings import PathSettings, Settings
from rec_core.snapshot.layout import MANIFEST_FILE, SnapshotError, begin_snapshot, live_snapshot_id


def lake_watermark(lake: Lake) -> dt.datetime:
    """Just after the newest thing the lake knows; features "as of" it see everything, deterministically."""
    newest = max(
        pc.max(lake.read("interactions", columns=["ts"])["ts"]).as_py() or dt.datetime.min.replace(tzinfo=dt.UTC),
        pc.max(lake.read("videos", columns=["created_at"])["created_at"]).as_py(),
    )
    return newest + dt.timedelta(milliseconds=1)


def begin(settings: Settings, *, video_shards: int, user_shards: int) -> dict:
    """Start a snapshot of the current model over the live lake; returns its id and the shard lists to map over."""
    store = ModelStore(settings.paths.models_dir)
    model = store.current()
    if model is None:
        raise ModelStoreError("no current model: train one first (`python -m jobs.train_towers`)")
    # The inbox offsets first: ingest marks them only after its lake commit, so read before the lake version
    # they can lag it (the API then replays a few records twice, harmlessly) but never run ahead of it.
    inbox_offsets = consumed_offsets(settings.paths.inbox_dir)
    # One version for the name and the watermark: a commit between two reads of CURRENT would mix them.
    lake = lake_for(settings.paths, settings.batch)
    version = lake.current().name
    lake = lake.at(version)
    dim = int(store.read_json(model, "config.json")["tower"]["embedding_dim"])
    paths = begin_snapshot(
        settings.paths,
        model_version=model,
        lake_version=version,
        inbox_offsets=inbox_offsets,
        as_of=lake_watermark(lake),
        video_shards=video_shards,
        user_shards=user_shards,
        embedding_dim=dim,
        feed_length=settings.batch.feed_length,
    )
    # The version is pinned from the moment build.json names it; a commit that pruned it before then
    # (possible only with REC_LAKE_VERSIONS_KEEP=1) must fail this snapshot now, not its readers later.
    if not (settings.paths.lake_dir / version).is_dir():
        raise LakeError(f"lake version {version} was pruned while snapshot {paths.snapshot_id} began; run again")
    return {
        "snapshot_id": paths.snapshot_id,
        "video_shards": list(range(video_shards)),
        "user_shards": list(range(user_shards)),
    }


def latest_unpublished(paths: PathSettings) -> str:
    """The newest snapshot that has been begun but not validated: what a standalone materialize run continues."""
    live = live_snapshot_id(paths)
    root = paths.snapshots_dir
    candidates = (
        sorted(
            p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("s") and not (p / MANIFEST_FILE).exists()
        )
        if root.is_dir()
        else []
    )
    candidates = [c for c in candidates if live is None or c > live]
    if not candidates:
        raise SnapshotError("no snapshot in progress: run refresh_embeddings (or recsys_pipeline) first")
    return candidates[-1]


def resume(settings: Settings, *, snapshot_id: str | None) -> dict:
    """The snapshot a run continues: ``snapshot_id`` when given, else the newest unpublished one."""
    return {"snapshot_id": snapshot_id or latest_unpublished(settings.paths)}
