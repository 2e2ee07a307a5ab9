"""The test users a release is evaluated and gated on: a fixed sample, so evaluation cost stops growing with users.

A release evaluates the candidate, the current model and the baselines over the full catalogue for every test
user; at the large scale that is 85,000 users per model, most of the evaluation's time, while a paired comparison
on 20,000 users already has intervals far narrower than the differences the gate acts on
(:mod:`rec_core.eval.intervals` reports them beside each decision). The sample is the users whose id hashes lowest
(blake2b), not a random draw: every model of a release sees the same users, the next release mostly the same ones
again (a user keeps their hash as the lake grows), and no seed has to be kept anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from rec_core.arrays import sorted_unique
from rec_core.data.split import Split


def with_test_sample(split: Split, users: int) -> Split:
    """``split`` with its test part cut to the rows of at most ``users`` users (0: every user, unchanged)."""
    if users < 0:
        raise ValueError(f"users must be 0 (all) or a positive number, got {users}")
    tested = sorted_unique(split.test.user_idx)
    if users == 0 or len(tested) <= users:
        return split
    chosen = tested[sample_order(split.user_ids[tested])[:users]]
    return dataclasses.replace(split, test=split.test.select(np.isin(split.test.user_idx, chosen)))


def sample_order(user_ids: np.ndarray) -> np.ndarray:
    """Positions of ``user_ids`` from the lowest id hash up: the first ``n`` are the sample of ``n``."""
    keys = np.array([hashlib.blake2b(str(u).encode(), digest_size=8).digest() for u in user_ids], dtype="S8")
    return np.argsort(keys, kind="stable")
