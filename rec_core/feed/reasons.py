"""Why a video is in a feed, in words a user can read ("because you liked ...").

Reasons are computed for whole batches of feed rows with array operations and
stored as a (kind, argument) pair per row -- e.g. (``LIKED``, index of the
liked video) -- and only turned into text once per distinct pair at the end
(:func:`render`), so 5 million feed rows cost a few thousand string formats.

The first rule that holds wins, in this order:

1. a fresh video in a reserved fresh slot: "new from @creator you follow" when
   the user follows its creator, else "new from #tag" (a tag the user engages
   with if the video has one, else its most common specific tag), else "new for you";
2. its creator is followed: "from @creator you follow";
3. it is unusually close, by vector, to one of the user's recent likes:
   "because you liked "<caption>"". "Unusually close" is a cosine above a
   quantile (default 0.99) of the cosine between random pairs of catalogue
   videos, so it adapts to whatever geometry the towers learnt;
4. a creator the user follows liked it recently: "popular with creators you follow";
5. it is among the most popular videos (top fifth) of a hashtag the user
   engages with: "trending in #tag";
6. it is at the head of the global trending order: "popular right now";
7. otherwise, for a user with history: "based on what you watch" (the truth:
   it was ranked by the user's taste vector); for a user without: "popular right now".

Hashtags carried by more than ``GENERIC_TAG_SHARE`` of the catalogue (#fyp,
#viral, ...) say nothing about a video and are never used as a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import polars as pl
import pyarrow as pa

from rec_core.arrays import sorted_unique
from rec_core.feed.reasons_kernel import explain_rows

CAPTION_CHARS = 40
GENERIC_TAG_SHARE = 0.10
STRONG_TAG_QUANTILE = 0.8
TAGS_PER_VIDEO = 4  # the most common specific tags of a video; more would only cost time


class Reason(IntEnum):
    NEW_FOLLOWED = 0
    NEW_TAG = 1
    NEW = 2
    FOLLOWED = 3
    LIKED = 4
    FOLLOWED_POPULAR = 5
    TAG = 6
    POPULAR = 7
    FOR_YOU = 8
    TRENDING = 9


@dataclass(frozen=True, slots=True)
class TagIndex:
    """The specific hashtags of each video, as codes into ``names``."""

    names: list[str]
    video_tags: np.ndarray  # int64 [V, S], -1 padded; most common tag first
    strong: np.ndarray  # bool [V, S]: the video is among the most popular of that tag

    @classmethod
    def build(cls, hashtags: pl.Series | list[list[str]], popularity: np.ndarray) -> TagIndex:
        """From each video's hashtag list and popularity (aligned with video indices)."""
        n_videos = len(hashtags)
        # In polars, not Python lists: the large catalogue's 2.5 M tags were seconds per feed shard as objects.
        lists = hashtags if isinstance(hashtags, pl.Series) else pl.Series(hashtags, dtype=pl.List(pl.String))
        flat = (
            pl.DataFrame({"tag": lists.cast(pl.List(pl.String))})
            .with_row_index("video")
            .explode("tag")
            .filter(pl.col("tag").is_not_null() & (pl.col("tag") != ""))  # no null or empty tags
        )
        if flat.is_empty():
            empty = np.full((n_videos, 0), -1, dtype=np.int64)
            return cls([], empty, np.zeros((n_videos, 0), dtype=bool))
        video_of = flat["video"].to_numpy().astype(np.int64)
        # Names sorted by code point (UTF-8 bytes sort the same way), each tag coded by its place among them.
        names_all = flat["tag"].unique().sort()
        codes = flat["tag"].cast(pl.Enum(names_all)).to_physical().to_numpy().astype(np.int64)
        names_all = names_all.to_numpy().astype(object)
        # Count each tag once per video, so a caption repeating a tag does not make it common.
        pair = sorted_unique(video_of * len(names_all) + codes)
        video_of, codes = pair // len(names_all), pair % len(names_all)
        df = np.bincount(codes, minlength=len(names_all))
        specific = df <= max(1.0, GENERIC_TAG_SHARE * n_videos)
        video_of, codes = video_of[specific[codes]], codes[specific[codes]]
        # Re-code the specific tags densely, in name order (deterministic).
        kept = np.flatnonzero(specific)
        recode = np.full(len(names_all), -1, dtype=np.int64)
        recode[kept] = np.arange(len(kept))
        codes = recode[codes]
        names = [str(x) for x in names_all[kept]]
        df = df[kept]
        # Strong: popularity at or above the tag's STRONG_TAG_QUANTILE (and above zero).
        pop = np.asarray(popularity, dtype=np.float64)[video_of]
        by_tag = np.lexsort((pop, codes))
        starts = np.searchsorted(codes[by_tag], np.arange(len(names)))
        counts = np.bincount(codes, minlength=len(names))
        q_pos = starts + np.ceil(STRONG_TAG_QUANTILE * np.maximum(counts - 1, 0)).astype(np.int64)
        threshold = np.zeros(len(names))
        has = counts > 0
        threshold[has] = pop[by_tag[q_pos[has]]]
        strong = (pop >= threshold[codes]) & (pop > 0)
        # Lay out per video, most common tag first (ties by name), padded with -1.
        order = np.lexsort((codes, -df[codes], video_of))
        video_of, codes, strong = video_of[order], codes[order], strong[order]
        per_video = np.bincount(video_of, minlength=n_videos)
        slot = np.arange(len(video_of)) - np.repeat(np.cumsum(per_video) - per_video, per_video)
        keep = slot < TAGS_PER_VIDEO
        video_of, codes, strong, slot = video_of[keep], codes[keep], strong[keep], slot[keep]
        width = int(slot.max()) + 1 if len(slot) else 0
        video_tags = np.full((n_videos, width), -1, dtype=np.int64)
        strong_m = np.zeros((n_videos, width), dtype=bool)
        video_tags[video_of, slot] = codes
        strong_m[video_of, slot] = strong
        return cls(names, video_tags, strong_m)


@dataclass(frozen=True, slots=True)
class ReasonCatalogue:
    """What reasons need to know about videos; rows aligned with the video indices of the feed builder."""

    captions: pa.Array  # string [V]
    creator_codes: np.ndarray  # int64 [V]
    creator_ids: np.ndarray  # str [C]
    tags: TagIndex
    popular: np.ndarray  # bool [V]: in the global trending list
    unit_vectors: np.ndarray  # float32 [V, d], L2-normalised
    like_threshold: float  # cosine above which a video counts as "like" a liked one


@dataclass(frozen=True, slots=True)
class UserSignals:
    """What reasons need to know about the users of one shard (local user indices 0..U-1)."""

    n_users: int
    follow_keys: np.ndarray  # sorted int64: user * n_creators + creator code
    followed_like_keys: np.ndarray  # sorted int64: user * n_videos + video liked by a followed creator
    liked_indptr: np.ndarray  # int64 [U + 1]: recent liked videos per user, most recent first
    liked: np.ndarray  # int64
    top_tags: np.ndarray  # int64 [U, T], -1 padded: tags the user engages with most
    has_history: np.ndarray  # bool [U]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def like_threshold(unit_vectors: np.ndarray, quantile: float = 0.99, pairs: int = 50_000, seed: int = 0) -> float:
    """The ``quantile`` of cosine similarity between random video pairs (fixed seed: deterministic)."""
    n = len(unit_vectors)
    if n < 2:
        return 1.0
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, pairs)
    b = (a + rng.integers(1, n, pairs)) % n  # never a video with itself
    cos = np.einsum("ij,ij->i", unit_vectors[a], unit_vectors[b])
    return float(np.quantile(cos, quantile))


def explain(
    catalogue: ReasonCatalogue,
    users: UserSignals,
    row_user: np.ndarray,
    row_video: np.ndarray,
    fresh_slot: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Reason (kind, argument) of each feed row, compiled (:mod:`rec_core.feed.reasons_kernel`).

    Rows are (local user, video index, whether the row is a fresh slot holding a fresh video); a row's reason does
    not depend on its rank, and nothing catalogue-sized is built per call. Arguments: creator code for the
    *FOLLOWED kinds, tag code for NEW_TAG and TAG, liked video index for LIKED, 0 otherwise.
    """
    row_user = np.ascontiguousarray(row_user, dtype=np.int64)
    row_video = np.ascontiguousarray(row_video, dtype=np.int64)
    fresh_slot = np.ascontiguousarray(fresh_slot, dtype=np.bool_)
    n_videos = len(catalogue.creator_codes)
    if not len(row_user) == len(row_video) == len(fresh_slot):
        raise ValueError(f"{len(row_user)} row users, {len(row_video)} row videos, {len(fresh_slot)} fresh flags")
    if len(row_video) and (row_video.min() < 0 or row_video.max() >= n_videos):
        raise ValueError(f"row videos outside 0..{n_videos - 1}")
    if len(row_user) and (row_user.min() < 0 or row_user.max() >= users.n_users):
        raise ValueError(f"row users outside the {users.n_users} users of the signals")
    # The kernel reads without bounds checks: every array it indexes by video or by user must be that long.
    per_video = (catalogue.popular, catalogue.tags.video_tags, catalogue.tags.strong, catalogue.unit_vectors)
    if any(len(a) != n_videos for a in per_video):
        raise ValueError(f"the reason catalogue's arrays are not all {n_videos} videos long")
    if (
        len(users.liked_indptr) != users.n_users + 1
        or len(users.top_tags) != users.n_users
        or len(users.has_history) != users.n_users
    ):
        raise ValueError(f"the user signals' arrays are not all {users.n_users} users long")
    liked = np.ascontiguousarray(users.liked, dtype=np.int64)
    if (len(liked) and (liked.min() < 0 or liked.max() >= n_videos)) or users.liked_indptr[-1] > len(liked):
        raise ValueError("liked videos outside the catalogue, or an index past the likes")
    return explain_rows(
        row_user,
        row_video,
        fresh_slot,
        np.ascontiguousarray(catalogue.creator_codes, dtype=np.int64),
        len(catalogue.creator_ids),
        np.ascontiguousarray(catalogue.popular, dtype=np.bool_),
        np.ascontiguousarray(catalogue.tags.video_tags, dtype=np.int64),
        np.ascontiguousarray(catalogue.tags.strong, dtype=np.bool_),
        np.ascontiguousarray(catalogue.unit_vectors, dtype=np.float32),
        np.float32(catalogue.like_threshold),  # compared in float32, as numpy compared the float32 similarities
        np.ascontiguousarray(users.follow_keys, dtype=np.int64),
        np.ascontiguousarray(users.followed_like_keys, dtype=np.int64),
        np.ascontiguousarray(users.liked_indptr, dtype=np.int64),
        liked,
        np.ascontiguousarray(users.top_tags, dtype=np.int64),
        np.ascontiguousarray(users.has_history, dtype=np.bool_),
    )


def render(kinds: np.ndarray, args: np.ndarray, catalogue: ReasonCatalogue | None) -> pa.Array:
    """The text of each (kind, argument) row, formatted once per distinct pair.

    Without a catalogue only the kinds that take no argument can be rendered (what the live path gives).
    """
    kinds = np.asarray(kinds, dtype=np.int64)
    args = np.asarray(args, dtype=np.int64)
    if len(kinds) == 0:
        return pa.array([], pa.string())
    span = int(args.max()) + 1
    keys = pl.Series(kinds * span + args)
    # Hash-based (polars) rather than np.unique: no sort of millions of keys, and the strings are built in Rust.
    distinct = keys.unique()
    texts = pl.Series([_text(Reason(k // span), k % span, catalogue) for k in distinct.to_list()], dtype=pl.String)
    return keys.replace_strict(distinct, texts, return_dtype=pl.String).to_arrow().cast(pa.string())


def render_list(kinds: np.ndarray, args: np.ndarray, catalogue: ReasonCatalogue | None) -> list[str]:
    """:func:`render` for a page's worth of rows, as Python strings: no Series to build for twenty items."""
    known: dict[tuple[int, int], str] = {}
    out = []
    for pair in zip(np.asarray(kinds).tolist(), np.asarray(args).tolist(), strict=True):
        text = known.get(pair)
        if text is None:
            text = known[pair] = _text(Reason(pair[0]), pair[1], catalogue)
        out.append(text)
    return out


def truncate(text: str, limit: int = CAPTION_CHARS) -> str:
    """Shorten at a word boundary where there is one, with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + "…"


# Reasons whose text takes no argument.
PLAIN_TEXT = {
    Reason.NEW: "new for you",
    Reason.FOLLOWED_POPULAR: "popular with creators you follow",
    Reason.POPULAR: "popular right now",
    Reason.FOR_YOU: "based on what you watch",
    Reason.TRENDING: "trending",
}


def _text(kind: Reason, arg: int, catalogue: ReasonCatalogue | None) -> str:
    if kind in PLAIN_TEXT:
        return PLAIN_TEXT[kind]
    if catalogue is None:
        raise ValueError(f"reason {kind.name} needs the reason catalogue")
    if kind is Reason.NEW_FOLLOWED:
        return f"new from @{catalogue.creator_ids[arg]} you follow"
    if kind is Reason.NEW_TAG:
        return f"new from #{catalogue.tags.names[arg]}"
    if kind is Reason.FOLLOWED:
        return f"from @{catalogue.creator_ids[arg]} you follow"
    if kind is Reason.LIKED:
        caption = truncate(catalogue.captions[arg].as_py() or "")
        return f'because you liked "{caption}"' if caption else "because of a video you liked"
    return f"trending in #{catalogue.tags.names[arg]}"  # Reason.TAG
