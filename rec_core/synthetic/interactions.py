"""What users watched, when and how: exposure, engagement, and the platform-wide counts that follow.

Exposure favours a user's interests (plus followed creators and a share of popularity-driven
exploration); completion, likes, shares and comments rise with the planted affinity and quality.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from rec_core.progress import Progress
from rec_core.synthetic.params import MS_PER_DAY, Engagement, WorldParams
from rec_core.synthetic.population import Follows, Users, Videos, draw_interest, time_masses
from rec_core.synthetic.sampler import SegmentSampler
from rec_core.synthetic.taxonomy import Taxonomy, sibling_subtopic

log = logging.getLogger(__name__)

OVERSAMPLE = 1.4  # exposures drawn per wanted interaction, to make up for dropped repeats


@dataclass(slots=True)
class Interactions:
    """One row per (user, video) exposure, grouped by user, as indices."""

    user: np.ndarray
    video: np.ndarray
    ts_ms: np.ndarray
    watch_s: np.ndarray
    completion: np.ndarray
    liked: np.ndarray
    shared: np.ndarray
    commented: np.ndarray


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True, slots=True)
class _Exposure:
    """What a feed draws from: videos by sub-topic, by creator, overall, and each user's followed creators."""

    by_subtopic: SegmentSampler
    by_creator: SegmentSampler
    overall: SegmentSampler
    follow_start: np.ndarray  # per user: first row of their follows (follows are sorted by user)
    follow_count: np.ndarray
    follow_creator: np.ndarray

    @classmethod
    def build(cls, p: WorldParams, n_subs: int, videos: Videos, follows: Follows) -> _Exposure:
        # Late videos have had less time to be seen, so availability scales every weight.
        weight = videos.popularity * videos.availability
        count = np.bincount(follows.user, minlength=p.users)
        return cls(
            by_subtopic=SegmentSampler.build(
                videos.subtopic, videos.popularity**p.interest_pop_power * videos.availability, n_subs
            ),
            by_creator=SegmentSampler.build(videos.creator, weight, p.users),
            overall=SegmentSampler.build(np.zeros(p.videos, dtype=np.int64), weight, 1),
            follow_start=np.cumsum(count) - count,
            follow_count=count,
            follow_creator=follows.creator,
        )


def make_interactions(
    rng: np.random.Generator,
    p: WorldParams,
    tax: Taxonomy,
    users: Users,
    videos: Videos,
    follows: Follows,
) -> Interactions:
    exposure = _Exposure.build(p, len(tax.subtopics), videos, follows)
    chunk = 5_000  # users per chunk: bounds memory at large scale
    starts = list(range(0, p.users, chunk))
    # One child stream per chunk of a fixed size, so the draws never depend on the machine.
    chunk_rngs = rng.spawn(len(starts))
    progress = Progress("interactions (users)", total=p.users, every_s=5.0, logger=log)
    parts: list[Interactions] = []
    for lo, chunk_rng in zip(starts, chunk_rngs, strict=True):
        rows = np.arange(lo, min(lo + chunk, p.users))
        user, video = _expose(chunk_rng, p, tax, users, videos, exposure, rows)
        parts.append(_engage(chunk_rng, p, users, videos, user, video))
        progress.advance(len(rows))
    return Interactions(
        *(np.concatenate([getattr(x, f.name) for x in parts]) for f in dataclasses.fields(Interactions))
    )


def _expose(
    rng: np.random.Generator,
    p: WorldParams,
    tax: Taxonomy,
    users: Users,
    videos: Videos,
    exposure: _Exposure,
    rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Which videos each user of ``rows`` watched: interests, followed creators, or popular exploration."""
    start = p.start_ms
    active = (p.end_ms - np.maximum(users.created_ms[rows], start)) / (p.end_ms - start)
    lam = p.interactions_per_user * users.activity[rows] * active
    n_u = np.minimum(rng.poisson(lam), max(1, p.videos // 3))
    # Draw extra exposures: repeats of a (user, video) pair are dropped below, and heavy users would otherwise
    # lose the most, flattening the activity tail.
    draws = np.ceil(n_u * OVERSAMPLE).astype(np.int64) + 2
    user = np.repeat(rows, draws)
    m = len(user)

    sub = draw_interest(rng, users, user)
    sub = np.where(rng.random(m) < p.p_sibling, sibling_subtopic(rng, tax, sub), sub)
    v_interest, ok_interest = exposure.by_subtopic.sample(rng, sub)

    n_follows = exposure.follow_count[user]
    pick = exposure.follow_start[user] + (rng.random(m) * n_follows).astype(np.int64)
    followed = exposure.follow_creator
    creator = followed[np.minimum(pick, len(followed) - 1)] if len(followed) else np.zeros(m, dtype=np.int64)
    v_follow, ok_follow = exposure.by_creator.sample(rng, creator)
    ok_follow &= n_follows > 0

    v_pop, _ = exposure.overall.sample(rng, np.zeros(m, dtype=np.int64))
    channel = rng.random(m)
    use_interest = (channel < p.p_interest) & ok_interest
    use_follow = (channel >= p.p_interest) & (channel < p.p_interest + p.p_follow) & ok_follow
    video = np.where(use_interest, v_interest, np.where(use_follow, v_follow, v_pop))

    # Nobody's feed shows them their own videos, and a (user, video) pair is logged once.
    keep = videos.creator[video] != user
    user, video = user[keep], video[keep]
    _, first = np.unique(user.astype(np.int64) * p.videos + video, return_index=True)
    first.sort()  # back to draw order, which is grouped by user
    user, video = user[first], video[first]
    # Keep each user's first n_u distinct draws.
    counts = np.bincount(user - rows[0], minlength=len(rows))
    rank = np.arange(len(user)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = rank < n_u[user - rows[0]]
    return user[keep], video[keep]


def _engage(
    rng: np.random.Generator, p: WorldParams, users: Users, videos: Videos, user: np.ndarray, video: np.ndarray
) -> Interactions:
    """When each exposure happened and how the user engaged with it."""
    e = p.engagement
    created = videos.created_ms[video]
    lo = np.maximum(np.maximum(created, users.created_ms[user]), p.start_ms)
    ts = _draw_times(rng, p, created, lo)

    affinity = np.einsum("ij,ij->i", users.latent[user], videos.latent[video]).astype(np.float64)
    engaged = engage(
        rng,
        e,
        affinity,
        videos.log_quality[video],
        videos.duration_s[video],
        users.patience[user],
        users.like_bias[user],
    )
    return Interactions(user=user.astype(np.int32), video=video.astype(np.int32), ts_ms=ts, **engaged)


def engage(
    rng: np.random.Generator,
    e: Engagement,
    affinity: np.ndarray,
    log_quality: np.ndarray,
    duration_s: np.ndarray,
    patience: np.ndarray,
    like_bias: np.ndarray,
) -> dict[str, np.ndarray]:
    """How users engage with videos they are shown, one draw per (aligned) pair: ``watch_s``, ``completion``,
    ``liked``, ``shared`` and ``commented``. The world's history is drawn with it, and so is the traffic
    simulator's (``jobs.simulate_traffic``), so a simulated user answers a feed the way the lake says users do."""
    m = len(affinity)
    affinity = np.asarray(affinity, dtype=np.float64)
    q = np.asarray(log_quality, dtype=np.float64)
    z = (
        e.completion_bias
        + e.completion_affinity * affinity
        + e.completion_quality * q
        + e.completion_duration * np.log(duration_s / 20.0)
        + patience
        + e.completion_noise * rng.standard_normal(m)
    )
    # The 1.1 stretch lets the best-engaged views reach a full watch.
    completion = np.clip(_sigmoid(z) * 1.1, 0.0, 1.0).astype(np.float32)
    c = completion.astype(np.float64)
    like = e.like_bias + e.like_affinity * affinity + e.like_completion * c + e.like_quality * q + like_bias
    share = e.share_bias + e.share_affinity * affinity + e.share_completion * c + e.share_quality * q
    comment = e.comment_bias + e.comment_affinity * affinity + e.comment_completion * c + e.comment_quality * q
    comment = comment + 0.5 * like_bias
    return {
        "watch_s": (completion * duration_s).astype(np.float32),
        "completion": completion,
        "liked": rng.random(m) < _sigmoid(like),
        "shared": rng.random(m) < _sigmoid(share),
        "commented": rng.random(m) < _sigmoid(comment),
    }


def _draw_times(rng: np.random.Generator, p: WorldParams, created: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """A time in ``[lo, end)``: mostly soon after posting (exponential decay), partly evenly spread."""
    decay, even = time_masses(p, created, lo)
    use_decay = rng.random(len(lo)) * (decay + even) < decay
    tau = p.decay_days * MS_PER_DAY
    a = np.exp(-(lo - created) / tau)
    b = np.exp(-(p.end_ms - created) / tau)
    u = rng.random(len(lo))
    offset_decay = -tau * np.log(a - u * (a - b)) - (lo - created)
    offset_even = u * (p.end_ms - lo)
    offset = np.where(use_decay, offset_decay, offset_even)
    ts = lo + np.floor(offset).astype(np.int64)
    return np.clip(ts, lo, p.end_ms - 1)


@dataclass(slots=True)
class VideoStats:
    """Platform-wide lifetime counts per video (the lake holds only a sample of the platform)."""

    views: np.ndarray
    likes: np.ndarray
    comments: np.ndarray
    shares: np.ndarray
    creator_followers: np.ndarray
    creator_likes: np.ndarray


def video_stats(
    rng: np.random.Generator,
    p: WorldParams,
    videos: Videos,
    follows: Follows,
    inter: Interactions,
) -> VideoStats:
    """Platform-wide lifetime counts: the lake's sample scaled up to the platform, with noise."""
    n = p.videos
    seen = np.bincount(inter.video, minlength=n).astype(np.float64)
    # Cold and unlucky videos still get a trickle of views from outside the sample.
    noise = rng.lognormal(0.0, 0.15, n)
    views = rng.poisson(p.platform_scale * (seen + 0.3 * videos.availability + 0.05) * noise)

    def rate_count(flags: np.ndarray) -> np.ndarray:
        # Shrink the per-video rate towards the global one so tiny samples do not give 0% or 100%.
        hits = np.bincount(inter.video, weights=flags.astype(np.float64), minlength=n)
        prior = flags.mean() if len(flags) else 0.05
        rate = (hits + 5.0 * prior) / (seen + 5.0)
        return rng.binomial(views, np.clip(rate, 0.0, 1.0))

    likes = rate_count(inter.liked)
    comments = rate_count(inter.commented)
    shares = rate_count(inter.shared)
    lake_followers = np.bincount(follows.creator, minlength=p.users)
    followers = lake_followers + rng.poisson((p.platform_scale - 1.0) * (lake_followers + 0.5))
    creator_likes = np.bincount(videos.creator, weights=likes, minlength=p.users).astype(np.int64)
    return VideoStats(
        views=views.astype(np.int64),
        likes=likes.astype(np.int64),
        comments=comments.astype(np.int64),
        shares=shares.astype(np.int64),
        creator_followers=followers[videos.creator].astype(np.int64),
        creator_likes=creator_likes[videos.creator],
    )
