"""Who is on the platform: the latent space, users and their interests, creators, videos, and follows.

A sub-topic is a unit vector (siblings in one topic are close), a video is its sub-topic's
vector plus noise, a user the Dirichlet mixture of 2-4 interest sub-topics plus noise.
Creators post mostly in their one or two home sub-topics, which are their own first interests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rec_core.synthetic.params import MS_PER_DAY, WorldParams
from rec_core.synthetic.sampler import SegmentSampler
from rec_core.synthetic.taxonomy import Taxonomy

MAX_INTERESTS = 4
MAX_HOMES = 2


@dataclass(slots=True)
class Users:
    """The generator's users, row i = user index i (ids follow sign-up order)."""

    created_ms: np.ndarray
    interests: np.ndarray  # [U, 4] -1 padded
    weights: np.ndarray  # [U, 4]
    latent: np.ndarray  # [U, d] float32
    activity: np.ndarray
    like_bias: np.ndarray
    patience: np.ndarray
    creators: np.ndarray  # user indices of creators
    home: np.ndarray  # [U, 2] -1 padded
    creator_pop: np.ndarray  # [U], 0 for non-creators


@dataclass(slots=True)
class Videos:
    """The generator's videos, row i = video index i (ids follow posting order)."""

    creator: np.ndarray  # user index
    created_ms: np.ndarray
    subtopic: np.ndarray
    latent: np.ndarray  # [V, d] float32
    log_quality: np.ndarray
    popularity: np.ndarray
    duration_s: np.ndarray
    availability: np.ndarray  # share of the video's expected views that fall inside the window


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def subtopic_space(rng: np.random.Generator, tax: Taxonomy, p: WorldParams) -> tuple[np.ndarray, np.ndarray]:
    """Sub-topic unit vectors (siblings share a topic direction) and sub-topic popularity (Zipf-like)."""
    n_topics, topic_of = len(tax.topics), tax.topic_of
    topic_vec = unit(rng.standard_normal((n_topics, p.latent_dim)))
    noise = unit(rng.standard_normal((len(topic_of), p.latent_dim)))
    sub_latent = unit(topic_vec[topic_of] + p.sibling_tightness * noise).astype(np.float32)
    ranks = rng.permutation(len(topic_of)) + 1
    sub_pop = ranks**-0.6
    return sub_latent, sub_pop / sub_pop.sum()


def make_users(
    rng: np.random.Generator, p: WorldParams, tax: Taxonomy, sub_latent: np.ndarray, sub_pop: np.ndarray
) -> Users:
    n = p.users
    start, end = p.start_ms, p.end_ms
    # Sign-up times: most users predate the window, some join during it (cold-start users). Ids follow sign-up order.
    joined_early = rng.random(n) < 0.85
    created = np.where(
        joined_early,
        rng.integers(start - 730 * MS_PER_DAY, start, n),
        rng.integers(start, end - MS_PER_DAY, n),
    )
    created = np.sort(created)

    interests, weights = _interests(rng, n, tax, sub_pop, p.interest_alpha)
    mix = np.einsum("uk,ukd->ud", weights, sub_latent[np.maximum(interests, 0)])
    noise = rng.standard_normal((n, p.latent_dim)) / np.sqrt(p.latent_dim)
    latent = unit(mix + p.user_noise * noise).astype(np.float32)

    activity = rng.lognormal(0.0, p.activity_sigma, n)
    activity /= activity.mean()

    # Creators need an account before the window so their back catalogue can predate it. Users are sorted by
    # sign-up, so the eligible ones come first; tiny custom worlds may need the earliest few moved back.
    cutoff = start - int((p.backlog_days + 1) * MS_PER_DAY)
    n_creators = max(1, round(n * p.creator_share))
    n_eligible = max(int((created < cutoff).sum()), n_creators)
    created[:n_eligible] = np.minimum(created[:n_eligible], cutoff - 1)
    creators = np.sort(rng.choice(n_eligible, n_creators, replace=False))
    home = np.full((n, MAX_HOMES), -1, dtype=np.int64)
    home[creators, 0] = interests[creators, 0]
    second = rng.random(n_creators) < 0.5
    home[creators[second], 1] = interests[creators[second], 1]
    creator_pop = np.zeros(n)
    creator_pop[creators] = rng.pareto(p.creator_pareto, n_creators) + 1.0
    return Users(
        created_ms=created,
        interests=interests,
        weights=weights,
        latent=latent,
        activity=activity,
        like_bias=rng.normal(0.0, 0.6, n),
        patience=rng.normal(0.0, 0.4, n),
        creators=creators,
        home=home,
        creator_pop=creator_pop,
    )


def _interests(
    rng: np.random.Generator, n: int, tax: Taxonomy, sub_pop: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """2-4 distinct interest sub-topics per user, strongest first, with Dirichlet weights."""
    topic_of = tax.topic_of
    primary = rng.choice(len(sub_pop), n, p=sub_pop)
    # Further interests lean towards siblings of the first (people who bake often also grill).
    w = np.log(sub_pop)[None, :] + np.log(1.0 + 3.0 * (topic_of[None, :] == topic_of[primary][:, None]))
    w[np.arange(n), primary] = -np.inf
    gumbel = w - np.log(-np.log(rng.random(w.shape)))  # Gumbel top-k = sampling without replacement
    others = np.argsort(-gumbel, axis=1)[:, : MAX_INTERESTS - 1]
    interests = np.concatenate([primary[:, None], others], axis=1)
    k = rng.integers(2, MAX_INTERESTS + 1, n)
    used = np.arange(MAX_INTERESTS)[None, :] < k[:, None]
    g = rng.gamma(alpha, 1.0, (n, MAX_INTERESTS)) * used  # normalised gammas = Dirichlet over the used slots
    weights = -np.sort(-g / g.sum(axis=1, keepdims=True), axis=1)
    interests = np.where(used, interests, -1)
    return interests, weights * used


def make_videos(
    rng: np.random.Generator,
    p: WorldParams,
    users: Users,
    sub_latent: np.ndarray,
    sub_pop: np.ndarray,
) -> Videos:
    n = p.videos
    start, end = p.start_ms, p.end_ms
    # Posting times: a back catalogue, the window itself, and a few cold videos after it. Ids follow posting order.
    n_cold = round(n * p.cold_share) if n >= 20 else 0
    warm = rng.integers(start - int(p.backlog_days * MS_PER_DAY), end - 3_600_000, n - n_cold)
    cold = rng.integers(end + 60_000, end + int(p.cold_days * MS_PER_DAY), n_cold)
    created = np.sort(np.concatenate([warm, cold]))

    rate = rng.lognormal(0.0, 1.0, len(users.creators))
    creator = users.creators[rng.choice(len(users.creators), n, p=rate / rate.sum())]

    home = users.home[creator]
    has_second = home[:, 1] >= 0
    pick_second = has_second & (rng.random(n) < 0.35)
    home_sub = np.where(pick_second, home[:, 1], home[:, 0])
    stray_sub = rng.choice(len(sub_pop), n, p=sub_pop)
    subtopic = np.where(rng.random(n) < p.home_share, home_sub, stray_sub)

    noise = rng.standard_normal((n, p.latent_dim)) / np.sqrt(p.latent_dim)
    latent = unit(sub_latent[subtopic] + p.video_noise * noise).astype(np.float32)
    log_quality = rng.normal(0.0, p.quality_sigma, n)
    popularity = users.creator_pop[creator] * np.exp(log_quality)

    return Videos(
        creator=creator,
        created_ms=created,
        subtopic=subtopic,
        latent=latent,
        log_quality=log_quality,
        popularity=popularity,
        duration_s=_durations(rng, n),
        availability=_availability(p, created),
    )


def _durations(rng: np.random.Generator, n: int) -> np.ndarray:
    # Mostly short clips, a band of ~30 s ones and a tail of long ones.
    medians = np.array([12.0, 30.0, 75.0])
    kind = rng.choice(3, n, p=[0.55, 0.3, 0.15])
    d = medians[kind] * np.exp(rng.normal(0.0, 0.45, n))
    return np.round(np.clip(d, 5.0, 180.0), 1)


def time_masses(p: WorldParams, created: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected view mass in ``[lo, end)`` of the decaying and the evergreen parts of a video's life."""
    tau = p.decay_days * MS_PER_DAY
    horizon = float(p.end_ms - p.start_ms)
    a = np.maximum(lo - created, 0) / tau
    b = np.maximum(p.end_ms - created, 0) / tau
    decay = (1.0 - p.evergreen_share) * (np.exp(-a) - np.exp(-b))
    even = p.evergreen_share * np.maximum(p.end_ms - lo, 0) / horizon
    return decay, even


def _availability(p: WorldParams, created: np.ndarray) -> np.ndarray:
    # Late videos have had little time to collect views and cold ones none at all.
    decay, even = time_masses(p, created, np.maximum(created, p.start_ms))
    avail = decay + even
    avail[created >= p.end_ms] = 0.0
    return avail


@dataclass(slots=True)
class Follows:
    """Who follows whom, as user indices."""

    user: np.ndarray  # sorted by (user, creator)
    creator: np.ndarray
    ts_ms: np.ndarray


def make_follows(rng: np.random.Generator, p: WorldParams, users: Users, n_subs: int) -> Follows:
    """Who follows whom: mostly creators of the user's interests, else popular ones."""
    n = p.users
    k = rng.poisson(p.follows_per_user * np.sqrt(users.activity))
    follower = np.repeat(np.arange(n), k)
    m = len(follower)
    sub = draw_interest(rng, users, follower)

    # A creator appears once per home sub-topic, weighted by popularity.
    c_rows = np.repeat(users.creators, MAX_HOMES)
    c_home = users.home[users.creators].reshape(-1)
    keep = c_home >= 0
    by_home = SegmentSampler.build(c_home[keep], users.creator_pop[c_rows[keep]], n_subs)
    creator, ok = by_home.sample(rng, sub)
    creator = c_rows[keep][creator]
    glob = SegmentSampler.build(np.zeros(len(users.creators), dtype=np.int64), users.creator_pop[users.creators], 1)
    pop_pick, _ = glob.sample(rng, np.zeros(m, dtype=np.int64))
    use_interest = ok & (rng.random(m) < p.p_follow_interest)
    creator = np.where(use_interest, creator, users.creators[pop_pick])

    keep = creator != follower
    follower, creator = follower[keep], creator[keep]
    key = follower.astype(np.int64) * n + creator
    _, first = np.unique(key, return_index=True)  # np.unique sorts by key, i.e. by (user, creator)
    follower, creator = follower[first], creator[first]
    # A follow happens once both accounts exist, at any time up to the end of the window.
    lo = np.maximum(users.created_ms[follower], users.created_ms[creator])
    ts = lo + (rng.random(len(lo)) * (p.end_ms - lo)).astype(np.int64)
    return Follows(follower, creator, ts)


def draw_interest(rng: np.random.Generator, users: Users, rows: np.ndarray) -> np.ndarray:
    """One interest sub-topic per row, drawn by the row's user's interest weights."""
    cw = np.cumsum(users.weights[rows], axis=1)
    slot = (rng.random(len(rows))[:, None] * cw[:, -1:] > cw).sum(axis=1)
    k = (users.interests[rows] >= 0).sum(axis=1)
    slot = np.minimum(slot, k - 1)
    return users.interests[rows, slot]
