"""The synthetic world's users as an app's audience: how each answers the videos a feed shows them.

A reaction is drawn by the same engagement model the world's history was drawn
with (:func:`rec_core.synthetic.interactions.engage`), from the planted affinity of
user and video, the video's quality and duration. So a feed that matches users'
planted tastes earns more watch-through and likes than one that does not, and
what a simulation measures is caused by recommendation quality, not by chance.

The app's side (:class:`AppHabits`): a view under ``skip_below`` completion is a
skip. After each video a user closes the app with probability ``leave_base +
leave_unwatched * (1 - completion)``: a feed that holds attention keeps them
longer, so videos per session measures the feed too (about 30 videos at the
completion of a good feed, 20 at MostPop's). They also leave after
``leave_after_skips`` skips in a row or ``max_pages`` pages. Per-user traits that the truth files do
not keep (patience, liking habit) are at the population mean (0).
A video the world does not know (posted through the API since) has affinity and
quality 0 and a 30 s duration.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from rec_core.synthetic.interactions import engage
from rec_core.synthetic.params import Engagement
from rec_core.synthetic.truth import Truth

UNKNOWN_DURATION_S = 30.0


@dataclass(frozen=True, slots=True)
class AppHabits:
    skip_below: float = 0.15  # completion under which a view counts as a skip
    leave_after_skips: int = 3  # skips in a row that close the app
    max_pages: int = 10  # pages of one session at most
    leave_base: float = 0.01  # chance of closing the app after any video ...
    leave_unwatched: float = 0.06  # ... plus this much times the part of it left unwatched

    def leaves_after(self, reaction: Reaction, rng: np.random.Generator) -> bool:
        """Whether the user closes the app after this video (one draw from ``rng``)."""
        return bool(rng.random() < self.leave_base + self.leave_unwatched * (1.0 - reaction.completion))


@dataclass(frozen=True, slots=True)
class Reaction:
    video_id: str
    completion: float  # as the app posts it: 4 digits (Audience.react)
    watch_time_s: float
    liked: bool
    shared: bool
    commented: bool
    skipped: bool

    def events(self, user_id: str, request_id: str) -> list[dict[str, object]]:
        """What the app posts for it: a watch or a skip, then a like, a share, a comment as they happened."""
        base = {"user_id": user_id, "video_id": self.video_id, "request_id": request_id}
        view = {"completion": self.completion, "watch_time_s": round(self.watch_time_s, 3)}
        out: list[dict[str, object]] = [{**base, "type": "skip" if self.skipped else "watch", **view}]
        out += [{**base, "type": kind} for kind, did in self._acts() if did]
        return out

    def _acts(self) -> tuple[tuple[str, bool], ...]:
        return (("like", self.liked), ("share", self.shared), ("comment", self.commented))


class Audience:
    """Reactions of the world's users. Each call draws from the generator it is given: a simulation seeds one
    per session, so its reactions replay whatever order concurrent sessions run in."""

    def __init__(self, truth: Truth, durations: dict[str, float], habits: AppHabits | None = None) -> None:
        self.truth = truth
        self.habits = habits or AppHabits()
        self._durations = durations
        world = truth.params.get("world", {})
        names = {f.name for f in fields(Engagement)}
        self._engagement = Engagement(**{k: v for k, v in world.get("engagement", {}).items() if k in names})
        self._video_row = {v: i for i, v in enumerate(truth.video_ids.tolist())}

    def users(self) -> list[str]:
        return self.truth.user_ids.tolist()

    def react(self, user_id: str, video_ids: list[str], rng: np.random.Generator) -> list[Reaction]:
        """How ``user_id`` answers ``video_ids``, shown in that order."""
        user = self.truth.user_latent[self.truth.user_index([user_id])[0]]
        rows = [self._video_row.get(v, -1) for v in video_ids]
        known = np.array([r >= 0 for r in rows])
        index = np.array([max(r, 0) for r in rows], dtype=np.int64)
        affinity = np.where(known, self.truth.video_latent[index] @ user, 0.0)
        quality = np.where(known, self.truth.video_quality[index], 0.0)
        duration = np.array([self._durations.get(v, UNKNOWN_DURATION_S) for v in video_ids], dtype=np.float64)
        zeros = np.zeros(len(video_ids))
        drawn = engage(rng, self._engagement, affinity, quality, duration, zeros, zeros)
        # Completions as the app posts them (4 digits), so what a run reports of them (watched through 80%) is what
        # the lake reads: 0.79996 is posted as 0.8.
        completion = [round(float(c), 4) for c in drawn["completion"]]
        return [
            Reaction(
                video_id=v,
                completion=completion[i],
                watch_time_s=float(drawn["watch_s"][i]),
                liked=bool(drawn["liked"][i]),
                shared=bool(drawn["shared"][i]),
                commented=bool(drawn["commented"][i]),
                skipped=completion[i] < self.habits.skip_below,
            )
            for i, v in enumerate(video_ids)
        ]
