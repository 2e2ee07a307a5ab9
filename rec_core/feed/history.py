"""What the batch knows about the users of one shard: what they watched, which creator they are, what reasons need.

All per-user arrays are indexed by the shard's local user index ``0..U-1`` (users sorted by id), all videos by
:class:`rec_core.feed.catalogue.FeedCatalogue` index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from rec_core.arrays import sorted_unique
from rec_core.feed.candidates import ExclusionCSR
from rec_core.feed.catalogue import FeedCatalogue, FeedInputs, codes_of
from rec_core.feed.reasons import UserSignals
from rec_core.settings import PathSettings
from rec_core.snapshot.files import lake_table_path

RECENT_LIKES = 10  # liked videos per user a "because you liked" can point at
CREATOR_LIKES = 50  # recent likes per creator behind "popular with creators you follow"
TOP_TAGS = 3  # hashtags per user behind "trending in #tag"


@dataclass(frozen=True, slots=True)
class ShardHistory:
    creator: np.ndarray  # int64 [U]: each user's creator code, -1 for users with no video in the catalogue
    seen: ExclusionCSR  # videos each user interacted with before as-of
    exclude: ExclusionCSR  # seen and own videos: what the exact top-k leaves out up front
    signals: UserSignals


def shard_history(paths: PathSettings, inputs: FeedInputs, user_ids: pa.Array) -> ShardHistory:
    cat = inputs.catalogue
    shard_inter = _shard_interactions(inputs.interactions, user_ids)
    creator = codes_of(pl.Series(user_ids), pl.Series(cat.creator_ids))
    seen_u, seen_v = shard_inter["uidx"].to_numpy(), shard_inter["vidx"].to_numpy()
    own_u, own_v = _own_pairs(cat, creator)
    n_users = len(user_ids)
    return ShardHistory(
        creator=creator,
        seen=ExclusionCSR.from_pairs(seen_u, seen_v, n_users),
        exclude=ExclusionCSR.from_pairs(np.concatenate([seen_u, own_u]), np.concatenate([seen_v, own_v]), n_users),
        signals=_user_signals(paths, inputs, user_ids, shard_inter),
    )


def _shard_interactions(interactions: pl.DataFrame, user_ids: pa.Array) -> pl.DataFrame:
    uidx = codes_of(interactions["user_id"], pl.Series(user_ids))
    return interactions.with_columns(pl.Series("uidx", uidx)).filter(pl.col("uidx") >= 0)


def _own_pairs(cat: FeedCatalogue, user_creator: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user, video) of every video whose creator is a shard user."""
    by_creator = np.argsort(cat.creator_codes, kind="stable")
    starts = np.searchsorted(cat.creator_codes[by_creator], np.arange(len(cat.creator_ids) + 1))
    creators = np.flatnonzero(user_creator >= 0)
    codes = user_creator[creators]
    counts = starts[codes + 1] - starts[codes]
    own_u = np.repeat(creators, counts).astype(np.int64)
    if not len(codes):
        return own_u, np.zeros(0, dtype=np.int64)
    own_v = by_creator[np.concatenate([np.arange(starts[c], starts[c + 1]) for c in codes])]
    return own_u, own_v.astype(np.int64)


def _user_signals(
    paths: PathSettings, inputs: FeedInputs, user_ids: pa.Array, shard_inter: pl.DataFrame
) -> UserSignals:
    cat = inputs.catalogue
    n_users, n_videos, n_creators = len(user_ids), len(cat.video_ids), len(cat.creator_ids)
    has_history = np.bincount(shard_inter["uidx"].to_numpy(), minlength=n_users) > 0

    follows = (
        pl.scan_parquet(lake_table_path(paths, inputs.build, "follows"))
        .with_columns(pl.col("ts").dt.epoch("ms").alias("ts_ms"))
        .filter(pl.col("ts_ms") < inputs.as_of_ms)
        .select("user_id", "creator_id")
        .collect()
    )
    f_user = codes_of(follows["user_id"], pl.Series(user_ids))
    f_creator = codes_of(follows["creator_id"], pl.Series(cat.creator_ids))
    ok = (f_user >= 0) & (f_creator >= 0)
    follow_keys = sorted_unique(f_user[ok] * n_creators + f_creator[ok])

    # Videos recently liked by the creators each user follows ("popular with creators you follow").
    likes = inputs.interactions.filter(pl.col("liked"))
    creator_likes = (
        likes.with_columns(pl.Series("creator", codes_of(likes["user_id"], pl.Series(cat.creator_ids))))
        .filter(pl.col("creator") >= 0)
        .sort(["creator", "ts_ms", "vidx"], descending=[False, True, False])
        .group_by("creator", maintain_order=True)
        .head(CREATOR_LIKES)
    )
    followed = pl.DataFrame({"uidx": f_user[ok], "creator": f_creator[ok]})
    pairs = followed.join(creator_likes.select("creator", "vidx"), on="creator", how="inner")
    followed_like_keys = sorted_unique(pairs["uidx"].to_numpy() * n_videos + pairs["vidx"].to_numpy())

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


def _top_tags(cat: FeedCatalogue, shard_inter: pl.DataFrame, n_users: int) -> np.ndarray:
    tags = cat.tags
    n_tags = len(tags.names)
    out = np.full((n_users, TOP_TAGS), -1, dtype=np.int64)
    if n_tags == 0 or shard_inter.height == 0:
        return out
    u = shard_inter["uidx"].to_numpy()
    v = shard_inter["vidx"].to_numpy()
    vt = tags.video_tags[v]  # [n, S]
    valid = vt >= 0
    keys = (np.repeat(u, vt.shape[1]) * n_tags + vt.ravel())[valid.ravel()]
    liked = np.repeat(shard_inter["liked"].to_numpy(), vt.shape[1])[valid.ravel()]
    # A view counts 1, a like 3: each (user, tag) key's views plus twice its likes, counted over sorted keys (numpy
    # sorts integers with SIMD; np.unique with an inverse took most of this step).
    ordered = np.sort(keys)
    starts = np.flatnonzero(np.diff(ordered, prepend=-1))  # keys are >= 0
    unique = ordered[starts]
    liked_keys = np.sort(keys[liked])
    likes = np.searchsorted(liked_keys, unique, "right") - np.searchsorted(liked_keys, unique, "left")
    total = np.diff(np.append(starts, len(ordered))) + 2 * likes
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
