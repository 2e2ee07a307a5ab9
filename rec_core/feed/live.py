"""The live continuation's run of the feed pipeline: one user's search answer through the batch's own stages.

The API hands in its candidate source's answer (Milvus search, or the exact search past Milvus' top-k cap) and
what it knows of the user; this module lays them out as a one-row :class:`rec_core.feed.block.CandidateBlock` in
the snapshot's video codes (videos posted since the snapshot get codes after the catalogue's) and runs the same
:data:`rec_core.feed.pipeline.FEED_PIPELINE` the batch runs: with the snapshot's ranker in the context
(:class:`rec_core.feed.rank_stage.RankInputs` for this one user), its ranker stage reorders the answer exactly as
the batch reorders a user's top-k.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace

import numpy as np

from rec_core.feed.block import CandidateBlock, FeedContext, FeedRows
from rec_core.feed.candidates import ExclusionCSR
from rec_core.feed.pipeline import FeedPipeline
from rec_core.feed.policy import FeedPolicy
from rec_core.feed.rank_stage import RankInputs
from rec_core.feed.reasons import render_list
from rec_core.rank.candidates import with_popular
from rec_core.snapshot.serving_index import IdIndex


@dataclass(frozen=True, slots=True)
class LiveItem:
    video_id: str
    score: float
    reason: str


def rank_live(
    pipeline: FeedPipeline,
    hits: Sequence[tuple[str, float]],
    creators: Sequence[str],
    created_ms: Sequence[int],
    *,
    user_id: str,
    seen: AbstractSet[str],
    served: AbstractSet[str],
    codes: np.ndarray,
    video_ids: np.ndarray,
    as_of_ms: int,
    policy: FeedPolicy,
    trending_query: bool,
    ranking: RankInputs | None = None,
    posted_vector: Callable[[str], np.ndarray | None] | None = None,
    popular: int = 0,
    prior_creators: Sequence[str] = (),
) -> list[LiveItem]:
    """The feed the pipeline makes of ``hits`` (best first; ties by video id), at most ``policy.feed_length`` long.

    ``seen`` is what the user watched or skipped, ``served`` what this walk already listed or served;
    ``video_ids`` is the snapshot's code space and ``codes`` each hit's code in it (-1: a video posted since the
    snapshot); ``codes``, ``creators`` and ``created_ms`` align with ``hits``.
    ``ranking`` is the ranker stage's context for this user (None: the towers' order), and ``posted_vector`` the
    vector of a video posted since the snapshot, for its engagement features. The last ``popular`` hits are not the
    search's but the ranker's popular videos (``RankCatalogue.popular_codes``, scored with the same vector): they
    go behind the ranker's N best of the search, as the batch and the ranker's training lay them out.
    ``prior_creators``: the creators of the items the walk served just before, oldest first, which the creator cap
    counts in the answer's first windows.
    """
    if not hits:
        return []
    if not len(codes) == len(creators) == len(created_ms) == len(hits):
        raise ValueError(f"codes, creators and created_ms must align with the {len(hits)} hits")
    ids = np.asarray([h[0] for h in hits], dtype=object).astype(str)
    scores = np.asarray([h[1] for h in hits], dtype=np.float64)
    searched = len(hits) - popular
    best_first = np.lexsort((ids[:searched], -scores[:searched]))
    # Videos posted since the snapshot: codes after the catalogue's.
    codes = np.array(codes, dtype=np.int64)
    posted = codes < 0
    extra = {v: len(video_ids) + i for i, v in enumerate(dict.fromkeys(ids[posted].tolist()))}
    if extra:
        codes[posted] = [extra[v] for v in ids[posted].tolist()]
    if popular and ranking is not None:
        best_first = _popular_layout(codes, scores, best_first, np.arange(searched, len(hits)), ranking)
    hit_ids = ids.tolist()

    def laid(values: np.ndarray, none: object) -> np.ndarray:  # -1 in the layout: a cell with no video
        return np.where(best_first >= 0, values[np.maximum(best_first, 0)], none)

    block, ctx = _one_user(
        laid(codes, -1),
        laid(scores, np.nan),
        laid(np.asarray(creators, dtype=object), ""),
        laid(np.asarray(created_ms, dtype=np.int64), 0),
        user_id=user_id,
        as_of_ms=as_of_ms,
        policy=policy,
        video_ids=video_ids,
        posted_ids=tuple(extra),
        # The search already left out what the user saw and the walk served; the filters still check (they are the
        # contract, whatever the source did), over the answer's few ids rather than the user's whole history.
        seen=_codes_row(codes[[v in seen for v in hit_ids]]),
        served=_codes_row(codes[[v in served for v in hit_ids]]),
        unique=False,
        prior=prior_creators,
    )
    if ranking is not None and extra:
        ranking = replace(ranking, extra_vectors=_posted_vectors(list(extra), ranking, posted_vector))
    ctx = replace(ctx, trending_query=trending_query, ranking=ranking)
    scored, picks = pipeline.run(block, ctx)
    chosen = scored.video[0][picks[0]]
    # Ranks within this answer; no fresh slots here (the batch placed them), so no "new" reasons either.
    rows = FeedRows(np.zeros(len(chosen), np.int64), np.arange(len(chosen)), chosen, np.zeros(len(chosen), bool))
    kinds, args = pipeline.reasons.explain(rows, ctx)
    reasons = render_list(kinds, args, ctx.reason_catalogue)
    # Scores as the search gave them: the API reports its own float, not the block's float32 copy.
    hit_of = {c: i for i, c in enumerate(codes.tolist())}
    return [LiveItem(*hits[hit_of[c]], r) for c, r in zip(chosen.tolist(), reasons, strict=True)]


def _popular_layout(
    codes: np.ndarray, scores: np.ndarray, best_first: np.ndarray, popular_at: np.ndarray, ranking: RankInputs
) -> np.ndarray:
    """Positions into the hits in the ranker's layout (:func:`~rec_core.rank.candidates.with_popular`): the search's
    N best, the popular hits they do not hold, the rest of the search's without those; -1 where the layout leaves a
    cell empty, as the batch's and the training's do, so the ranker reorders the same N + popular cells."""
    laid, _ = with_popular(
        codes[best_first][None, :],
        scores[best_first][None, :],
        codes[popular_at],
        scores[popular_at][None, :],
        ranking.ranker.n_candidates,
    )
    at: dict[int, int] = {}
    for position in [*best_first.tolist(), *popular_at.tolist()]:
        at.setdefault(int(codes[position]), position)
    return np.asarray([at.get(c, -1) for c in laid[0].tolist()], dtype=np.int64)


def _posted_vectors(
    ids: list[str], ranking: RankInputs, posted_vector: Callable[[str], np.ndarray | None] | None
) -> np.ndarray:
    """Vectors of videos posted since the snapshot, in code order; zeros for one without a vector any more."""
    dim = ranking.catalogue.video_vectors.shape[1]
    found = [posted_vector(v) if posted_vector is not None else None for v in ids]
    return np.stack([np.zeros(dim, np.float32) if f is None else np.asarray(f, np.float32) for f in found])


def listed_keep(
    pipeline: FeedPipeline,
    codes: np.ndarray,
    scores: np.ndarray,
    creators: np.ndarray,
    created_ms: np.ndarray,
    *,
    user_id: str,
    seen: Collection[str],
    video_code: Mapping[str, int],
    video_ids: np.ndarray,
    as_of_ms: int,
    policy: FeedPolicy,
) -> np.ndarray:
    """bool per item of a slice of a precomputed list (a feed, or trending): whether the pipeline's filters keep it.

    The list is already a feed (selected and explained in the batch); paging it only re-checks the rules against
    what changed since (events since the batch) and, for the trending list, the rules it was built without (own
    videos). No selector: the list's order is the feed.
    """
    block, ctx = _one_user(
        codes,
        scores,
        creators,
        created_ms,
        user_id=user_id,
        as_of_ms=as_of_ms,
        policy=policy,
        video_ids=video_ids,
        seen=_one_row(seen, video_code),
        served=None,
        unique=True,
    )
    return pipeline.keep(block, ctx)[0]


def _one_user(
    codes: np.ndarray,
    scores: np.ndarray,
    creators: np.ndarray,
    created_ms: np.ndarray,
    *,
    user_id: str,
    as_of_ms: int,
    policy: FeedPolicy,
    video_ids: np.ndarray,
    seen: ExclusionCSR,
    served: ExclusionCSR | None,
    unique: bool,
    posted_ids: tuple[str, ...] = (),
    prior: Sequence[str] = (),
) -> tuple[CandidateBlock, FeedContext]:
    """A one-row block of ranked candidates and its context; creators are coded over the row, the user and the
    creators of the items served before (``prior``)."""
    # Dense creator codes in order of appearance (a dict: a page's worth of strings is no job for a sort).
    index: dict[str, int] = {}
    creator_codes = np.asarray([index.setdefault(c, len(index)) for c in [*creators.tolist(), user_id]], np.int64)
    prior_codes = np.asarray([index.setdefault(c, len(index)) for c in prior], np.int64).reshape(1, -1)
    creator_ids = np.asarray(list(index), dtype=object)
    block = CandidateBlock(
        users=np.zeros(1, dtype=np.int64),
        video=np.asarray(codes, dtype=np.int64)[None, :],
        score=np.asarray(scores, dtype=np.float32)[None, :],
        creator=creator_codes[None, :-1],
        fresh=policy.is_fresh(created_ms, as_of_ms)[None, :],
        unique_parts=(0, len(codes)) if unique else None,
    )
    ctx = FeedContext(
        policy=policy,
        video_ids=video_ids,
        posted_ids=posted_ids,
        creator_ids=creator_ids,
        user_creator=creator_codes[-1:],
        seen=seen,
        served=served,
        prior_creators=prior_codes if len(prior) else None,
    )
    return block, ctx


def _one_row(ids: Collection[str], video_code: Mapping[str, int]) -> ExclusionCSR:
    """One user's set of videos as a CSR row of codes; ids outside the code space cannot be candidates anyway."""
    if isinstance(video_code, IdIndex):  # the API's: one binary search for all of them
        return _codes_row(video_code.codes(list(ids)))
    get = video_code.get
    return _codes_row(np.fromiter((get(v, -1) for v in ids), dtype=np.int64, count=len(ids)))


def _codes_row(codes: np.ndarray) -> ExclusionCSR:
    """A set of codes (-1: none) as one CSR row."""
    row = np.unique(codes[codes >= 0])
    return ExclusionCSR(np.array([0, len(row)], dtype=np.int64), row)
