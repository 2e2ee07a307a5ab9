"""``python -m jobs.embed_users --snapshot ID --shard I``: user vectors of one user shard.

Writes ``vectors/users-<shard>-of-<shards>.parquet`` of the snapshot (``user_id``,
``vector``): the user tower over each user's history before the snapshot's
``as_of``. Users are the users table plus users seen only in interactions, sorted
by id. Idempotent and atomic like ``jobs.embed_videos``.

Each shard reads the caption embeddings of the whole catalogue from the cache;
run the video shards (or ``jobs.build_features``) first so that videos new since
training are encoded once, not once per user shard.
"""

from __future__ import annotations

import logging
import time

from jobs.embed_videos import shard_cli
from rec_core.embedding import user_vectors_for_shard, write_vectors
from rec_core.settings import Settings
from rec_core.snapshot_layout import snapshot_paths

log = logging.getLogger("jobs.embed_users")


def embed_users(settings: Settings, snapshot_id: str, shard: int) -> dict:
    started = time.perf_counter()
    paths = snapshot_paths(settings, snapshot_id)
    build = paths.read_build()
    if not 0 <= shard < build.user_shards:
        raise ValueError(f"user shard {shard} outside 0..{build.user_shards - 1} of snapshot {snapshot_id}")
    table = user_vectors_for_shard(settings, build, shard)
    target = paths.user_vectors(shard, build.user_shards)
    write_vectors(table, target)
    log.info("wrote %d user vectors to %s", table.num_rows, target)
    return {
        "snapshot": snapshot_id,
        "shard": shard,
        "shards": build.user_shards,
        "rows": table.num_rows,
        "path": str(target),
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    return shard_cli(embed_users, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
