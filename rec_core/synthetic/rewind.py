"""A lake's tables as they were a little earlier, to measure what a release does when the lake has only grown.

An incremental run (a warm start, cached captions) is measured by committing the rewound tables first, releasing a
model on them, then committing the whole tables: the lake grows by the newest share of interactions and videos,
as it would between two daily runs. The rewound lake holds what was known before both cuts: the videos posted
before the video cut; the users, follows and interactions before the interaction cut, on those videos.

Counters that the videos table carries as of now (views, likes) are left as they are: the towers count views
from the interactions, and the rewound lake is a measuring tool, not a history.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import polars as pl
import pyarrow as pa

from rec_core.data.lake import Lake
from rec_core.data.tables import TABLES

# The growth an incremental run is measured on (make profile-stages, make bench-warm-start): one day's new
# interactions and videos, as the scale issue sized it.
NEW_INTERACTIONS = 0.10
NEW_VIDEOS = 0.01


def world_tables(lake: Lake) -> dict[str, pa.Table]:
    """The live lake's world tables (videos, users, follows, interactions), whole."""
    return {name: lake.read(name) for name in TABLES}


def rewound(tables: Mapping[str, pa.Table], new_interactions: float, new_videos: float) -> dict[str, pa.Table]:
    """``tables`` without their newest ``new_interactions`` share of interactions and ``new_videos`` of videos."""
    for name, share in (("new_interactions", new_interactions), ("new_videos", new_videos)):
        if not 0.0 <= share < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {share}")
    videos = pl.from_arrow(tables["videos"])
    interactions = pl.from_arrow(tables["interactions"])
    video_cut = _cut(videos["created_at"], new_videos)
    watch_cut = _cut(interactions["ts"], new_interactions)
    kept_videos = videos.filter(pl.col("created_at") < video_cut)
    users = pl.from_arrow(tables["users"]).filter(pl.col("created_at") < watch_cut)
    out = {
        "videos": kept_videos,
        "users": users,
        "interactions": interactions.filter(
            (pl.col("ts") < watch_cut)
            & pl.col("video_id").is_in(kept_videos["video_id"].implode())
            & pl.col("user_id").is_in(users["user_id"].implode())
        ),
        "follows": pl.from_arrow(tables["follows"]).filter(
            (pl.col("ts") < watch_cut) & pl.col("user_id").is_in(users["user_id"].implode())
        ),
    }
    return {name: frame.to_arrow() for name, frame in out.items()}


def _cut(times: pl.Series, newest: float) -> dt.datetime:
    """The instant before which ``1 - newest`` of ``times`` lie (just after the last one when ``newest`` is 0)."""
    ordered = times.sort()
    at = round(len(ordered) * (1.0 - newest))
    return ordered[at] if at < len(ordered) else ordered[-1] + dt.timedelta(milliseconds=1)
