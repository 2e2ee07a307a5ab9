"""``python -m jobs.embed_videos --snapshot ID --shard I``: video vectors of one catalogue shard.

Writes ``vectors/videos-<shard>-of-<shards>.parquet`` of the snapshot (``video_id``,
``vector``) with the snapshot's model, as of its ``as_of``. Idempotent: a rerun
computes the same vectors and atomically replaces the file; a killed run leaves
no file behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from jobs.cli import settings_for
from rec_core.data.lake import LakeError
from rec_core.model.inference import user_vectors_for_shard, video_vectors_for_shard
from rec_core.model.store import ModelStoreError
from rec_core.settings import Settings
from rec_core.snapshot.files import write_vectors
from rec_core.snapshot.layout import SnapshotError, snapshot_paths

log = logging.getLogger("jobs.embed")


def embed_videos(settings: Settings, snapshot_id: str, shard: int) -> dict:
    return embed_shard(settings, snapshot_id, shard, "video")


def embed_shard(settings: Settings, snapshot_id: str, shard: int, kind: Literal["video", "user"]) -> dict:
    """Compute and atomically write one shard of video or user vectors. Shared by the embed jobs."""
    started = time.perf_counter()
    paths = snapshot_paths(settings, snapshot_id)
    build = paths.read_build()
    shards = build.video_shards if kind == "video" else build.user_shards
    if not 0 <= shard < shards:
        raise ValueError(f"{kind} shard {shard} outside 0..{shards - 1} of snapshot {snapshot_id}")
    if kind == "video":
        table, target = video_vectors_for_shard(settings, build, shard), paths.video_vectors(shard, shards)
    else:
        table, target = user_vectors_for_shard(settings, build, shard), paths.user_vectors(shard, shards)
    write_vectors(table, target)
    log.info("wrote %d %s vectors to %s", table.num_rows, kind, target)
    return {
        "snapshot": snapshot_id,
        "shard": shard,
        "shards": shards,
        "rows": table.num_rows,
        "path": str(target),
        "seconds": round(time.perf_counter() - started, 2),
    }


def shard_cli(job: Callable[[Settings, str, int], dict], doc: str | None, argv: list[str] | None) -> int:
    """``--snapshot ID --shard I [--data-dir DIR]``; prints the job's summary as JSON. Shared by the embed jobs."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", required=True, help="snapshot id (its build.json must exist)")
    parser.add_argument("--shard", type=int, required=True, help="shard index, 0-based")
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    args = parser.parse_args(argv)
    settings = settings_for(args)
    try:
        summary = job(settings, args.snapshot, args.shard)
    except (SnapshotError, LakeError, ModelStoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    return shard_cli(embed_videos, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
