"""``python -m jobs.materialize_feeds --snapshot ID --shard I``: every user's ranked feed for one user shard.

Reads the snapshot's video vectors (all shards) and this shard's user vectors,
and from the lake version the snapshot was begun on: videos (creator, creation
time, caption, hashtags), interactions before as-of (what each user has seen
and liked, and recent popularity) and follows. Then, per batch of users:

1. exact top-k by ``user . video`` with watched and own videos excluded
   (:mod:`rec_core.feed.candidates`), plus the best fresh videos for the fresh slots;
2. the feed policy (:mod:`rec_core.feed.policy`) over those candidates, backed
   by the trending list so a user whose candidates run out still gets a full feed;
3. a reason per item (:mod:`rec_core.feed.reasons`).

A user with no interaction before as-of gets the trending list under the same
policy. Output: ``feeds/part-<shard>-of-<user shards>.parquet`` with
``user_id, rank, video_id, score, reason`` sorted by (user_id, rank), written
atomically; ``score`` is the model's ``user . video`` for every row.

``--trending`` builds ``trending.parquet`` instead (:func:`build_trending`):
the same popularity list, under the policy minus its per-user rules.

Deterministic: the same snapshot and lake give byte-identical files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Full, Queue
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from jobs.cli import settings_for
from rec_core.atomic import write_with
from rec_core.feed.candidates import ExclusionCSR, iter_top_k, trending_order, trending_scores
from rec_core.feed.policy import FeedPolicy, select_eligible
from rec_core.feed.reasons import (
    ReasonCatalogue,
    TagIndex,
    UserSignals,
    explain,
    like_threshold,
    render,
    unit_rows,
)
from rec_core.progress import Progress
from rec_core.settings import Settings
from rec_core.snapshot.files import FEED_SCHEMA, TRENDING_SCHEMA, lake_table_path
from rec_core.snapshot.layout import BuildInfo, SnapshotError, SnapshotPaths, snapshot_paths

log = logging.getLogger(__name__)

CANDIDATE_FACTOR = 3  # top-k = 3 x feed length: slack for the creator cap and dedup
BACKFILL_FACTOR = 3  # trending items appended behind the personal candidates, in feed lengths
FRESH_FACTOR = 3  # fresh candidates per reserved fresh slot
RECENT_LIKES = 10  # liked videos per user a "because you liked" can point at
CREATOR_LIKES = 50  # recent likes per creator behind "popular with creators you follow"
TOP_TAGS = 3  # hashtags per user behind "trending in #tag"
BATCH_USERS = 512  # users per matmul batch: 512 x 50,000 float32 scores is 100 MB
ROW_GROUP = 131_072


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The videos a feed may contain: those with a vector, known to the lake and created before as-of.

    Row ``i`` of every array is video index ``i``; videos are sorted by id.
    """

    video_ids: pa.Array  # string [V]
    vectors: np.ndarray  # float32 [V, d]
    creator_codes: np.ndarray  # int64 [V]
    creator_ids: np.ndarray  # str [C], sorted
    created_ms: np.ndarray  # int64 [V]
    fresh: np.ndarray  # bool [V]
    popularity: np.ndarray  # float64 [V]
    trending: np.ndarray  # int64: video indices, most popular first (all videos)
    tags: TagIndex
    captions: pa.Array


@dataclass(frozen=True, slots=True)
class Loaded:
    paths: SnapshotPaths
    build: BuildInfo
    as_of: dt.datetime
    policy: FeedPolicy
    catalogue: Catalogue
    interactions: pl.DataFrame  # user_id, vidx, ts_ms, liked; before as-of, videos in the catalogue; lake order


# --------------------------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------------------------


def materialize_feeds(settings: Settings, snapshot_id: str, shard: int) -> dict[str, Any]:
    """Write the feed part of user shard ``shard``; returns a JSON-friendly summary (rows, users/s, timings)."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    paths = snapshot_paths(settings, snapshot_id)
    build = paths.read_build()
    if not 0 <= shard < build.user_shards:
        raise ValueError(f"shard {shard} outside 0..{build.user_shards - 1} of snapshot {snapshot_id}")
    loaded = _load(settings, paths, build, with_vectors=True)
    cat, policy = loaded.catalogue, loaded.policy
    user_ids, user_vectors = _read_vectors(paths.user_vectors(shard, build.user_shards), "user_id", build)
    n_users = len(user_ids)
    timings["load"] = time.perf_counter() - started
    log.info(
        "materialize %s shard %d/%d: %d users, %d videos, as of %s, feed %d",
        snapshot_id,
        shard,
        build.user_shards,
        n_users,
        len(cat.video_ids),
        build.as_of,
        policy.feed_length,
    )

    t = time.perf_counter()
    shard_inter = _shard_interactions(loaded.interactions, user_ids)
    exclude = _exclusions(cat, user_ids, shard_inter)
    signals = _user_signals(settings, loaded, user_ids, shard_inter)
    timings["history"] = time.perf_counter() - t

    t = time.perf_counter()
    feeds, feed_scores = _select_feeds(cat, policy, user_vectors, exclude, signals.has_history)
    timings["candidates + policy"] = time.perf_counter() - t

    t = time.perf_counter()
    table = _feed_table(cat, policy, user_ids, feeds, feed_scores, signals)
    timings["scores + reasons"] = time.perf_counter() - t

    t = time.perf_counter()
    target = paths.feed_part(shard, build.user_shards)
    _write_parquet(table, target)
    timings["write"] = time.perf_counter() - t

    lengths = np.fromiter((len(f) for f in feeds), dtype=np.int64, count=n_users)
    seconds = time.perf_counter() - started
    summary = {
        "snapshot_id": snapshot_id,
        "shard": shard,
        "shards": build.user_shards,
        "users": n_users,
        "users_with_history": int(signals.has_history.sum()),
        "rows": table.num_rows,
        "short_feeds": int((lengths < policy.feed_length).sum()),
        "min_feed_length": int(lengths.min()) if n_users else 0,
        "seconds": round(seconds, 3),
        "users_per_s": round(n_users / max(seconds, 1e-9), 1),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "path": str(target),
    }
    log.info(
        "materialize shard %d done: %d users, %d rows in %.1fs (%.0f users/s); %s",
        shard,
        n_users,
        table.num_rows,
        seconds,
        summary["users_per_s"],
        summary["timings"],
    )
    return summary


def build_trending(settings: Settings, snapshot_id: str) -> dict[str, Any]:
    """Write ``trending.parquet``: the most popular videos before as-of, under the non-personal policy rules."""
    started = time.perf_counter()
    paths = snapshot_paths(settings, snapshot_id)
    build = paths.read_build()
    loaded = _load(settings, paths, build, with_vectors=False)
    cat, policy = loaded.catalogue, loaded.policy
    picked = _trending_feed(cat, policy)
    table = pa.Table.from_arrays(
        [
            pa.array(np.arange(len(picked), dtype=np.int32)),
            cat.video_ids.take(pa.array(picked)),
            pa.array(cat.popularity[picked].astype(np.float32)),
            pa.array(np.full(len(picked), _TRENDING_TEXT), pa.string()),
        ],
        schema=TRENDING_SCHEMA,
    )
    _write_parquet(table, paths.trending_file)
    seconds = time.perf_counter() - started
    summary = {
        "snapshot_id": snapshot_id,
        "rows": table.num_rows,
        "fresh": int(cat.fresh[picked].sum()),
        "seconds": round(seconds, 3),
        "path": str(paths.trending_file),
    }
    log.info("trending for %s: %d videos in %.1fs", snapshot_id, table.num_rows, seconds)
    return summary


_TRENDING_TEXT = "trending"


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def _load(settings: Settings, paths: SnapshotPaths, build: BuildInfo, *, with_vectors: bool) -> Loaded:
    as_of = dt.datetime.fromisoformat(build.as_of)
    as_of_ms = int(as_of.timestamp() * 1000)
    policy = FeedPolicy(feed_length=build.feed_length)
    parts = [paths.video_vectors(i, build.video_shards) for i in range(build.video_shards)]
    if with_vectors:
        read = [_read_vectors(p, "video_id", build) for p in parts]
        ids = pa.concat_arrays([r[0] for r in read]) if read else pa.array([], pa.string())
        vectors = np.concatenate([r[1] for r in read]) if read else np.zeros((0, build.embedding_dim), np.float32)
    else:
        ids = pa.concat_arrays([_read_ids(p, "video_id") for p in parts])
        vectors = np.zeros((len(ids), 0), dtype=np.float32)
    order = pc.sort_indices(ids).to_numpy()
    ids, vectors = ids.take(pa.array(order)), vectors[order]
    _check_unique(ids, f"snapshot {paths.snapshot_id} video vectors")

    videos = pl.from_arrow(
        pq.read_table(
            lake_table_path(settings, build, "videos"),
            columns=["video_id", "creator_id", "caption", "hashtags", "created_at"],
        )
    )
    assert isinstance(videos, pl.DataFrame)
    videos = videos.with_columns(pl.col("created_at").dt.epoch("ms").alias("created_ms"))
    row = _codes(pl.Series(ids), videos["video_id"])
    if (row < 0).any():
        missing = pa.array(ids).filter(pa.array(row < 0))
        raise SnapshotError(f"{len(missing)} video(s) with vectors are not in lake {build.lake_version}: {missing[:3]}")
    videos = videos[row]
    known = (videos["created_ms"] < as_of_ms).to_numpy()
    if not known.all():
        log.info("%d video(s) created at or after as-of %s are left out", int((~known).sum()), build.as_of)
    keep = np.flatnonzero(known)
    videos = videos[keep]
    ids, vectors = ids.take(pa.array(keep)), vectors[keep]

    creator_ids, creator_codes = np.unique(videos["creator_id"].to_numpy().astype(str), return_inverse=True)
    created_ms = videos["created_ms"].to_numpy().astype(np.int64)
    interactions = (
        pl.scan_parquet(lake_table_path(settings, build, "interactions"))
        .select("user_id", "video_id", "ts", "completion", "liked", "shared", "commented")
        .with_columns(pl.col("ts").dt.epoch("ms").alias("ts_ms"))
        .filter(pl.col("ts_ms") < as_of_ms)
        .collect()
    )
    interactions = interactions.with_columns(pl.Series("vidx", _codes(interactions["video_id"], pl.Series(ids))))
    # No sort needed for determinism: lake tables are stored sorted (ts, user, video), and filters keep that order.
    interactions = interactions.filter(pl.col("vidx") >= 0)
    popularity = trending_scores(
        interactions["vidx"].to_numpy(),
        interactions["ts_ms"].to_numpy(),
        interactions["completion"].to_numpy(),
        interactions["liked"].to_numpy(),
        interactions["commented"].to_numpy(),
        interactions["shared"].to_numpy(),
        n_videos=len(ids),
        as_of_ms=as_of_ms,
    )
    catalogue = Catalogue(
        video_ids=ids,
        vectors=vectors,
        creator_codes=creator_codes.astype(np.int64),
        creator_ids=creator_ids,
        created_ms=created_ms,
        fresh=policy.is_fresh(created_ms, as_of_ms),
        popularity=popularity,
        trending=trending_order(popularity, created_ms),
        tags=TagIndex.build(videos["hashtags"].to_list(), popularity),
        captions=videos["caption"].to_arrow(),
    )
    return Loaded(paths, build, as_of, policy, catalogue, interactions.select("user_id", "vidx", "ts_ms", "liked"))


def _read_ids(path: Path, id_column: str) -> pa.Array:
    if not path.is_file():
        raise SnapshotError(f"missing vector file {path}: run the embed stage for it first")
    return pq.read_table(path, columns=[id_column]).column(id_column).combine_chunks()


def _read_vectors(path: Path, id_column: str, build: BuildInfo) -> tuple[pa.Array, np.ndarray]:
    """Ids and float32 [n, dim] vectors of one shard file, sorted by id."""
    if not path.is_file():
        raise SnapshotError(f"missing vector file {path}: run the embed stage for it first")
    table = pq.read_table(path, columns=[id_column, "vector"])
    ids = table.column(id_column).combine_chunks()
    column = table.column("vector").combine_chunks()
    if not pa.types.is_fixed_size_list(column.type) or column.type.list_size != build.embedding_dim:
        raise SnapshotError(
            f"{path}: vector column is {column.type}, expected fixed_size_list<float>[{build.embedding_dim}]"
        )
    if column.null_count:
        raise SnapshotError(f"{path}: {column.null_count} null vector(s)")
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    vectors = values.reshape(len(ids), build.embedding_dim)
    order = pc.sort_indices(ids).to_numpy()
    ids = ids.take(pa.array(order))
    _check_unique(ids, str(path))
    return ids, np.ascontiguousarray(vectors[order])


def _check_unique(sorted_ids: pa.Array, what: str) -> None:
    if len(sorted_ids) > 1:
        same = pc.equal(sorted_ids.slice(1), sorted_ids.slice(0, len(sorted_ids) - 1))
        if pc.any(same).as_py():
            dupe = sorted_ids.slice(1).filter(same)[0]
            raise SnapshotError(f"{what}: id {dupe} appears in more than one row")
    if sorted_ids.null_count:
        raise SnapshotError(f"{what}: {sorted_ids.null_count} null id(s)")


def _codes(values: pl.Series, categories: pl.Series) -> np.ndarray:
    """Index of each value in ``categories`` (unique strings), -1 where absent."""
    if len(categories) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    codes = values.cast(pl.String).cast(pl.Enum(categories.cast(pl.String)), strict=False).to_physical()
    return codes.cast(pl.Int64).fill_null(-1).to_numpy()


# --------------------------------------------------------------------------------------------------------------------
# Per-shard user history
# --------------------------------------------------------------------------------------------------------------------


def _shard_interactions(interactions: pl.DataFrame, user_ids: pa.Array) -> pl.DataFrame:
    uidx = _codes(interactions["user_id"], pl.Series(user_ids))
    return interactions.with_columns(pl.Series("uidx", uidx)).filter(pl.col("uidx") >= 0)


def _exclusions(cat: Catalogue, user_ids: pa.Array, shard_inter: pl.DataFrame) -> ExclusionCSR:
    """Seen and own videos of each user of the shard."""
    seen_u, seen_v = shard_inter["uidx"].to_numpy(), shard_inter["vidx"].to_numpy()
    user_creator = _creator_code(cat, user_ids)
    # Own videos: every video whose creator code is a shard user's.
    by_creator = np.argsort(cat.creator_codes, kind="stable")
    starts = np.searchsorted(cat.creator_codes[by_creator], np.arange(len(cat.creator_ids) + 1))
    creators = np.flatnonzero(user_creator >= 0)
    codes = user_creator[creators]
    counts = starts[codes + 1] - starts[codes]
    own_u = np.repeat(creators, counts)
    own_v = by_creator[np.concatenate([np.arange(starts[c], starts[c + 1]) for c in codes])] if len(codes) else []
    return ExclusionCSR.from_pairs(
        np.concatenate([seen_u, own_u]).astype(np.int64),
        np.concatenate([seen_v, np.asarray(own_v, dtype=np.int64)]).astype(np.int64),
        len(user_ids),
    )


def _creator_code(cat: Catalogue, user_ids: pa.Array) -> np.ndarray:
    """Each user's creator code, -1 for users who have no video in the catalogue."""
    return _codes(pl.Series(user_ids), pl.Series(cat.creator_ids))


def _user_signals(settings: Settings, loaded: Loaded, user_ids: pa.Array, shard_inter: pl.DataFrame) -> UserSignals:
    cat = loaded.catalogue
    n_users, n_videos, n_creators = len(user_ids), len(cat.video_ids), len(cat.creator_ids)
    as_of_ms = int(loaded.as_of.timestamp() * 1000)
    has_history = np.bincount(shard_inter["uidx"].to_numpy(), minlength=n_users) > 0

    follows = (
        pl.scan_parquet(lake_table_path(settings, loaded.build, "follows"))
        .with_columns(pl.col("ts").dt.epoch("ms").alias("ts_ms"))
        .filter(pl.col("ts_ms") < as_of_ms)
        .select("user_id", "creator_id")
        .collect()
    )
    f_user = _codes(follows["user_id"], pl.Series(user_ids))
    f_creator = _codes(follows["creator_id"], pl.Series(cat.creator_ids))
    ok = (f_user >= 0) & (f_creator >= 0)
    follow_keys = np.unique(f_user[ok] * n_creators + f_creator[ok])

    # Videos recently liked by the creators each user follows ("popular with creators you follow").
    likes = loaded.interactions.filter(pl.col("liked"))
    creator_likes = (
        likes.with_columns(pl.Series("creator", _codes(likes["user_id"], pl.Series(cat.creator_ids))))
        .filter(pl.col("creator") >= 0)
        .sort(["creator", "ts_ms", "vidx"], descending=[False, True, False])
        .group_by("creator", maintain_order=True)
        .head(CREATOR_LIKES)
    )
    followed = pl.DataFrame({"uidx": f_user[ok], "creator": f_creator[ok]})
    pairs = followed.join(creator_likes.select("creator", "vidx"), on="creator", how="inner")
    followed_like_keys = np.unique(pairs["uidx"].to_numpy() * n_videos + pairs["vidx"].to_numpy())

    # Each user's most recent likes, most recent first.
    recent = (
        shard_inter.filter(pl.col("liked"))
        .sort(["uidx", "ts_ms", "vidx"], descending=[False, True, False])
        .group_by("uidx", maintain_order=True)
        .head(RECENT_LIKES)
    )
    r_user = recent["uidx"].to_numpy()
    liked_indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(r_user, minlength=n_users), out=liked_indptr[1:])
    liked = recent["vidx"].to_numpy().astype(np.int64)

    top_tags = _top_tags(cat, shard_inter, n_users)
    return UserSignals(n_users, follow_keys, followed_like_keys, liked_indptr, liked, top_tags, has_history)


def _top_tags(cat: Catalogue, shard_inter: pl.DataFrame, n_users: int) -> np.ndarray:
    tags = cat.tags
    n_tags = len(tags.names)
    out = np.full((n_users, TOP_TAGS), -1, dtype=np.int64)
    if n_tags == 0 or shard_inter.height == 0:
        return out
    u = shard_inter["uidx"].to_numpy()
    v = shard_inter["vidx"].to_numpy()
    w = 1.0 + 2.0 * shard_inter["liked"].to_numpy().astype(np.float64)
    vt = tags.video_tags[v]  # [n, S]
    valid = vt >= 0
    keys = (np.repeat(u, vt.shape[1]) * n_tags + vt.ravel())[valid.ravel()]
    weights = np.repeat(w, vt.shape[1])[valid.ravel()]
    unique, inverse = np.unique(keys, return_inverse=True)
    total = np.bincount(inverse, weights=weights)
    user, tag = unique // n_tags, unique % n_tags
    # At least two engagements' worth: one stray view does not make a tag "yours".
    strong = total >= 2.0
    user, tag, total = user[strong], tag[strong], total[strong]
    order = np.lexsort((tag, -total, user))
    user, tag = user[order], tag[order]
    first = np.searchsorted(user, np.arange(n_users))
    pos = np.arange(len(user)) - first[user]
    top = pos < TOP_TAGS
    out[user[top], pos[top]] = tag[top]
    return out


# --------------------------------------------------------------------------------------------------------------------
# Candidates and policy
# --------------------------------------------------------------------------------------------------------------------


def _select_feeds(
    cat: Catalogue,
    policy: FeedPolicy,
    user_vectors: np.ndarray,
    exclude: ExclusionCSR,
    has_history: np.ndarray,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each user's feed as video indices in feed order, and the model score (``user . video``) of each item."""
    n_users, n_videos = len(user_vectors), len(cat.video_ids)
    length = policy.feed_length
    n_creators = len(cat.creator_ids)
    empty_i, empty_s = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    feeds: list[np.ndarray] = [empty_i] * n_users
    scores: list[np.ndarray] = [empty_s] * n_users
    if n_videos == 0:
        return feeds, scores
    backfill = cat.trending[: BACKFILL_FACTOR * length]
    progress = Progress("materialize: users", n_users, logger=log)

    # Users without history: the trending feed (what trending.parquet holds) then more of the trending order, under
    # the same policy, so their own videos still go and the creator cap still holds around them.
    trending = _trending_feed(cat, policy)
    cold_list = np.concatenate([trending, backfill[~np.isin(backfill, trending)]])
    for u in np.flatnonzero(~has_history):
        own = exclude.row(int(u))
        cand = cold_list[~np.isin(cold_list, own)] if len(own) else cold_list
        feeds[u] = cand[select_eligible(cat.creator_codes[cand], n_creators, cat.fresh[cand], policy)]
        scores[u] = (cat.vectors[feeds[u]] @ user_vectors[u]).astype(np.float32)
        progress.advance()

    warm = np.flatnonzero(has_history)
    if len(warm) == 0:
        return feeds, scores
    # The ranking runs in a helper thread (torch and numpy release the GIL) while this one applies the policy, which
    # is Python: the two overlap instead of taking turns. The result does not depend on the timing.
    batches = _prefetch(_candidate_batches(cat, policy, user_vectors[warm], exclude, warm, backfill), depth=2)
    for lo, hi, all_i, all_s, all_ok, all_c, all_f in batches:
        for r in range(hi - lo):
            ok = np.flatnonzero(all_ok[r])
            pick = ok[select_eligible(all_c[r][ok], n_creators, all_f[r][ok], policy)]
            u = warm[lo + r]
            feeds[u] = all_i[r][pick]
            scores[u] = all_s[r][pick]
        progress.advance(hi - lo)
    return feeds, scores


def _candidate_batches(
    cat: Catalogue,
    policy: FeedPolicy,
    warm_vectors: np.ndarray,
    exclude: ExclusionCSR,
    warm: np.ndarray,
    backfill: np.ndarray,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per batch of users with history: one row per user of [personal top-k | fresh top-k | trending backfill].

    Yields (lo, hi, video indices, scores, usable mask, creator codes, fresh flags), all [hi - lo, width]; a
    candidate is unusable when excluded (watched, own) or already earlier in the row.
    """
    n_videos, length = len(cat.video_ids), policy.feed_length
    warm_vectors = np.ascontiguousarray(warm_vectors)
    warm_exclude = ExclusionCSR.from_pairs(
        np.repeat(np.arange(len(warm)), np.diff(exclude.indptr)[warm]),
        np.concatenate([exclude.row(int(u)) for u in warm]),
        len(warm),
    )
    backfill_t = torch.from_numpy(np.ascontiguousarray(cat.vectors[backfill].T))
    fresh_idx = np.flatnonzero(cat.fresh)
    fresh_k = FRESH_FACTOR * int(policy.fresh_slots(length).sum())
    subsets = [(fresh_idx, fresh_k)] if len(fresh_idx) and fresh_k else []
    k = CANDIDATE_FACTOR * length
    for batch in iter_top_k(
        warm_vectors, cat.vectors, k, exclude=warm_exclude, batch_size=BATCH_USERS, subsets=subsets
    ):
        rows = batch.hi - batch.lo
        taken = np.zeros((rows, n_videos), dtype=bool)
        a, b = warm_exclude.indptr[batch.lo], warm_exclude.indptr[batch.hi]
        per_user = np.diff(warm_exclude.indptr[batch.lo : batch.hi + 1])
        taken[np.repeat(np.arange(rows), per_user), warm_exclude.indices[a:b]] = True
        parts_i, parts_s, parts_ok = [batch.indices], [batch.scores], [batch.indices >= 0]
        taken[np.nonzero(parts_ok[0])[0], batch.indices[parts_ok[0]]] = True
        for sub_i, sub_s in batch.subsets:
            ok = sub_i >= 0
            ok[ok] = ~taken[np.nonzero(ok)[0], sub_i[ok]]
            taken[np.nonzero(ok)[0], sub_i[ok]] = True
            parts_i.append(sub_i)
            parts_s.append(sub_s)
            parts_ok.append(ok)
        with torch.inference_mode():
            parts_s.append((torch.from_numpy(warm_vectors[batch.lo : batch.hi]) @ backfill_t).numpy())
        parts_i.append(np.broadcast_to(backfill, (rows, len(backfill))))
        parts_ok.append(~taken[:, backfill])
        all_i = np.concatenate(parts_i, axis=1)
        safe = np.maximum(all_i, 0)
        yield (
            batch.lo,
            batch.hi,
            all_i,
            np.concatenate(parts_s, axis=1),
            np.concatenate(parts_ok, axis=1),
            cat.creator_codes[safe],
            cat.fresh[safe],
        )


_DONE = object()


def _prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``items`` in a helper thread, ``depth`` items ahead of the consumer; errors surface in the consumer."""
    queue: Queue[Any] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)

    thread = threading.Thread(target=produce, name="materialize-candidates", daemon=True)
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _trending_feed(cat: Catalogue, policy: FeedPolicy) -> np.ndarray:
    """The trending order under the policy's creator cap and fresh slots: what a user with no history sees."""
    order = cat.trending
    return order[select_eligible(cat.creator_codes[order], len(cat.creator_ids), cat.fresh[order], policy)]


# --------------------------------------------------------------------------------------------------------------------
# Scores, reasons, output
# --------------------------------------------------------------------------------------------------------------------


def _feed_table(
    cat: Catalogue,
    policy: FeedPolicy,
    user_ids: pa.Array,
    feeds: list[np.ndarray],
    feed_scores: list[np.ndarray],
    signals: UserSignals,
) -> pa.Table:
    n_users = len(feeds)
    lengths = np.fromiter((len(f) for f in feeds), dtype=np.int64, count=n_users)
    row_user = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    row_rank = np.arange(len(row_user), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    row_video = np.concatenate(feeds) if n_users else np.zeros(0, dtype=np.int64)
    slots = policy.fresh_slots(policy.feed_length)
    fresh_slot = slots[row_rank] & cat.fresh[row_video] if len(row_rank) else np.zeros(0, dtype=bool)

    unit = unit_rows(cat.vectors)
    reason_cat = ReasonCatalogue(
        captions=cat.captions,
        creator_codes=cat.creator_codes,
        creator_ids=cat.creator_ids,
        tags=cat.tags,
        popular=_popular_mask(cat, policy),
        unit_vectors=unit,
        like_threshold=like_threshold(unit),
    )
    kinds = np.zeros(len(row_user), dtype=np.int8)
    args = np.zeros(len(row_user), dtype=np.int64)
    scores = np.concatenate(feed_scores) if n_users else np.zeros(0, dtype=np.float32)
    bounds = np.searchsorted(row_user, np.arange(0, n_users + BATCH_USERS, BATCH_USERS))
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        s = slice(a, b)
        kinds[s], args[s] = explain(reason_cat, signals, row_user[s], row_rank[s], row_video[s], fresh_slot[s])
    return pa.Table.from_arrays(
        [
            user_ids.take(pa.array(row_user)),
            pa.array(row_rank.astype(np.int32)),
            cat.video_ids.take(pa.array(row_video)),
            pa.array(scores),
            render(kinds, args, reason_cat),
        ],
        schema=FEED_SCHEMA,
    )


def _popular_mask(cat: Catalogue, policy: FeedPolicy) -> np.ndarray:
    # "Popular right now" is the head of the trending order: a feed's worth, but never more than 5% of the catalogue.
    popular = np.zeros(len(cat.video_ids), dtype=bool)
    top = cat.trending[: min(policy.feed_length, max(1, len(cat.video_ids) // 20))]
    popular[top[cat.popularity[top] > 0]] = True
    return popular


def _write_parquet(table: pa.Table, target: Path) -> None:
    write_with(
        target,
        lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP, write_statistics=True),
    )


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


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
            summary = build_trending(settings, args.snapshot)
        else:
            summary = materialize_feeds(settings, args.snapshot, args.shard)
    except (SnapshotError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
