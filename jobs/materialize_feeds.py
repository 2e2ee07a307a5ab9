"""``python -m jobs.materialize_feeds --snapshot ID --shard I``: every user's ranked feed for one user shard.

Runs the feed pipeline (:mod:`rec_core.feed.pipeline`) over the exact top-k of each user of the shard
(:func:`rec_core.feed.batch.materialize_feeds`): watched and own videos excluded, the feed policy (creator cap,
fresh slots) backed by the trending list, and a reason per item. A user with no interaction before as-of gets the
trending list under the same pipeline. Output: ``feeds/part-<shard>-of-<user shards>.parquet`` with
``user_id, rank, video_id, score, reason`` sorted by (user_id, rank), written atomically.

``--trending`` builds ``trending.parquet`` instead (:func:`rec_core.feed.batch.build_trending`): the same
popularity list, under the policy minus its per-user rules.

Deterministic: the same snapshot and lake give byte-identical files. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs.cli import settings_for
from rec_core.feed.batch import build_trending, materialize_feeds
from rec_core.snapshot.layout import SnapshotError
from rec_core.snapshot.remote import run_synced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", required=True, help="snapshot id (see `python -m jobs.pipeline latest`)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--shard", type=int, help="user shard to materialize")
    what.add_argument("--trending", action="store_true", help="build trending.parquet instead")
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    args = parser.parse_args(argv)
    settings = settings_for(args)
    try:
        if args.trending:
            summary = run_synced(settings.paths, args.snapshot, lambda: build_trending(settings, args.snapshot))
        else:
            snapshot, shard = args.snapshot, args.shard
            summary = run_synced(settings.paths, snapshot, lambda: materialize_feeds(settings, snapshot, shard))
    except (SnapshotError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
