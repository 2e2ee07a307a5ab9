"""``python -m jobs.embed_videos --snapshot ID --shard I``: video vectors of one catalogue shard.

Writes ``vectors/videos-<shard>-of-<shards>.parquet`` of the snapshot (``video_id``,
``vector``) with the snapshot's model, as of its ``as_of``, and beside it
``catalogue/part-<shard>-of-<shards>.parquet``: the same videos as serving reads
them (creator, creation time, caption, hashtags, the tower's inputs), so the API
never reads the lake. Idempotent: a rerun computes the same files and atomically
replaces them; a killed run leaves no half file behind.
"""

from __future__ import annotations

from jobs.cli import shard_cli
from rec_core.model.inference import embed_videos


def main(argv: list[str] | None = None) -> int:
    return shard_cli(embed_videos, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
