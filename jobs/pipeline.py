"""``python -m jobs.pipeline begin | latest | run | stage``: a snapshot by hand, or stages without Airflow.

``begin`` starts a snapshot of the current model (then run ``jobs.embed_videos``,
``jobs.embed_users``, ``jobs.load_vectors``, ``jobs.materialize_feeds``, ``jobs.publish``
on it); ``latest`` prints the newest unpublished snapshot; ``run`` runs the stages of
:mod:`rec_core.stages` in this process, in their declared order, and publishes; ``stage NAME``
runs one of them as its Airflow task does (``stage validate --snapshot ID``, then
``stage publish --snapshot ID``, then ``stage rebuild_warehouse``) and prints its result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs.cli import non_negative_int, positive_int, settings_for
from rec_core.data.lake import LakeError
from rec_core.model.errors import ModelStoreError
from rec_core.settings import Settings, SettingsError
from rec_core.snapshot.begin import begin, latest_unpublished
from rec_core.snapshot.layout import SnapshotError
from rec_core.stages import PIPELINE, Stage, run_all

STAGES: dict[str, Stage] = {stage.name: stage for stage in PIPELINE}


def run_one(settings: Settings, stage: Stage, snapshot_id: str | None, shard: int | None) -> object:
    """One declared stage, given only what a task after ``begin_snapshot`` is given: the snapshot and its shard."""
    if snapshot_id is not None and "snapshot_id" not in stage.needs:
        raise ValueError(f"stage {stage.name} takes no snapshot: leave --snapshot out")
    values = {"snapshot_id": snapshot_id} if snapshot_id is not None else {}
    missing = [name for name in stage.needs if name not in values]
    if missing == ["snapshot_id"]:
        raise ValueError(f"stage {stage.name} works on a snapshot: pass --snapshot")
    if missing:
        raise ValueError(f"stage {stage.name} needs {missing}, which `run` or the DAG passes it: run it there")
    if (stage.shards is None) != (shard is None):
        raise ValueError(
            f"stage {stage.name} " + ("runs once per shard: pass --shard" if shard is None else "has no shards")
        )
    return stage.run(settings, values, shard)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("begin", help="begin a snapshot of the current model")
    b.add_argument("--video-shards", type=positive_int, default=4)
    b.add_argument("--user-shards", type=positive_int, default=4)
    sub.add_parser("latest", help="print the newest unpublished snapshot id")
    r = sub.add_parser("run", help="run every stage in this process, without Airflow, and publish")
    r.add_argument("--reuse-model", action="store_true", help="serve the current model instead of training one")
    r.add_argument("--epochs", type=positive_int, default=None)
    r.add_argument("--video-shards", type=positive_int, default=2)
    r.add_argument("--user-shards", type=positive_int, default=2)
    s = sub.add_parser("stage", help="run one declared stage as its Airflow task does; print its result")
    s.add_argument("name", choices=list(STAGES))
    s.add_argument("--snapshot", help="the snapshot the stage works on (stages after begin_snapshot)")
    s.add_argument("--shard", type=non_negative_int, help="the shard, for a stage run once per shard")
    args = parser.parse_args(argv)
    # Every command as a task runs it: its logging (the stages' progress) on stderr, torch's threads capped.
    settings = settings_for(args)
    try:
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
        elif args.command == "stage":
            print(json.dumps(run_one(settings, STAGES[args.name], args.snapshot, args.shard), default=str))
        else:
            print(latest_unpublished(settings.paths))
    except (SettingsError, ModelStoreError, SnapshotError, LakeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
