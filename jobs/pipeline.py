"""``python -m jobs.pipeline begin | latest | run``: a snapshot by hand, or every stage without Airflow.

``begin`` starts a snapshot of the current model (then run ``jobs.embed_videos``,
``jobs.embed_users``, ``jobs.load_vectors``, ``jobs.materialize_feeds``, ``jobs.publish``
on it); ``latest`` prints the newest unpublished snapshot; ``run`` runs the stages of
:mod:`rec_core.stages` in this process, in their declared order, and publishes.
"""

from __future__ import annotations

import argparse
import json
import sys

from rec_core.model.store import ModelStoreError
from rec_core.settings import Settings, SettingsError
from rec_core.snapshot.begin import begin, latest_unpublished
from rec_core.snapshot.layout import SnapshotError
from rec_core.stages import run_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
            print(latest_unpublished(settings.paths))
    except (SettingsError, ModelStoreError, SnapshotError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
