"""Retrieval then features for a block of users, as of one instant: what the ranker is trained on and applied to."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from rec_core.rank.features import block_features
from rec_core.rank.retrieval import TowerView, as_of_scores, top_candidates
from rec_core.rank.state import AsOfState

# The towers' top N that the ranker reorders. 200, not 500: on MovieLens (both protocols) the top 200 measured as
# well as the top 500 against retrieval alone and the baselines, at 0.4 of the ranking cost per user (features,
# engagement head and trees all scale with N), which the batch pays for every user (docs/quality.md, performance.md).
DEFAULT_CANDIDATES = 200


@dataclass(frozen=True, slots=True)
class RankBlock:
    """Candidate lists of ``users`` (best first by the towers) with their features."""

    users: np.ndarray  # int64 [rows]
    items: np.ndarray  # int64 [rows, n]; -1: none
    tower_score: np.ndarray  # float32 [rows, n]
    features: np.ndarray  # float32 [valid cells, len(FEATURES)], row-major over the valid cells
    valid: np.ndarray  # bool [rows, n]
    all_scores: torch.Tensor  # float32 [rows, n_items]: every video's towers' score as of t (as_of_scores)
    seconds: dict[str, float] = field(default_factory=dict)  # "retrieve" and "features" wall time


def candidate_block(view: TowerView, state: AsOfState, users: np.ndarray, n: int = DEFAULT_CANDIDATES) -> RankBlock:
    """The towers' top ``n`` unseen videos of each user and their features, all as of ``state.t_ms``."""
    if view.t_ms != state.t_ms:
        raise ValueError(f"towers as of {view.t_ms} but features as of {state.t_ms}: both must be one instant")
    users = np.asarray(users, dtype=np.int64)
    started = time.perf_counter()
    user_vecs = view.user_vectors(users)
    scores = as_of_scores(view.scores(user_vecs), state.seen, state.item_posted, users)
    items, top = top_candidates(scores, state.item_posted, n)
    retrieved = time.perf_counter()
    engagement = view.engagement(user_vecs, items)
    features, valid = block_features(state, users, items, top, engagement)
    done = time.perf_counter()
    return RankBlock(
        users, items, top, features, valid, scores, {"retrieve": retrieved - started, "features": done - retrieved}
    )
