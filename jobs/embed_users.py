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

from jobs.embed_videos import embed_shard, shard_cli
from rec_core.settings import Settings


def embed_users(settings: Settings, snapshot_id: str, shard: int) -> dict:
    return embed_shard(settings, snapshot_id, shard, "user")


def main(argv: list[str] | None = None) -> int:
    return shard_cli(embed_users, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
