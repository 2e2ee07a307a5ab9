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

from rec_core.feed.liked_kernel import closest_liked

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
        pair = np.unique(video_of * len(names_all) + codes)
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
    """Reason (kind, argument) of each feed row.

    Rows are (local user, video index, whether the row is a fresh slot holding a fresh video); a row's reason does
    not depend on its rank. Call it per batch of users: working memory is [users in the batch, n_videos] bits.
    Arguments: creator code for the *FOLLOWED kinds, tag code for NEW_TAG and TAG, liked video index for LIKED, 0
    otherwise.
    """
    n = len(row_video)
    n_creators = len(catalogue.creator_ids)
    n_videos = len(catalogue.creator_codes)
    creator = catalogue.creator_codes[row_video]
    lo, hi = (int(row_user.min()), int(row_user.max()) + 1) if n else (0, 0)
    followed = _pair_lookup(users.follow_keys, lo, hi, n_creators, row_user, creator)
    followed_liked = _pair_lookup(users.followed_like_keys, lo, hi, n_videos, row_user, row_video)
    liked_sim, liked_arg = closest_liked(catalogue.unit_vectors, row_user, row_video, users.liked_indptr, users.liked)
    liked = liked_sim >= catalogue.like_threshold

    user_tags = users.top_tags[row_user]  # [n, T]
    video_tags = catalogue.tags.video_tags[row_video]  # [n, S]
    engaged = np.zeros(video_tags.shape, dtype=bool)
    for t in range(user_tags.shape[1]):
        engaged |= video_tags == user_tags[:, t : t + 1]
    engaged &= video_tags >= 0
    strong_engaged = engaged & catalogue.tags.strong[row_video]
    tag_arg = _first_true(strong_engaged, video_tags)
    tag_hit = tag_arg >= 0
    # A new video's tag: one the user engages with if any, else its most common specific tag.
    new_tag = np.full(n, -1, dtype=np.int64)
    if fresh_slot.any():
        fs = np.flatnonzero(fresh_slot)
        mine = _first_true(engaged[fs], video_tags[fs])
        new_tag[fs] = np.where(mine >= 0, mine, video_tags[fs, 0] if video_tags.shape[1] else -1)

    kinds = np.full(n, Reason.FOR_YOU, dtype=np.int8)
    args = np.zeros(n, dtype=np.int64)
    no_history = ~users.has_history[row_user]
    kinds[no_history] = Reason.POPULAR
    # Apply from the lowest priority up, so each later (higher) rule overwrites.
    rules: list[tuple[np.ndarray, Reason, np.ndarray | None]] = [
        (catalogue.popular[row_video], Reason.POPULAR, None),
        (tag_hit, Reason.TAG, tag_arg),
        (followed_liked, Reason.FOLLOWED_POPULAR, None),
        (liked, Reason.LIKED, liked_arg),
        (followed, Reason.FOLLOWED, creator),
        (fresh_slot, Reason.NEW, None),
        (fresh_slot & (new_tag >= 0), Reason.NEW_TAG, new_tag),
        (fresh_slot & followed, Reason.NEW_FOLLOWED, creator),
    ]
    for mask, kind, arg in rules:
        kinds[mask] = kind
        args[mask] = 0 if arg is None else arg[mask]
    return kinds, args


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


def _pair_lookup(
    sorted_keys: np.ndarray, lo: int, hi: int, width: int, row_user: np.ndarray, col: np.ndarray
) -> np.ndarray:
    """Whether ``row_user * width + col`` is among the keys, for users ``lo..hi-1``.

    A dense [users, width] bitmap of the batch's keys, then one gather: much faster than a binary search per row,
    and bounded by the batch (512 users x 50,000 videos is 25 MB).
    """
    a, b = np.searchsorted(sorted_keys, [lo * width, hi * width])
    table = np.zeros((hi - lo) * width, dtype=bool)
    table[sorted_keys[a:b] - lo * width] = True
    return table[(row_user - lo) * width + col]


def _first_true(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row, ``values`` at the first True of ``mask``; -1 where none."""
    if mask.shape[1] == 0:
        return np.full(len(mask), -1, dtype=np.int64)
    first = mask.argmax(axis=1)
    picked = values[np.arange(len(values)), first]
    return np.where(mask.any(axis=1), picked, -1)
