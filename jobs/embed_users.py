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

from jobs.cli import shard_cli
from rec_core.model.inference import embed_users


def main(argv: list[str] | None = None) -> int:
    return shard_cli(embed_users, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
