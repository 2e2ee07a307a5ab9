"""The inbox merged into the lake: what the API accepted since the last run, taken in as one lake commit.

Videos and users are upserted by id, follows added, and events folded into
interaction rows: all events of one user on one video in a batch become one
row at the time of the first event, with the highest completion and watch
time, and liked / shared / commented / skipped if any event said so, and the first page
(``request_id``) an event of theirs named. Events naming a
video the lake does not know are counted and dropped. A record with an id that
breaks the id rule (:mod:`rec_core.ids`; written by an older API that let it
through) is skipped, counted (``records_invalid_id``) and logged with an example:
it never reaches the lake, where it would fail every later publish. Idempotent: see
:mod:`rec_core.data.inbox` for why a crash at any point loses nothing and duplicates nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import polars as pl

from rec_core.data.impressions import impression_rows, merged_impressions, request_id_problem
from rec_core.data.inbox import InboxBatch, InboxRecord, iter_kind, mark_consumed, prune_consumed, read_new
from rec_core.data.lake import Lake, LakeError, LakeVersion, lake_for, snapshot_builds
from rec_core.data.log_shipping import IMPRESSIONS, INBOX, batch_log_root, record_consumed, sealed_segments
from rec_core.data.tables import LAKE_TABLES
from rec_core.ids import id_problem
from rec_core.settings import Settings

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 5  # merges retried when another writer commits meanwhile; each retry re-reads the lake


def ingest_inbox(settings: Settings) -> dict:
    """Take the inbox's and the impression log's new records into the lake (one commit), then mark them consumed;
    returns a JSON-friendly summary."""
    paths = settings.paths
    lake = lake_for(paths, settings.batch)
    # Local folders, or (REC_DATA_URI) this machine's copy of what the API machines shipped to the store.
    inbox_root, shown_root = batch_log_root(paths, INBOX), batch_log_root(paths, IMPRESSIONS)
    batch = read_new(inbox_root)
    shown = read_new(shown_root)
    summary = {"records": len(batch.records), "bad_lines": batch.bad_lines + shown.bad_lines}
    summary["impression_pages"] = len(shown.records)
    before = lake.current_name()
    if batch.records or shown.records:
        version, counts = _merge_and_commit(lake, batch, shown, settings.batch.impressions_keep_days)
        summary.update(counts, lake_version=version.name)
        log.info("inbox ingested: %s", json.dumps(summary))
    else:
        summary["lake_version"] = lake.current_name()
        log.info("inbox: nothing new")
    # Only once the commit landed: a conflict consumes nothing. A crash between the two marks reads the
    # impressions again next time, which adds nothing (rows are unique on request and position).
    for root, read in ((inbox_root, batch), (shown_root, shown)):
        if read.offsets:
            mark_consumed(root, read.offsets)
    # Consumed segments go once idle: the impression log's at once (nothing else reads it), the inbox's once no
    # snapshot can replay them (the API rebuilds its user state from a snapshot's offsets).
    replays = [b["inbox_offsets"] for b in snapshot_builds(paths) if b.get("inbox_offsets") is not None]
    pruned = (
        prune_consumed(inbox_root, covered_by=replays, sealed=sealed_segments(paths, inbox_root)),
        prune_consumed(shown_root, sealed=sealed_segments(paths, shown_root)),
    )
    record_consumed(paths, INBOX, inbox_root, pruned[0])
    record_consumed(paths, IMPRESSIONS, shown_root, pruned[1])
    summary["segments_pruned"] = len(pruned[0]) + len(pruned[1])
    # Whether the lake has a new version: only then is there a new lake to announce (a train_towers run on an
    # unchanged lake trained and gated for nothing).
    summary["committed"] = summary["lake_version"] != before
    return summary


def _merge_and_commit(
    lake: Lake, batch: InboxBatch, shown: InboxBatch, keep_days: int
) -> tuple[LakeVersion, dict[str, int]]:
    # Merge outside the lake lock (it reads whole tables), then commit only if the version it read is still live:
    # an import or generate_data that committed meanwhile would otherwise be silently reverted. On a conflict,
    # merge again onto the new version.
    source = f"ingest_inbox records={len(batch.records)} impression_pages={len(shown.records)}"
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        base = lake.current_name()
        try:
            at = lake.at(base)
            tables, counts = merge(at, batch) if batch.records else ({}, {})
            if shown.records:
                rows, invalid = impression_rows(shown.records)
                tables["impressions"] = merged_impressions(_read(at, "impressions"), rows, keep_days)
                counts.update(impressions_shown=rows.height, impression_pages_invalid=invalid)
            version = lake.commit({name: df.to_arrow() for name, df in tables.items()}, source=source, expect=base)
        except (LakeError, OSError) as exc:
            # A version pruned under the merge, or a conflict: both mean the lake moved, so re-read. Anything
            # else (or the last attempt) is a real failure.
            if attempt == COMMIT_ATTEMPTS or lake.current_name() == base:
                raise
            log.warning("inbox merge raced a lake commit (attempt %d of %d): %s", attempt, COMMIT_ATTEMPTS, exc)
            continue
        return version, counts
    raise AssertionError("unreachable")


ENGAGEMENT = ("views", "likes", "comments", "shares")


def merge(lake: Lake, batch: InboxBatch) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
    """The lake's tables with the inbox folded in (pure: writes nothing)."""
    batch, invalid = _without_invalid_ids(batch)
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
    # An update (a key with videos:update) changes what the uploader describes. When the video first appeared
    # and what users did with it are the platform's own record: the first created_at and the lake's engagement
    # counters stay (a new video starts at zero).
    first_seen = pl.concat([videos, new_videos]).group_by("video_id").agg(pl.col("created_at").min())
    engagement = videos.select("video_id", *ENGAGEMENT)
    videos = (
        pl.concat([videos, new_videos])
        .unique("video_id", keep="last", maintain_order=True)
        .drop("created_at", *ENGAGEMENT)
        .join(first_seen, on="video_id")
        .join(engagement, on="video_id", how="left")
        .with_columns(pl.col(c).fill_null(0) for c in ENGAGEMENT)
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
            "request_id": None if request_id_problem(r.data.get("request_id")) else r.data["request_id"],
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
                (pl.col("type") == "skip").any().alias("skipped"),
                pl.col("request_id").drop_nulls().first().cast(pl.String),
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
        "records_invalid_id": invalid,
    }
    return {"videos": videos, "users": users, "follows": follows, "interactions": interactions}, counts


# The id fields of each kind of record, and whether each is optional (absent, null or "" is fine).
_ID_FIELDS: dict[str, tuple[tuple[str, bool], ...]] = {
    "video": (("video_id", False), ("creator_id", True)),
    "event": (("user_id", False), ("video_id", False)),
    "user": (("user_id", False),),
}
_ID_LISTS: dict[str, tuple[str, ...]] = {"user": ("followed_users", "watched_videos", "liked_videos")}


def record_id_problem(record: InboxRecord) -> tuple[str, Any, str] | None:
    """The first (field, value, reason) of ``record`` that breaks the id rule, or None."""
    data = record.data
    for name, optional in _ID_FIELDS.get(record.kind, ()):
        value = data.get(name)
        if optional and value in (None, ""):
            continue
        if (problem := id_problem(value)) is not None:
            return name, value, problem
    for name in _ID_LISTS.get(record.kind, ()):
        values = data.get(name) or []
        if not isinstance(values, list):
            return name, values, "must be a list of ids"
        for i, value in enumerate(values):
            if (problem := id_problem(value)) is not None:
                return f"{name}[{i}]", value, problem
    return None


def _without_invalid_ids(batch: InboxBatch) -> tuple[InboxBatch, int]:
    # Skipped, not fatal: the batch's offsets still cover these lines, so they are consumed with the rest and
    # reported once, instead of failing this and every later run.
    kept: list[InboxRecord] = []
    first: tuple[InboxRecord, tuple[str, Any, str]] | None = None
    for record in batch.records:
        problem = record_id_problem(record)
        if problem is None:
            kept.append(record)
        elif first is None:
            first = (record, problem)
    invalid = len(batch.records) - len(kept)
    if first is not None:
        record, (name, value, reason) = first
        log.warning(
            "inbox: skipping %d record(s) with an invalid id, e.g. a %s record at %s: %s %s %s",
            invalid,
            record.kind,
            record.at.isoformat(),
            name,
            ascii(value)[:200],
            reason,
        )
    return dataclasses.replace(batch, records=kept), invalid


def _read(lake: Lake, name: str) -> pl.DataFrame:
    df = pl.from_arrow(lake.read(name)) if lake.has(name) else pl.from_arrow(LAKE_TABLES[name].schema.empty_table())
    assert isinstance(df, pl.DataFrame)
    return df
