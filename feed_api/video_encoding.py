"""New videos posted to the API, through the text encoder and the video tower of a snapshot's model.

A new video has no views yet, so it goes through the tower exactly as a video
first seen after the training cut does in the batch: its engagement counts are
zero and its age is zero, and the hashed id embedding is unknown (the model was
trained with id dropout for this case). Text comes from the same encoder the
model was trained with.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import polars as pl

from feed_api.snapshot_view import SnapshotView
from rec_core.data.tables import VIDEOS
from rec_core.model.features import build_catalogue
from rec_core.model.text_encoder import TextEncoder, video_text
from rec_core.model.training import video_vectors


def video_row(payload: dict[str, Any], created_at: dt.datetime) -> dict[str, Any]:
    """A lake ``videos`` row for a posted video (what ``jobs.ingest_inbox`` will also write)."""
    return {
        "video_id": payload["video_id"],
        "creator_id": payload.get("creator_id") or payload["video_id"],
        "caption": payload["caption"],
        "hashtags": [h.lstrip("#").lower() for h in payload["hashtags"]],
        "duration_s": float(payload["duration"]),
        "width": int(payload["width"]),
        "height": int(payload["height"]),
        "created_at": created_at,
        "creator_followers": int(payload["user_followers"]),
        "creator_likes": int(payload["user_likes"]),
        "views": 0,
        "likes": 0,
        "comments": 0,
        "shares": 0,
    }


def encode_videos(
    view: SnapshotView, encoder: TextEncoder, payloads: list[dict[str, Any]], now: dt.datetime
) -> np.ndarray:
    """Vectors of ``payloads`` (rows aligned with them) in ``view``'s space, L2-normalised."""
    return encode_in_spaces([view], encoder, payloads, now)[0]


def encode_in_spaces(
    views: list[SnapshotView], encoder: TextEncoder, payloads: list[dict[str, Any]], now: dt.datetime
) -> list[np.ndarray]:
    """Vectors of ``payloads`` in each of ``views``' spaces (a snapshot's model and the other versions it carries:
    they share the text encoder, so the captions are encoded once)."""
    rows = [video_row(p, now) for p in payloads]
    frame = pl.DataFrame(rows, schema=pl.from_arrow(VIDEOS.empty_table()).schema)  # type: ignore[union-attr]
    frame = frame.with_columns(pl.col("created_at").dt.epoch("ms").alias("created_ms")).with_row_index("_input")
    frame = frame.sort("video_id")  # build_catalogue's order
    text = encoder.encode(
        [video_text(c, h) for c, h in zip(frame["caption"].to_list(), frame["hashtags"].to_list(), strict=True)],
        show_progress=False,
    )
    no_events = pl.DataFrame(
        schema={
            "video_id": pl.String,
            "ts_ms": pl.Int64,
            "liked": pl.Boolean,
            "commented": pl.Boolean,
            "shared": pl.Boolean,
        }
    )
    order, videos = frame["_input"].to_numpy(), frame.drop("_input")
    now_ms = int(now.timestamp() * 1000)
    out = []
    for view in views:
        catalogue = build_catalogue(videos, no_events, text, view.model.vocabs, now_ms)
        vectors = video_vectors(view.model.model, catalogue, view.model.stats).numpy()
        aligned = np.empty_like(vectors)
        aligned[order] = vectors
        out.append(aligned)
    return out
