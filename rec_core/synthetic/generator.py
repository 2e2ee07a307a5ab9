"""The synthetic world: a small short-video platform with structure a model can learn.

Nothing here is uniform noise. The generator plants a ground truth and derives
every table from it:

* a taxonomy of topics and sub-topics with a real-word vocabulary, so captions
  and hashtags of one sub-topic sit near each other for a text encoder;
* a latent space: every sub-topic has a unit vector (siblings in one topic are
  close), every video is its sub-topic's vector plus noise, every user is the
  mixture of 2-4 interest sub-topics (Dirichlet weights) plus noise. The planted
  user-video *affinity* is the cosine of the two vectors;
* creators are users who post mostly (about 80%) in their one or two home
  sub-topics, which are their own first interests;
* popularity is heavy-tailed (Pareto creator popularity times log-normal video
  quality) and user activity is log-normal;
* exposure favours a user's interests (plus followed creators and a share of
  popularity-driven exploration); engagement (completion, like, share, comment)
  rises with affinity and quality;
* time: eight weeks of interactions; a video is only watched after it was posted,
  mostly soon after, so late videos have few interactions, and a few percent of
  videos are posted after the last interaction (cold items).

:func:`generate_world` returns the four lake tables plus the planted truth
(:mod:`rec_core.synthetic.truth` keeps it beside the lake, so tests can check that a trained
model recovers it). Everything is vectorised numpy and a pure function of
``(WorldParams, seed)``: the same seed gives byte-identical tables.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rec_core.synthetic.interactions import make_interactions, video_stats
from rec_core.synthetic.lake_tables import follows_table, interactions_table, users_table, videos_table
from rec_core.synthetic.params import WorldParams
from rec_core.synthetic.population import make_follows, make_users, make_videos, subtopic_space
from rec_core.synthetic.taxonomy import Taxonomy, default_taxonomy
from rec_core.synthetic.truth import Truth

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class World:
    """A generated world: its lake tables, the truth behind them, and seconds per stage."""

    tables: dict[str, pa.Table]  # videos, users, follows, interactions, ready for Lake.commit
    truth: Truth
    timings: dict[str, float]


class _StepClock:
    """Logs each finished stage with its time; at large scale the stages take minutes."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.timings: dict[str, float] = {}
        self.last = time.perf_counter()

    def step(self, name: str) -> None:
        now = time.perf_counter()
        self.done += 1
        self.timings[name] = round(now - self.last, 3)
        self.last = now
        log.info("world %d/%d: %s in %.2fs", self.done, self.total, name, self.timings[name])


def generate_world(params: WorldParams, seed: int, taxonomy: Taxonomy | None = None) -> World:
    """Build the whole world for ``params``; deterministic in ``seed``."""
    tax = taxonomy or default_taxonomy()
    # One independent stream per stage: changing how one stage draws leaves the others unchanged.
    names = ("taxonomy", "users", "videos", "text", "follows", "interactions", "stats", "profile")
    rngs = {k: np.random.default_rng(s) for k, s in zip(names, np.random.SeedSequence(seed).spawn(8), strict=True)}
    clock = _StepClock(total=6)

    sub_latent, sub_pop = subtopic_space(rngs["taxonomy"], tax, params)
    users = make_users(rngs["users"], params, tax, sub_latent, sub_pop)
    clock.step("users")
    videos = make_videos(rngs["videos"], params, users, sub_latent, sub_pop)
    clock.step("videos")
    follows = make_follows(rngs["follows"], params, users, len(tax.subtopics))
    clock.step("follows")
    inter = make_interactions(rngs["interactions"], params, tax, users, videos, follows)
    clock.step("interactions")
    stats = video_stats(rngs["stats"], params, videos, follows, inter)
    clock.step("video stats")
    user_ids, video_ids = _ids("u", 7, params.users), _ids("v", 8, params.videos)
    u_ids, v_ids = pa.array(user_ids, pa.string()), pa.array(video_ids, pa.string())
    tables = {
        "videos": videos_table(rngs["text"], tax, videos, stats, v_ids, u_ids),
        "users": users_table(rngs["profile"], users, u_ids),
        "follows": follows_table(follows, u_ids),
        "interactions": interactions_table(inter, u_ids, v_ids),
    }
    clock.step("tables")
    truth = Truth(
        taxonomy=tax,
        params={
            "seed": int(seed),
            "world": dataclasses.asdict(params),
            # Interactions lie in [start, end); cold videos are posted after end.
            "window": {"start": _iso(params.start_ms), "end": _iso(params.end_ms)},
        },
        subtopic_latent=sub_latent,
        user_ids=user_ids,
        user_latent=users.latent,
        user_interests=users.interests.astype(np.int16),
        user_interest_weights=users.weights.astype(np.float32),
        user_activity=users.activity.astype(np.float32),
        creator_home=users.home.astype(np.int16),
        video_ids=video_ids,
        video_subtopic=videos.subtopic.astype(np.int16),
        video_latent=videos.latent,
        video_quality=videos.log_quality.astype(np.float32),
        video_popularity=videos.popularity.astype(np.float32),
    )
    return World(tables, truth, clock.timings)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def _ids(prefix: str, width: int, n: int) -> np.ndarray:
    # Zero padded and 1-based, so string order is numeric order and index i is id i + 1.
    return np.array([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)])
