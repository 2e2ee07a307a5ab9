"""The generated arrays as the four lake tables (videos, users, follows, interactions), in the lake schemas."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from rec_core.data.tables import TS
from rec_core.synthetic.interactions import Interactions, VideoStats
from rec_core.synthetic.population import Follows, Users, Videos
from rec_core.synthetic.taxonomy import Taxonomy
from rec_core.synthetic.text import draw_captions, draw_hashtags


def _ts(ms: np.ndarray) -> pa.Array:
    return pa.array(ms.astype(np.int64), type=pa.int64()).cast(TS)


def videos_table(
    rng: np.random.Generator,
    tax: Taxonomy,
    videos: Videos,
    stats: VideoStats,
    video_ids: pa.Array,
    user_ids: pa.Array,
) -> pa.Table:
    n = len(videos.subtopic)
    shape = rng.choice(4, n, p=[0.86, 0.07, 0.05, 0.02])
    widths = np.array([1080, 1920, 1080, 720], dtype=np.int32)
    heights = np.array([1920, 1080, 1080, 1280], dtype=np.int32)
    return pa.table(
        {
            "video_id": video_ids,
            "creator_id": user_ids.take(pa.array(videos.creator)),
            "caption": pa.array(draw_captions(rng, tax, videos.subtopic), pa.string()),
            "hashtags": draw_hashtags(rng, tax, videos.subtopic),
            "duration_s": pa.array(videos.duration_s.astype(np.float32)),
            "width": pa.array(widths[shape]),
            "height": pa.array(heights[shape]),
            "created_at": _ts(videos.created_ms),
            "creator_followers": pa.array(stats.creator_followers),
            "creator_likes": pa.array(stats.creator_likes),
            "views": pa.array(stats.views),
            "likes": pa.array(stats.likes),
            "comments": pa.array(stats.comments),
            "shares": pa.array(stats.shares),
        }
    )


_COUNTRIES = (
    ("US", "en", 0.24),
    ("IN", "hi", 0.10),
    ("BR", "pt", 0.09),
    ("ID", "id", 0.07),
    ("MX", "es", 0.06),
    ("GB", "en", 0.06),
    ("PH", "en", 0.05),
    ("DE", "de", 0.05),
    ("FR", "fr", 0.05),
    ("JP", "ja", 0.04),
    ("TR", "tr", 0.04),
    ("ES", "es", 0.04),
    ("CA", "en", 0.04),
    ("KR", "ko", 0.03),
    ("IT", "it", 0.02),
    ("AU", "en", 0.02),
)
_AGE_GROUPS = (("13-17", 0.12), ("18-24", 0.35), ("25-34", 0.28), ("35-44", 0.14), ("45-54", 0.07), ("55+", 0.04))


def users_table(rng: np.random.Generator, users: Users, user_ids: pa.Array) -> pa.Table:
    n = len(users.created_ms)
    c_prob = np.array([c[2] for c in _COUNTRIES])
    country = rng.choice(len(_COUNTRIES), n, p=c_prob / c_prob.sum())
    languages = sorted({c[1] for c in _COUNTRIES})
    native = np.array([languages.index(c[1]) for c in _COUNTRIES])[country]
    # Many users outside English-speaking countries still run the app in English.
    language = np.where(rng.random(n) < 0.15, languages.index("en"), native)
    a_prob = np.array([a[1] for a in _AGE_GROUPS])
    age = rng.choice(len(_AGE_GROUPS), n, p=a_prob / a_prob.sum())

    def optional(values: Sequence[str], idx: np.ndarray, missing: float) -> pa.Array:
        # Profiles are incomplete: a null index becomes a null value.
        return pa.array(list(values), pa.string()).take(pa.array(idx, mask=rng.random(n) < missing))

    return pa.table(
        {
            "user_id": user_ids,
            "created_at": _ts(users.created_ms),
            "country": optional([c[0] for c in _COUNTRIES], country, 0.02),
            "language": optional(languages, language, 0.03),
            "age_group": optional([a[0] for a in _AGE_GROUPS], age, 0.08),
        }
    )


def follows_table(follows: Follows, user_ids: pa.Array) -> pa.Table:
    return pa.table(
        {
            "user_id": user_ids.take(pa.array(follows.user)),
            "creator_id": user_ids.take(pa.array(follows.creator)),
            "ts": _ts(follows.ts_ms),
        }
    )


def interactions_table(inter: Interactions, user_ids: pa.Array, video_ids: pa.Array) -> pa.Table:
    return pa.table(
        {
            "user_id": user_ids.take(pa.array(inter.user)),
            "video_id": video_ids.take(pa.array(inter.video)),
            "ts": _ts(inter.ts_ms),
            "watch_time_s": pa.array(inter.watch_s),
            "completion": pa.array(inter.completion),
            "liked": pa.array(inter.liked),
            "shared": pa.array(inter.shared),
            "commented": pa.array(inter.commented),
        }
    )
