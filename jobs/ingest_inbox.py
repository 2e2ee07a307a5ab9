"""``python -m jobs.ingest_inbox``: take what the API accepted since the last run into the lake.

Videos and users are upserted by id, follows added, and events folded into
interaction rows: all events of one user on one video in a batch become one
row at the time of the first event, with the highest completion and watch
time, and liked / shared / commented if any event said so. Events naming a
video the lake does not know are counted and dropped. Idempotent: see
``rec_core.inbox`` for why a crash at any point loses nothing and duplicates nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import polars as pl

from jobs.cli import settings_for
from rec_core.inbox import InboxBatch, iter_kind, mark_consumed, read_new
from rec_core.lake import Lake, LakeError
from rec_core.schemas import TABLES
from rec_core.settings import Settings

log = logging.getLogger("jobs.ingest_inbox")


def ingest_inbox(settings: Settings) -> dict:
    lake = Lake(settings.lake_dir, settings.lake_versions_keep)
    batch = read_new(settings.inbox_dir)
    summary = {"records": len(batch.records), "bad_lines": batch.bad_lines}
    if not batch.records:
        if batch.offsets:
            mark_consumed(settings.inbox_dir, batch.offsets)
        log.info("inbox: nothing new")
        return {**summary, "lake_version": lake.current().name if lake.exists() else None}
    tables, counts = merge(lake, batch)
    version = lake.commit(
        {name: df.to_arrow() for name, df in tables.items()}, source=f"ingest_inbox records={len(batch.records)}"
    )
    mark_consumed(settings.inbox_dir, batch.offsets)
    summary.update(counts, lake_version=version.name)
    log.info("inbox ingested: %s", json.dumps(summary))
    return summary


def merge(lake: Lake, batch: InboxBatch) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
    """The lake's tables with the inbox folded in (pure: writes nothing)."""
    videos = _read(lake, "videos")
    new_videos = pl.DataFrame(
        [
            {
                "video_id": str(d["video_id"]),
                "creator_id": str(d.get("creator_id") or d["video_id"]),
                "caption": str(d.get("caption", "")),
                "hashtags": [str(h).lstrip("#").lower() for h in d.get("hashtags", [])],
                "duration_s": float(d.get("duration", 30.0)),
                "width": int(d.get("width", 1080)),
                "height": int(d.get("height", 1920)),
                "created_at": r.at,
                "creator_followers": int(d.get("user_followers", 0)),
                "creator_likes": int(d.get("user_likes", 0)),
                "views": 0,
                "likes": 0,
                "comments": 0,
                "shares": 0,
            }
            for r in iter_kind(batch, "video")
            for d in [r.data]
        ],
        schema=videos.schema,
    )
    # A re-posted video keeps its first created_at; its other fields take the newest values.
    first_seen = pl.concat([videos, new_videos]).group_by("video_id").agg(pl.col("created_at").min())
    videos = (
        pl.concat([videos, new_videos])
        .unique("video_id", keep="last", maintain_order=True)
        .drop("created_at")
        .join(first_seen, on="video_id")
        .select(videos.columns)
    )
    known_videos = set(videos["video_id"].to_list())

    events = [r for r in iter_kind(batch, "event")]
    rows = [
        {
            "user_id": str(r.data["user_id"]),
            "video_id": str(r.data["video_id"]),
            "ts": r.at,
            "type": r.data.get("type", "watch"),
            "watch_time_s": float(r.data.get("watch_time_s") or 0.0),
            "completion": min(max(float(r.data.get("completion") or 0.0), 0.0), 1.0),
        }
        for r in events
        if str(r.data.get("video_id")) in known_videos
    ]
    unknown = len(events) - len(rows)
    interactions = _read(lake, "interactions")
    if rows:
        folded = (
            pl.DataFrame(rows)
            .with_columns(pl.col("ts").dt.cast_time_unit("ms"))
            .group_by("user_id", "video_id")
            .agg(
                pl.col("ts").min(),
                pl.col("watch_time_s").max().cast(pl.Float32),
                pl.col("completion").max().cast(pl.Float32),
                (pl.col("type") == "like").any().alias("liked"),
                (pl.col("type") == "share").any().alias("shared"),
                (pl.col("type") == "comment").any().alias("commented"),
            )
            .select(interactions.columns)
        )
        interactions = pl.concat([interactions, folded.cast(interactions.schema)]).unique(
            ["user_id", "video_id", "ts"], keep="first", maintain_order=True
        )

    users = _read(lake, "users")
    follows = _read(lake, "follows")
    user_records = list(iter_kind(batch, "user"))
    seen_users = {str(r.data["user_id"]): r.at for r in user_records}
    for row in rows:
        seen_users.setdefault(row["user_id"], row["ts"])
    new_users = pl.DataFrame(
        [{"user_id": u, "created_at": at} for u, at in seen_users.items()],
        schema={"user_id": pl.String, "created_at": users.schema["created_at"]},
    ).join(users.select("user_id"), on="user_id", how="anti")
    users = pl.concat([users, new_users], how="diagonal_relaxed").select(users.columns)
    new_follows = pl.DataFrame(
        [
            {"user_id": str(r.data["user_id"]), "creator_id": str(c), "ts": r.at}
            for r in user_records
            for c in r.data.get("followed_users", [])
        ],
        schema=follows.schema,
    )
    follows = pl.concat([follows, new_follows]).unique(["user_id", "creator_id"], keep="first", maintain_order=True)
    counts = {
        "videos_upserted": new_videos.height,
        "users_added": new_users.height,
        "events": len(events),
        "events_unknown_video": unknown,
    }
    return {"videos": videos, "users": users, "follows": follows, "interactions": interactions}, counts


def _read(lake: Lake, name: str) -> pl.DataFrame:
    df = pl.from_arrow(lake.read(name)) if lake.has(name) else pl.from_arrow(TABLES[name].schema.empty_table())
    assert isinstance(df, pl.DataFrame)
    return df


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    args = parser.parse_args(argv)
    settings = settings_for(args)
    try:
        print(json.dumps(ingest_inbox(settings)))
    except LakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
