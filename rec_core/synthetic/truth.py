"""The planted ground truth behind the lake tables, and writing / reading it beside the lake.

Tests and quality reports read it back to check that a trained model recovers what was planted.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rec_core.atomic import fsync_dir
from rec_core.synthetic.taxonomy import Taxonomy


@dataclass(frozen=True, slots=True, eq=False)
class Truth:
    """The planted structure behind the lake tables; row i of a user array belongs to ``user_ids[i]``."""

    taxonomy: Taxonomy
    params: dict[str, Any]  # WorldParams as a dict plus seed, window and (once written) the lake it belongs to
    subtopic_latent: np.ndarray  # [S, d] unit vectors
    user_ids: np.ndarray  # [U] sorted id strings
    user_latent: np.ndarray  # [U, d] unit vectors
    user_interests: np.ndarray  # [U, 4] sub-topic indices, -1 padded, strongest first
    user_interest_weights: np.ndarray  # [U, 4] Dirichlet weights, 0 where padded
    user_activity: np.ndarray  # [U] relative activity (mean 1)
    creator_home: np.ndarray  # [U, 2] home sub-topics of creators, -1 for non-creators / no second home
    video_ids: np.ndarray  # [V] sorted id strings
    video_subtopic: np.ndarray  # [V]
    video_latent: np.ndarray  # [V, d] unit vectors
    video_quality: np.ndarray  # [V] log quality
    video_popularity: np.ndarray  # [V] creator popularity x quality

    def user_index(self, user_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        return _lookup(self.user_ids, user_ids, "user")

    def video_index(self, video_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        return _lookup(self.video_ids, video_ids, "video")

    def affinity(self, user_ids: Sequence[str] | np.ndarray, video_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Planted affinity matrix ``[len(user_ids), len(video_ids)]``: cosine of the latent vectors, in [-1, 1]."""
        u = self.user_latent[self.user_index(user_ids)]
        v = self.video_latent[self.video_index(video_ids)]
        return u @ v.T

    def pair_affinity(self, user_ids: Sequence[str] | np.ndarray, video_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Planted affinity of aligned pairs ``(user_ids[i], video_ids[i])``."""
        u = self.user_latent[self.user_index(user_ids)]
        v = self.video_latent[self.video_index(video_ids)]
        return np.einsum("ij,ij->i", u, v)


def _lookup(
    sorted_ids: np.ndarray, ids: Sequence[str] | np.ndarray | pa.Array | pa.ChunkedArray, what: str
) -> np.ndarray:
    if isinstance(ids, pa.Array | pa.ChunkedArray):
        ids = ids.to_numpy(zero_copy_only=False)
    # No fixed width here: a cast to the stored width would cut an overlong unknown id into a known one.
    query = np.asarray(ids).astype(str)
    if query.size == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.searchsorted(sorted_ids, query)
    idx_clipped = np.minimum(idx, len(sorted_ids) - 1)
    missing = sorted_ids[idx_clipped] != query
    if missing.any():
        raise KeyError(f"unknown {what} id(s): {query[missing][:5].tolist()}")
    return idx_clipped.astype(np.int64)


TRUTH_FILES = ("taxonomy.json", "params.json", "subtopics.parquet", "users.parquet", "videos.parquet")


def write_truth(truth: Truth, truth_dir: Path, extra_params: dict[str, Any] | None = None) -> None:
    """Write ``truth`` to ``truth_dir`` as a whole: a reader sees the old folder or the new one."""
    truth_dir = Path(truth_dir)
    truth_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = truth_dir.parent / f".{truth_dir.name}-staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        params = {**truth.params, **(extra_params or {})}
        (stage / "taxonomy.json").write_text(json.dumps(truth.taxonomy.to_json(), indent=2))
        (stage / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True))
        pq.write_table(_subtopic_table(truth), stage / "subtopics.parquet")
        pq.write_table(_user_truth_table(truth), stage / "users.parquet", compression="zstd")
        pq.write_table(_video_truth_table(truth), stage / "videos.parquet", compression="zstd")
        for f in stage.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(stage)
        # A directory cannot be renamed over a non-empty one, so the old truth steps aside first.
        old = truth_dir.parent / f".{truth_dir.name}-old-{os.getpid()}"
        if truth_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(truth_dir, old)
        os.replace(stage, truth_dir)
        fsync_dir(truth_dir.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def load_truth(truth_dir: Path) -> Truth:
    """Read the planted truth written by :func:`write_truth`."""
    truth_dir = Path(truth_dir)
    if missing := [f for f in TRUTH_FILES if not (truth_dir / f).is_file()]:
        raise FileNotFoundError(
            f"no synthetic ground truth at {truth_dir} (missing {', '.join(missing)}): "
            "run `python -m jobs.generate_data` first"
        )
    taxonomy = Taxonomy.from_json(json.loads((truth_dir / "taxonomy.json").read_text()))
    params = json.loads((truth_dir / "params.json").read_text())
    subs = pq.read_table(truth_dir / "subtopics.parquet")
    users = pq.read_table(truth_dir / "users.parquet")
    videos = pq.read_table(truth_dir / "videos.parquet")
    return Truth(
        taxonomy=taxonomy,
        params=params,
        subtopic_latent=_matrix(subs["latent"]),
        user_ids=users["user_id"].to_numpy(zero_copy_only=False).astype(str),
        user_latent=_matrix(users["latent"]),
        user_interests=_matrix(users["interests"]).astype(np.int16),
        user_interest_weights=_matrix(users["interest_weights"]),
        user_activity=users["activity"].to_numpy(),
        creator_home=_matrix(users["creator_home"]).astype(np.int16),
        video_ids=videos["video_id"].to_numpy(zero_copy_only=False).astype(str),
        video_subtopic=videos["subtopic"].to_numpy().astype(np.int16),
        video_latent=_matrix(videos["latent"]),
        video_quality=videos["quality"].to_numpy(),
        video_popularity=videos["popularity"].to_numpy(),
    )


def _fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(matrix).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), matrix.shape[1])


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    arr = column.combine_chunks()
    width = arr.type.list_size
    return arr.flatten().to_numpy().reshape(-1, width)


def _subtopic_table(truth: Truth) -> pa.Table:
    subs = truth.taxonomy.subtopics
    return pa.table(
        {
            "subtopic": pa.array(np.arange(len(subs), dtype=np.int16)),
            "name": [s.name for s in subs],
            "topic": [s.topic for s in subs],
            "latent": _fixed_list(truth.subtopic_latent),
        }
    )


def _user_truth_table(truth: Truth) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(truth.user_ids, pa.string()),
            "latent": _fixed_list(truth.user_latent),
            "interests": _fixed_list(truth.user_interests.astype(np.int16)),
            "interest_weights": _fixed_list(truth.user_interest_weights),
            "activity": pa.array(truth.user_activity),
            "creator_home": _fixed_list(truth.creator_home.astype(np.int16)),
        }
    )


def _video_truth_table(truth: Truth) -> pa.Table:
    return pa.table(
        {
            "video_id": pa.array(truth.video_ids, pa.string()),
            "subtopic": pa.array(truth.video_subtopic.astype(np.int16)),
            "subtopic_name": pa.array(truth.taxonomy.subtopic_names).take(pa.array(truth.video_subtopic)),
            "latent": _fixed_list(truth.video_latent),
            "quality": pa.array(truth.video_quality),
            "popularity": pa.array(truth.video_popularity),
        }
    )
