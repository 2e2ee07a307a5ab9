"""A split's parts as user x item sparse matrices: what the classical baselines fit and an evaluation masks."""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from rec_core.data.split import Split, SplitPart

MatrixWeights = Literal["binary", "count", "completion"]


def interaction_matrix(
    split: Split, on: SplitPart = "train", weights: MatrixWeights = "binary", *, positives_only: bool = False
) -> sp.csr_matrix:
    """User x item CSR matrix (float32, n_users x n_items) of one period.

    ``binary``: 1 for every (user, item) pair with an interaction;
    ``count``: the number of interactions of the pair (re-watches add up);
    ``completion``: the sum of the pair's completion ratios. Rows are users with
    no interaction in the period stay empty, so the shape always covers every
    user and the full catalogue. With ``positives_only`` the period is first
    filtered by the split's positive rule.
    """
    part = split.positives(on) if positives_only else split.part(on)
    if weights == "completion":
        values = part.completion.astype(np.float32)
    elif weights in ("binary", "count"):
        values = np.ones(len(part), dtype=np.float32)
    else:
        raise ValueError(f"weights must be binary, count or completion, got {weights!r}")
    # COO -> CSR sums duplicates, which is exactly "count" / summed completion.
    matrix = sp.csr_matrix(
        (values, (part.user_idx, part.item_idx)), shape=(split.n_users, split.n_items), dtype=np.float32
    )
    matrix.sum_duplicates()
    matrix.sort_indices()
    if weights == "binary":
        matrix.data[:] = 1.0
    return matrix


def train_matrix(split: Split, weights: MatrixWeights = "binary") -> sp.csr_matrix:
    """The user x item training matrix: the training part only (before each user's validation cut)."""
    return interaction_matrix(split, "train", weights)
