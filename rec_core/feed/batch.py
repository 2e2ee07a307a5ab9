"""Batch feeds: every user of one shard ranked by the feed pipeline, and the trending list.

Reads the snapshot's video vectors (all shards) and this shard's user vectors, and from the lake version the
snapshot was begun on: videos, interactions before as-of and follows (:mod:`rec_core.feed.catalogue`,
:mod:`rec_core.feed.history`). Then, per block of users, :data:`rec_core.feed.pipeline.FEED_PIPELINE` over this
path's candidate source: exact top-k by ``user . video`` (watched and own videos left out up front,
:mod:`rec_core.feed.candidates`), the best fresh videos for the fresh slots, and the trending list behind them so
a user whose candidates run out still gets a full feed. A user with no interaction before as-of gets the trending
list through the same pipeline.

When the snapshot's build applies the ranker (build.json's ``ranker``, decided when it began), the context carries
it and the pipeline's ranker stage reorders each user's leading ``n_candidates`` of the exact top-k (the top-k is
at least that deep) before the policy: the ranker and its feature state are read from the snapshot (``rank/``), the
files the API ranks its live pages with, so both paths compute the same features from the same bytes.

Output: ``feeds/part-<shard>-of-<user shards>.parquet`` with ``user_id, rank, video_id, score, reason`` sorted by
(user_id, rank), written atomically; ``score`` is the model's ``user . video`` for every row.
Deterministic: the same snapshot and lake give byte-identical files.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from threadpoolctl import threadpool_limits

from rec_core.atomic import write_with
from rec_core.experiments.assign import Assignment, Placement
from rec_core.experiments.spec import experiments_from_build
from rec_core.feed.block import CandidateBlock, FeedContext
from rec_core.feed.candidates import ExclusionCSR, iter_top_k
from rec_core.feed.catalogue import FeedCatalogue, FeedInputs, codes_of, load_inputs, read_vectors
from rec_core.feed.history import ShardHistory, shard_history
from rec_core.feed.pipeline import FEED_PIPELINE, FeedPipeline, feed_rows
from rec_core.feed.policy import FeedPolicy
from rec_core.feed.prefetch import ordered_map, prefetch
from rec_core.feed.rank_stage import RankModel, load_rank_model
from rec_core.feed.reasons import ReasonCatalogue, like_threshold, render, unit_rows
from rec_core.progress import Progress
from rec_core.rank.candidates import with_popular
from rec_core.settings import Settings
from rec_core.snapshot.feed_users import active_user_ids
from rec_core.snapshot.files import FEED_SCHEMA, TRENDING_SCHEMA, USER_ID, VIDEO_ID
from rec_core.snapshot.layout import BuildInfo, SnapshotError, SnapshotPaths, snapshot_paths

log = logging.getLogger(__name__)

CANDIDATE_FACTOR = 3  # top-k = 3 x feed length (at least the ranker's N): slack for the creator cap and dedup
BACKFILL_FACTOR = 3  # trending items appended behind the personal candidates, in feed lengths
FRESH_FACTOR = 3  # fresh candidates per reserved fresh slot
BATCH_USERS = 512  # users per matmul batch: 512 x 50,000 float32 scores is 100 MB
RANK_WORKERS = 2  # blocks scored at once when the ranker runs (one LightGBM thread each)
REASON_WORKERS = 2  # blocks of finished feeds explained at once
ROW_GROUP = 131_072
TRENDING_TEXT = "trending"


def materialize_feeds(
    settings: Settings, snapshot_id: str, shard: int, pipeline: FeedPipeline = FEED_PIPELINE
) -> dict[str, Any]:
    """Write the feed part of user shard ``shard``; returns a JSON-friendly summary (rows, users/s, timings)."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    paths = snapshot_paths(settings.paths, snapshot_id)
    build = paths.read_build()
    if not 0 <= shard < build.user_shards:
        raise ValueError(f"shard {shard} outside 0..{build.user_shards - 1} of snapshot {snapshot_id}")
    inputs = load_inputs(settings.paths, paths, build)
    cat, policy = inputs.catalogue, inputs.policy
    user_file = paths.user_vectors(shard, build.user_shards)
    user_ids, user_vectors = read_vectors([user_file], USER_ID, build, str(user_file))
    if (active := active_user_ids(settings.paths, build)) is not None:
        # A feed for the shard's active users only; the others keep their vector (rec_core.snapshot.feed_users).
        rows = np.flatnonzero(pl.Series(user_ids).is_in(active.implode()).to_numpy())
        user_ids, user_vectors = user_ids.take(pa.array(rows)), user_vectors[rows]
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
    history = shard_history(settings.paths, inputs, user_ids)
    timings["history"] = time.perf_counter() - t
    placed = _placements(build, user_ids)
    most_pop = np.array([p is not None and p.variant == "most_pop" for p in placed], dtype=bool)

    # Each user's feed is made in the space of their arm's model: the build's, or another version an arm names.
    tables, rankers = [], []
    lengths = np.zeros(n_users, dtype=np.int64)
    for space, space_build, members in _space_members(paths, build, placed):
        space_inputs, space_vectors = inputs, user_vectors
        if space is not paths:
            assert members is not None  # a build with two spaces or more splits its users
            space_inputs = _space_inputs(inputs, space, space_build)
            space_vectors = _space_user_vectors(space, space_build, shard, user_ids, members)
        t = time.perf_counter()
        rankers.append(ranker := load_rank_model(settings.paths, space, space_build))
        ctx = _shard_context(space_inputs, history, ranker, user_ids, space_vectors)
        timings["history"] += time.perf_counter() - t

        t = time.perf_counter()
        space_cat = space_inputs.catalogue
        feeds, feed_scores = select_feeds(
            space_cat, ctx, space_vectors, history.exclude, pipeline, most_pop=most_pop, only=members
        )
        _add_time(timings, "candidates + policy", t)

        t = time.perf_counter()
        tables.append(_feed_table(space_cat, ctx, user_ids, feeds, feed_scores, pipeline))
        _add_time(timings, "scores + reasons", t)
        lengths += np.fromiter((len(f) for f in feeds), dtype=np.int64, count=n_users)
    # Spaces split the users: their rows interleave in user order again.
    table = (
        tables[0]
        if len(tables) == 1
        else pa.concat_tables(tables).sort_by([(USER_ID, "ascending"), ("rank", "ascending")])
    )
    ranker = rankers[0]

    t = time.perf_counter()
    target = paths.feed_part(shard, build.user_shards)
    _write_parquet(table, target)
    timings["write"] = time.perf_counter() - t

    seconds = time.perf_counter() - started
    summary = {
        "snapshot_id": snapshot_id,
        "shard": shard,
        "shards": build.user_shards,
        "users": n_users,
        "users_with_history": int(history.signals.has_history.sum()),
        "rows": table.num_rows,
        "short_feeds": int((lengths < policy.feed_length).sum()),
        "min_feed_length": int(lengths.min()) if n_users else 0,
        "ranker": build.ranker,
        "arms": dict(Counter(f"{p.experiment}/{p.arm}" for p in placed if p is not None)),
        "seconds": round(seconds, 3),
        "users_per_s": round(n_users / max(seconds, 1e-9), 1),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "path": str(target),
    }
    log.info(
        "materialize shard %d done: %d users, %d rows in %.1fs (%.0f users/s, ranker %s); %s",
        shard,
        n_users,
        table.num_rows,
        seconds,
        summary["users_per_s"],
        "applied" if ranker is not None else "off",
        summary["timings"],
    )
    return summary


def build_trending(settings: Settings, snapshot_id: str, pipeline: FeedPipeline = FEED_PIPELINE) -> dict[str, Any]:
    """Write ``trending.parquet``: the most popular videos before as-of, through the pipeline for nobody."""
    started = time.perf_counter()
    paths = snapshot_paths(settings.paths, snapshot_id)
    inputs = load_inputs(settings.paths, paths, paths.read_build(), with_vectors=False)  # trending ranks by popularity
    cat = inputs.catalogue
    picked = trending_feed(cat, inputs.policy, pipeline)
    table = pa.Table.from_arrays(
        [
            pa.array(np.arange(len(picked), dtype=np.int32)),
            cat.video_ids.take(pa.array(picked)),
            pa.array(cat.popularity[picked].astype(np.float32)),
            pa.array(np.full(len(picked), TRENDING_TEXT), pa.string()),
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


def _space_members(
    paths: SnapshotPaths, build: BuildInfo, placed: list[Placement | None]
) -> list[tuple[SnapshotPaths, BuildInfo, np.ndarray | None]]:
    """Each model space the shard's users are in, with its users (None: all of them, the build has one space).
    The build's own space always comes first, even empty; another version's only when someone is in it."""
    spaces = paths.spaces(build)
    if len(spaces) == 1:
        return [(paths, build, None)]
    others = {b.model_version for _, b in spaces[1:]}
    variant = np.array([p.variant if p is not None and p.variant in others else "" for p in placed], dtype=object)
    out = []
    for space, space_build in spaces:
        members = variant == ("" if space is paths else space_build.model_version)
        if space is paths or members.any():
            out.append((space, space_build, members))
    return out


def _add_time(timings: dict[str, float], name: str, since: float) -> None:
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - since


def _space_inputs(inputs: FeedInputs, space: SnapshotPaths, build: BuildInfo) -> FeedInputs:
    """``inputs`` with the video vectors of another model version's space, row for row with its catalogue."""
    files = [space.video_vectors(i, build.video_shards) for i in range(build.video_shards)]
    ids, vectors = read_vectors(files, VIDEO_ID, build, f"video vectors of model version {build.model_version}")
    cat = inputs.catalogue
    rows = codes_of(pl.Series(cat.video_ids), pl.Series(ids))
    if (rows < 0).any():
        raise SnapshotError(f"model version {build.model_version}'s space lacks vectors of {(rows < 0).sum()} videos")
    return replace(inputs, paths=space, build=build, catalogue=replace(cat, vectors=vectors[rows]))


def _space_user_vectors(
    space: SnapshotPaths, build: BuildInfo, shard: int, user_ids: pa.Array, members: np.ndarray
) -> np.ndarray:
    """The shard's users' vectors in another version's space, row for row with ``user_ids``: its ``members`` (the
    users placed in its arms, whose vectors its embed stage wrote) have one, the others zeros, which no step reads."""
    user_file = space.user_vectors(shard, build.user_shards)
    ids, vectors = read_vectors([user_file], USER_ID, build, str(user_file))
    rows = codes_of(pl.Series(ids), pl.Series(user_ids))
    out = np.zeros((len(user_ids), build.embedding_dim), dtype=np.float32)
    out[rows[rows >= 0]] = vectors[rows >= 0]
    have = np.zeros(len(user_ids), dtype=bool)
    have[rows[rows >= 0]] = True
    if (lacking := members & ~have).any():
        raise SnapshotError(
            f"{user_file} lacks {int(lacking.sum())} user(s) placed in model version {build.model_version}"
        )
    return out


def _placements(build: BuildInfo, user_ids: pa.Array) -> list[Placement | None]:
    """Each user's arm in the snapshot's experiments (None: in none, the default feed)."""
    assignment = Assignment(experiments_from_build(build.experiments))
    if not assignment:
        return [None] * len(user_ids)
    return [assignment.of(u) for u in user_ids.to_pylist()]


# ---- contexts: what the stages know about a run's users ------------------------------------------------------------


def _context(cat: FeedCatalogue, policy: FeedPolicy, user_creator: np.ndarray, seen: ExclusionCSR) -> FeedContext:
    video_ids = cat.video_ids.to_numpy(zero_copy_only=False)
    return FeedContext(policy, video_ids, cat.creator_ids, user_creator, seen)


def _shard_context(
    inputs: FeedInputs, history: ShardHistory, ranker: RankModel | None, user_ids: pa.Array, user_vectors: np.ndarray
) -> FeedContext:
    cat, policy = inputs.catalogue, inputs.policy
    unit = unit_rows(cat.vectors)
    reasons = ReasonCatalogue(
        captions=cat.captions,
        creator_codes=cat.creator_codes,
        creator_ids=cat.creator_ids,
        tags=cat.tags,
        popular=_popular_mask(cat, policy),
        unit_vectors=unit,
        like_threshold=like_threshold(unit),
    )
    ctx = _context(cat, policy, history.creator, history.seen)
    ranking = None
    if ranker is not None:
        ranking = ranker.over(ctx.video_ids, cat.vectors).inputs(user_ids.to_numpy(zero_copy_only=False), user_vectors)
    return replace(ctx, signals=history.signals, reason_catalogue=reasons, ranking=ranking)


def _popular_mask(cat: FeedCatalogue, policy: FeedPolicy) -> np.ndarray:
    # "Popular right now" is the head of the trending order: a feed's worth, but never more than 5% of the catalogue.
    popular = np.zeros(len(cat.video_ids), dtype=bool)
    top = cat.trending[: min(policy.feed_length, max(1, len(cat.video_ids) // 20))]
    popular[top[cat.popularity[top] > 0]] = True
    return popular


# ---- candidate sources and the pipeline over them ------------------------------------------------------------------


def trending_feed(cat: FeedCatalogue, policy: FeedPolicy, pipeline: FeedPipeline = FEED_PIPELINE) -> np.ndarray:
    """The trending order through the pipeline for nobody in particular: only the non-personal rules bite."""
    nobody = _context(cat, policy, np.full(1, -1, dtype=np.int64), ExclusionCSR.empty(1))
    block = _list_block(cat, np.zeros(1, dtype=np.int64), cat.trending)
    block, picks = pipeline.run(block, nobody)
    return block.video[0][picks[0]]


def _list_block(cat: FeedCatalogue, users: np.ndarray, videos: np.ndarray) -> CandidateBlock:
    """The same ranked list for every user of ``users``; not scored (a list is not ranked by the user's vector)."""
    rows = (len(users), len(videos))
    return CandidateBlock(
        users=users,
        video=np.broadcast_to(videos, rows),
        score=np.full(rows, np.nan, dtype=np.float32),
        creator=np.broadcast_to(cat.creator_codes[videos], rows),
        fresh=np.broadcast_to(cat.fresh[videos], rows),
        unique_parts=(0, len(videos)),
    )


def select_feeds(
    cat: FeedCatalogue,
    ctx: FeedContext,
    user_vectors: np.ndarray,
    exclude: ExclusionCSR,
    pipeline: FeedPipeline = FEED_PIPELINE,
    *,
    most_pop: np.ndarray | None = None,
    only: np.ndarray | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each user's feed as video indices in feed order, and the model score (``user . video``) of each item.

    Users marked in ``most_pop`` (an experiment's MostPop arm) get the list users without history get: the
    trending order minus what they watched, through the same filters; their scores are still ``user . video``.
    With ``only``, the users it does not mark (another model space's) get an empty feed here.
    """
    n_users, n_videos = len(user_vectors), len(cat.video_ids)
    empty_i, empty_s = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    feeds: list[np.ndarray] = [empty_i] * n_users
    scores: list[np.ndarray] = [empty_s] * n_users
    if n_videos == 0:
        return feeds, scores
    assert ctx.signals is not None
    backfill = cat.trending[: BACKFILL_FACTOR * ctx.policy.feed_length]
    chosen = np.ones(n_users, dtype=bool) if only is None else only
    progress = Progress("materialize: users", int(chosen.sum()), logger=log)

    # Users without history: the trending feed (what trending.parquet holds) then more of the trending order, through
    # the same pipeline, so their own videos still go and the creator cap still holds around them.
    listed = ~ctx.signals.has_history if most_pop is None else ~ctx.signals.has_history | most_pop
    cold = np.flatnonzero(listed & chosen)
    if len(cold):
        trending = trending_feed(cat, ctx.policy, pipeline)
        cold_list = np.concatenate([trending, backfill[~np.isin(backfill, trending)]])
        for lo in range(0, len(cold), BATCH_USERS):
            block, picks = pipeline.run(_list_block(cat, cold[lo : lo + BATCH_USERS], cold_list), ctx)
            for r, u in enumerate(block.users.tolist()):
                feeds[u] = block.video[r][picks[r]]
                scores[u] = (cat.vectors[feeds[u]] @ user_vectors[u]).astype(np.float32)
            progress.advance(block.rows)

    warm = np.flatnonzero(~listed & chosen)
    if len(warm) == 0:
        return feeds, scores
    # Candidates, filters and scorers run in helper threads (torch, numpy and LightGBM release the GIL) while this
    # one selects (the policy: Python), so they overlap instead of taking turns; with the ranker, the costliest
    # step by far, two blocks are scored at once. The result does not depend on the timing.
    blocks = _top_k_blocks(cat, ctx, user_vectors, exclude, warm, backfill)
    workers = RANK_WORKERS if ctx.ranking is not None else 1
    # With two blocks scored at once, numpy's BLAS (the engagement head's products) keeps to one thread per block:
    # two blocks each spreading over both cores made four threads on two, waiting on each other (the ranked run
    # 15% slower in bench_materialize).
    with threadpool_limits(limits=1, user_api="blas") if workers > 1 else nullcontext():
        for block, keep in prefetch(ordered_map(lambda b: pipeline.filter_and_score(b, ctx), blocks, workers), 2):
            picks = pipeline.select(block, keep, ctx)
            for r, u in enumerate(block.users.tolist()):
                feeds[u] = block.video[r][picks[r]]
                scores[u] = block.score[r][picks[r]]
            progress.advance(block.rows)
    return feeds, scores


def _top_k_blocks(
    cat: FeedCatalogue,
    ctx: FeedContext,
    user_vectors: np.ndarray,
    exclude: ExclusionCSR,
    warm: np.ndarray,
    backfill: np.ndarray,
) -> Iterator[CandidateBlock]:
    """The batch's candidate source for users with history: per user [personal top-k | fresh top-k | trending];
    with a ranker trained on popular videos too, its popular videos sit in the first part behind its N.

    Seen and own videos (``exclude``) are pushed into the top-k so they do not take its places; the filters still
    see every candidate, the trending part included.
    """
    length = ctx.policy.feed_length
    warm_vectors = np.ascontiguousarray(user_vectors[warm])
    warm_exclude = exclude.take(warm)
    backfill_t = torch.from_numpy(np.ascontiguousarray(cat.vectors[backfill].T))
    fresh_idx = np.flatnonzero(cat.fresh)
    fresh_k = FRESH_FACTOR * int(ctx.policy.fresh_slots(length).sum())
    subsets = [(fresh_idx, fresh_k)] if len(fresh_idx) and fresh_k else []
    k = CANDIDATE_FACTOR * length
    popular, n_ranked = np.zeros(0, dtype=np.int64), 0
    if ctx.ranking is not None:  # the ranker reorders its N best of the towers: the top-k holds at least them
        n_ranked = ctx.ranking.ranker.n_candidates
        k = max(k, n_ranked)
        popular = ctx.ranking.catalogue.popular_codes
    popular_t = torch.from_numpy(np.ascontiguousarray(cat.vectors[popular].T))
    for batch in iter_top_k(
        warm_vectors, cat.vectors, k, exclude=warm_exclude, batch_size=BATCH_USERS, subsets=subsets
    ):
        rows = batch.hi - batch.lo
        first_i, first_s = batch.indices, batch.scores
        if len(popular):  # behind the ranker's N, as it was trained; the filters drop what the user has seen
            with torch.inference_mode():
                popular_s = (torch.from_numpy(warm_vectors[batch.lo : batch.hi]) @ popular_t).numpy()
            first_i, first_s = with_popular(first_i, first_s, popular, popular_s, n_ranked)
        parts_i = [first_i, *(sub_i for sub_i, _ in batch.subsets)]
        parts_s = [first_s, *(sub_s for _, sub_s in batch.subsets)]
        with torch.inference_mode():
            parts_s.append((torch.from_numpy(warm_vectors[batch.lo : batch.hi]) @ backfill_t).numpy())
        parts_i.append(np.broadcast_to(backfill, (rows, len(backfill))))
        all_i = np.concatenate(parts_i, axis=1)
        safe = np.maximum(all_i, 0)
        yield CandidateBlock(
            users=warm[batch.lo : batch.hi],
            video=all_i,
            score=np.concatenate(parts_s, axis=1),
            creator=cat.creator_codes[safe],
            fresh=cat.fresh[safe],
            unique_parts=tuple(np.cumsum([0, *(p.shape[1] for p in parts_i)]).tolist()),
        )


# ---- output --------------------------------------------------------------------------------------------------------


def _feed_table(
    cat: FeedCatalogue,
    ctx: FeedContext,
    user_ids: pa.Array,
    feeds: list[np.ndarray],
    feed_scores: list[np.ndarray],
    pipeline: FeedPipeline,
) -> pa.Table:
    n_users = len(feeds)
    lengths = np.fromiter((len(f) for f in feeds), dtype=np.int64, count=n_users)
    row_video = np.concatenate(feeds) if n_users else np.zeros(0, dtype=np.int64)
    rows = feed_rows(np.arange(n_users), lengths, row_video, cat.fresh[row_video], ctx)
    kinds = np.zeros(len(row_video), dtype=np.int8)
    args = np.zeros(len(row_video), dtype=np.int64)
    scores = np.concatenate(feed_scores) if n_users else np.zeros(0, dtype=np.float32)
    # Per block of users: blocks are independent and the compiled pass releases the GIL, so two at once use both
    # cores (this step ran alone on one, 13% of a shard).
    bounds = np.searchsorted(rows.user, np.arange(0, n_users + BATCH_USERS, BATCH_USERS))
    blocks = [slice(a, b) for a, b in itertools.pairwise(bounds.tolist()) if a < b]

    def explain(s: slice) -> tuple[np.ndarray, np.ndarray]:
        part = replace(rows, user=rows.user[s], rank=rows.rank[s], video=rows.video[s], fresh_slot=rows.fresh_slot[s])
        return pipeline.reasons.explain(part, ctx)

    with threadpool_limits(limits=1, user_api="blas"):
        for s, (kind, arg) in zip(blocks, ordered_map(explain, iter(blocks), REASON_WORKERS), strict=True):
            kinds[s], args[s] = kind, arg
    return pa.Table.from_arrays(
        [
            user_ids.take(pa.array(rows.user)),
            pa.array(rows.rank.astype(np.int32)),
            cat.video_ids.take(pa.array(row_video)),
            pa.array(scores),
            render(kinds, args, ctx.reason_catalogue),
        ],
        schema=FEED_SCHEMA,
    )


def _write_parquet(table: pa.Table, target: Path) -> None:
    write_with(
        target,
        lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP, write_statistics=True),
    )
