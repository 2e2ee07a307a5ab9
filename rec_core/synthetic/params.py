"""What a world looks like: its size, time window, structure and engagement coefficients, and the named scales."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field

MS_PER_DAY = 86_400_000


@dataclass(frozen=True, slots=True)
class Engagement:
    """Logit coefficients of the engagement model; affinity is the planted cosine in [-1, 1]."""

    completion_bias: float = -1.0
    completion_affinity: float = 2.6
    completion_quality: float = 0.35
    completion_duration: float = -0.5  # per log(duration / 20 s): long videos are finished less often
    completion_noise: float = 0.8
    like_bias: float = -5.2
    like_affinity: float = 3.0
    like_completion: float = 1.6
    like_quality: float = 0.3
    share_bias: float = -7.2
    share_affinity: float = 2.5
    share_completion: float = 1.0
    share_quality: float = 0.5
    comment_bias: float = -6.4
    comment_affinity: float = 2.0
    comment_completion: float = 0.8
    comment_quality: float = 0.4


@dataclass(frozen=True, slots=True)
class WorldParams:
    users: int
    videos: int
    interactions_per_user: float = 100.0  # mean over users active the whole window
    creator_share: float = 0.2  # share of users who post
    latent_dim: int = 32
    # A fixed start (not "now") so the same seed gives the same bytes on any day.
    start: str = "2025-01-06T00:00:00+00:00"
    weeks: int = 8
    backlog_days: float = 14.0  # videos already online when the interaction log starts
    cold_share: float = 0.04  # videos posted after the last interaction
    cold_days: float = 2.0
    home_share: float = 0.8  # creators' videos in their home sub-topics
    sibling_tightness: float = 0.8  # noise of a sub-topic vector around its topic's (smaller: closer siblings)
    video_noise: float = 0.45
    user_noise: float = 0.35
    interest_alpha: float = 1.0  # Dirichlet concentration of interest weights
    activity_sigma: float = 1.4  # log-normal user activity
    creator_pareto: float = 1.2  # Pareto shape of creator popularity
    quality_sigma: float = 1.0  # log-normal video quality
    p_interest: float = 0.62  # exposure channels: interest sub-topics, followed creators, popularity exploration
    p_follow: float = 0.12
    p_sibling: float = 0.15  # share of interest exposures that drift to a sibling sub-topic of the same topic
    interest_pop_power: float = 0.7  # popularity matters less inside an interest than in exploration
    decay_days: float = 6.0  # views of a video decay after posting ...
    evergreen_share: float = 0.3  # ... except an evergreen share spread evenly over the window
    follows_per_user: float = 8.0
    p_follow_interest: float = 0.75
    platform_scale: float = 50.0  # platform users per lake user: lifetime video counts are this much larger
    engagement: Engagement = field(default_factory=Engagement)

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"users must be at least 1, got {self.users}")
        if self.videos < 1:
            raise ValueError(f"videos must be at least 1, got {self.videos}")

    @property
    def start_ms(self) -> int:
        return int(dt.datetime.fromisoformat(self.start).timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        """End of the interaction window (exclusive)."""
        return self.start_ms + self.weeks * 7 * MS_PER_DAY


SCALES: dict[str, WorldParams] = {
    "tiny": WorldParams(users=300, videos=1_500, interactions_per_user=130.0),
    "default": WorldParams(users=10_000, videos=50_000, interactions_per_user=115.0),
    "large": WorldParams(users=100_000, videos=500_000, interactions_per_user=115.0),
}


def params_for(scale: str, users: int | None = None, videos: int | None = None) -> WorldParams:
    """The parameters of a named scale, optionally with other user / video counts."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}")
    base = SCALES[scale]
    return dataclasses.replace(
        base, users=base.users if users is None else users, videos=base.videos if videos is None else videos
    )
