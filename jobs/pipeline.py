"""The glue between pipeline stages that is not a stage itself: choosing the model, beginning a snapshot.

Kept here, as plain functions, so that the DAG files stay thin wrappers and a
person can run the same steps by hand (``python -m jobs.pipeline begin``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys

import pyarrow.compute as pc

from jobs.train_towers import evaluate_version, gate_version, train_version
from rec_core.data.inbox import consumed_offsets
from rec_core.data.lake import Lake, LakeError, lake_for
from rec_core.model.store import ModelStore, ModelStoreError
from rec_core.model.training import TrainConfig
from rec_core.settings import Settings, SettingsError
from rec_core.snapshot.layout import MANIFEST_FILE, SnapshotError, begin_snapshot, live_snapshot_id


def lake_watermark(lake: Lake) -> dt.datetime:
    """Just after the newest thing the lake knows; features "as of" it see everything, deterministically."""
    newest = max(
        pc.max(lake.read("interactions", columns=["ts"])["ts"]).as_py() or dt.datetime.min.replace(tzinfo=dt.UTC),
        pc.max(lake.read("videos", columns=["created_at"])["created_at"]).as_py(),
    )
    return newest + dt.timedelta(milliseconds=1)


def choose_model(settings: Settings, *, retrain: bool, epochs: int | None = None) -> dict:
    """Train a candidate and gate it (``retrain``), or reuse the current model; returns the model to serve."""
    store = ModelStore(settings.models_dir)
    gate = None
    if retrain or store.current() is None:
        config = TrainConfig(embedding_dim=settings.embedding_dim, seed=settings.seed)
        if epochs is not None:
            config = dataclasses.replace(config, epochs=epochs)
        version = train_version(settings, config)
        evaluate_version(settings, version)
        gate = gate_version(settings, version)
    current = store.current()
    if current is None:
        raise ModelStoreError(f"no model passed the quality gate: {gate['reasons'] if gate else 'none trained'}")
    return {"model_version": current, "gate": gate}


def begin(settings: Settings, *, video_shards: int, user_shards: int) -> dict:
    """Start a snapshot of the current model over the live lake; returns its id and the shard lists to map over."""
    store = ModelStore(settings.models_dir)
    model = store.current()
    if model is None:
        raise ModelStoreError("no current model: train one first (`python -m jobs.train_towers`)")
    # The inbox offsets first: ingest marks them only after its lake commit, so read before the lake version
    # they can lag it (the API then replays a few records twice, harmlessly) but never run ahead of it.
    inbox_offsets = consumed_offsets(settings.inbox_dir)
    # One version for the name and the watermark: a commit between two reads of CURRENT would mix them.
    version = lake_for(settings).current().name
    lake = lake_for(settings).at(version)
    dim = int(store.read_json(model, "config.json")["tower"]["embedding_dim"])
    paths = begin_snapshot(
        settings,
        model_version=model,
        lake_version=version,
        inbox_offsets=inbox_offsets,
        as_of=lake_watermark(lake),
        video_shards=video_shards,
        user_shards=user_shards,
        embedding_dim=dim,
    )
    # The version is pinned from the moment build.json names it; a commit that pruned it before then
    # (possible only with REC_LAKE_VERSIONS_KEEP=1) must fail this snapshot now, not its readers later.
    if not (settings.lake_dir / version).is_dir():
        raise LakeError(f"lake version {version} was pruned while snapshot {paths.snapshot_id} began; run again")
    return {
        "snapshot_id": paths.snapshot_id,
        "video_shards": list(range(video_shards)),
        "user_shards": list(range(user_shards)),
    }


def latest_unpublished(settings: Settings) -> str:
    """The newest snapshot that has been begun but not validated: what a standalone materialize run continues."""
    live = live_snapshot_id(settings)
    root = settings.snapshots_dir
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


def run_all(
    settings: Settings, *, retrain: bool = True, epochs: int | None = None, video_shards: int = 2, user_shards: int = 2
) -> str:
    """Every stage of ``recsys_pipeline`` in this process, in order; returns the published snapshot id.

    The same stage functions the DAG maps over, run one after the other: for tests,
    benchmarks and a machine without Airflow. The DAG stays the way to run it in production.
    """
    from jobs.build_features import build_features
    from jobs.embed_users import embed_users
    from jobs.embed_videos import embed_videos
    from jobs.ingest_inbox import ingest_inbox
    from jobs.load_vectors import load_vectors
    from jobs.materialize_feeds import build_trending, materialize_feeds
    from jobs.publish import publish, validate

    ingest_inbox(settings)
    build_features(settings)
    choose_model(settings, retrain=retrain, epochs=epochs)
    snapshot_id = begin(settings, video_shards=video_shards, user_shards=user_shards)["snapshot_id"]
    for shard in range(video_shards):
        embed_videos(settings, snapshot_id, shard)
    for shard in range(user_shards):
        embed_users(settings, snapshot_id, shard)
    load_vectors(settings, snapshot_id)
    build_trending(settings, snapshot_id)
    for shard in range(user_shards):
        materialize_feeds(settings, snapshot_id, shard)
    validate(settings, snapshot_id)
    publish(settings, snapshot_id)
    return snapshot_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("begin", help="begin a snapshot of the current model")
    b.add_argument("--video-shards", type=int, default=4)
    b.add_argument("--user-shards", type=int, default=4)
    sub.add_parser("latest", help="print the newest unpublished snapshot id")
    r = sub.add_parser("run", help="run every stage in this process, without Airflow, and publish")
    r.add_argument("--reuse-model", action="store_true", help="serve the current model instead of training one")
    r.add_argument("--epochs", type=int, default=None)
    r.add_argument("--video-shards", type=int, default=2)
    r.add_argument("--user-shards", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        settings = Settings.load()
        if args.command == "begin":
            print(json.dumps(begin(settings, video_shards=args.video_shards, user_shards=args.user_shards)))
        elif args.command == "run":
            snapshot_id = run_all(
                settings,
                retrain=not args.reuse_model,
                epochs=args.epochs,
                video_shards=args.video_shards,
                user_shards=args.user_shards,
            )
            print(json.dumps({"published": snapshot_id}))
        else:
            print(latest_unpublished(settings))
    except (SettingsError, ModelStoreError, SnapshotError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
