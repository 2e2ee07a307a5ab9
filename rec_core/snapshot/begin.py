"""Where a snapshot build starts: the current model over the live lake, pinned in its build.json, and which
snapshot a run that starts mid-build continues.

Beginning also writes what serving needs of the model into the snapshot: the towers' files (``model/``) and, when
the ranker is applied (``REC_RANKER=on`` and the model version carries one), the ranker and the feature state as of
the build's as-of (``rank/``), computed here once per build for every materialize shard and the API to read.
The same for each other model version a running experiment's arm names, in that version's space of the snapshot
(:mod:`rec_core.snapshot.layout`)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pyarrow.compute as pc

from rec_core.data.lake import Lake, LakeError, lake_for, lake_version_dir
from rec_core.data.log_shipping import batch_consumed
from rec_core.experiments.registry import running
from rec_core.experiments.spec import Experiment, model_versions
from rec_core.model.store import ModelStore, ModelStoreError, model_store
from rec_core.rank.ranker import Ranker
from rec_core.settings import PathSettings, Settings
from rec_core.snapshot.layout import MANIFEST_FILE, SnapshotError, begin_snapshot, live_snapshot_id, snapshot_paths
from rec_core.snapshot.model_copy import copy_model, model_file_names
from rec_core.snapshot.publish import prune
from rec_core.snapshot.rank_state import build_state, choose_ranker, write_rank_arrays, write_ranking
from rec_core.snapshot.remote import RemoteSnapshots, remote_snapshots
from rec_core.storage.object_store import StoreError

log = logging.getLogger(__name__)


def lake_watermark(lake: Lake) -> dt.datetime:
    """Just after the newest thing the lake knows; features "as of" it see everything, deterministically."""
    newest = max(
        pc.max(lake.read("interactions", columns=["ts"])["ts"]).as_py() or dt.datetime.min.replace(tzinfo=dt.UTC),
        pc.max(lake.read("videos", columns=["created_at"])["created_at"]).as_py(),
    )
    return newest + dt.timedelta(milliseconds=1)


def begin(settings: Settings, *, video_shards: int, user_shards: int) -> dict:
    """Start a snapshot of the current model over the live lake; returns its id and the shard lists to map over."""
    store = model_store(settings.paths)
    model = store.current()
    if model is None:
        raise ModelStoreError("no current model: train one first (`python -m jobs.train_towers`)")
    # Builds abandoned by earlier runs (killed, or refused by validation) go here too, not only after the next
    # publish: runs that keep failing must not pile snapshots up. A build in progress elsewhere is recent: kept.
    try:
        prune(settings.paths, keep=settings.batch.snapshots_keep)
    except (OSError, StoreError, SnapshotError) as exc:  # housekeeping: the next build or publish retries it
        log.warning("could not prune snapshots before this build: %s", exc)
    # The inbox offsets first: ingest marks them only after its lake commit, so read before the lake version
    # they can lag it (the API then replays a few records twice, harmlessly) but never run ahead of it.
    inbox_offsets = batch_consumed(settings.paths)
    # One version for the name and the watermark: a commit between two reads of CURRENT would mix them.
    lake = lake_for(settings.paths, settings.batch)
    version = lake.current().name
    lake = lake.at(version)
    dim = int(store.read_json(model, "config.json")["tower"]["embedding_dim"])
    version_dir = store.folder(model)
    model_files = model_file_names(version_dir)
    ranker, ranker_record = choose_ranker(version_dir, settings.model.ranker_on)
    experiments = running(settings.paths.experiments_file)
    others = {v: _version_space(store, v, model, settings.model.ranker_on) for v in _arm_versions(experiments, model)}
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
        model_files=model_files,
        ranker=ranker_record,
        # A change to an experiment takes effect here, at the next snapshot (rec_core.experiments.registry).
        experiments=[msgspec.to_builtins(e) for e in experiments],
        versions={v: space.record for v, space in others.items()},
        feed_active_days=settings.batch.feed_active_days,
    )
    # The version is pinned from the moment build.json names it; a commit that pruned it before then
    # (possible only with REC_LAKE_VERSIONS_KEEP=1) must fail this snapshot now, not its readers later.
    if not lake_version_dir(settings.paths, version).is_dir():
        raise LakeError(f"lake version {version} was pruned while snapshot {paths.snapshot_id} began; run again")
    # build.json promises these files: a run killed before they are whole leaves a snapshot validation refuses.
    copy_model(version_dir, paths, model_files)
    build = paths.read_build()
    for space in others.values():
        copy_model(space.folder, paths, space.record["model_files"])
    rankers = [(paths, ranker)] + [(paths.space(v, build), s.ranker) for v, s in others.items()]
    if any(r is not None for _, r in rankers):
        started = time.perf_counter()
        state = build_state(settings.paths, build)  # of the lake, not of a model: one for every space
        for where, space_ranker in rankers:
            if space_ranker is not None:
                rows = write_ranking(where.rank_dir, space_ranker, state)
                if build.serving_index:
                    write_rank_arrays(where.rank_dir)
        log.info(
            "ranking state of %s as of its as-of in %.1fs: %s", paths.snapshot_id, time.perf_counter() - started, rows
        )
    return {
        "snapshot_id": paths.snapshot_id,
        "experiments": [e["name"] for e in paths.read_build().experiments or []],
        "video_shards": list(range(video_shards)),
        "user_shards": list(range(user_shards)),
        "ranker": ranker_record,
        "versions": sorted(others),
    }


@dataclass(frozen=True, slots=True)
class _Space:
    folder: Path  # the version's folder in the model store
    ranker: Ranker | None
    record: dict  # what build.json's ``versions`` says of it


def _arm_versions(experiments: list[Experiment], current: str) -> list[str]:
    return [v for v in model_versions(a for e in experiments for a in e.arms) if v != current]


def _version_space(store: ModelStore, version: str, current: str, ranker_on: bool) -> _Space:
    """What a snapshot needs of a model version an arm names; refuses one it cannot serve beside ``current``."""
    if version not in store.versions():
        raise ModelStoreError(f"an experiment's arm names model version {version!r}, which the model store lacks")
    config, current_config = store.read_json(version, "config.json"), store.read_json(current, "config.json")
    # The snapshot's catalogue holds one caption embedding per video: every space must read the same one.
    if config.get("text_model") != current_config.get("text_model"):
        raise ModelStoreError(
            f"model version {version} encodes captions with {config.get('text_model')!r}, the current model with "
            f"{current_config.get('text_model')!r}: one snapshot cannot serve both; stop or change the experiment"
        )
    folder = store.folder(version)
    ranker, ranker_record = choose_ranker(folder, ranker_on)
    record = {
        "embedding_dim": int(config["tower"]["embedding_dim"]),
        "model_files": model_file_names(folder),
        "ranker": ranker_record,
    }
    return _Space(folder, ranker, record)


def latest_unpublished(paths: PathSettings) -> str:
    """The newest snapshot that has been begun but not validated: what a standalone materialize run continues."""
    live = live_snapshot_id(paths)
    root = paths.snapshots_dir
    remote = remote_snapshots(paths)
    if remote is not None:  # the builds of every machine, not only this one's
        names = remote.ids()
    elif root.is_dir():
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("s"))
    else:
        names = []
    candidates = [name for name in names if (live is None or name > live) and not _validated(paths, remote, name)]
    if not candidates:
        raise SnapshotError("no snapshot in progress: run refresh_embeddings (or recsys_pipeline) first")
    return candidates[-1]


def resume(settings: Settings, *, snapshot_id: str | None) -> dict:
    """The snapshot a run continues: ``snapshot_id`` when given, else the newest unpublished one. A validated one
    is refused: a standalone materialize run given the live snapshot's id rewrote its feeds in place, under the
    API serving them (and after a manifest that then no longer matched)."""
    if snapshot_id is None:
        return {"snapshot_id": latest_unpublished(settings.paths)}
    snapshot_paths(settings.paths, snapshot_id)  # a malformed id is refused here, naming it
    validated = _validated(settings.paths, remote_snapshots(settings.paths), snapshot_id)
    if validated or snapshot_id == live_snapshot_id(settings.paths):
        raise SnapshotError(
            f"snapshot {snapshot_id} is validated already (or live): its files stay as they are; "
            "leave snapshot_id empty to continue the newest one in progress, or build a new one"
        )
    return {"snapshot_id": snapshot_id}


def _validated(paths: PathSettings, remote: RemoteSnapshots | None, snapshot_id: str) -> bool:
    """Whether the snapshot has its manifest (on the store, where snapshots live there): its files are final."""
    if remote is not None:
        return remote.validated(snapshot_id)
    return (paths.snapshots_dir / snapshot_id / MANIFEST_FILE).exists()
