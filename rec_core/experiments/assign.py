"""Which arm a user is in: a deterministic hash of user and experiment, the same in the batch and the API.

A user's position in an experiment is ``blake2b(experiment name, user id)`` read as a number in [0, 1); the arms
take consecutive ranges of it in their order (shares 0.5 / 0.3: [0, 0.5) and [0.5, 0.8)), and a position past
the last range is in no arm. No state: the same user lands in the same arm in every snapshot, on every worker and
after every restart, for as long as the experiment's arms stay the same. Changing shares moves the range edges,
so the users between an old and a new edge change arm (each impression records the arm it was served under; the
report leaves out users seen in two arms).

Two experiments at once: each hashes with its own name, so positions in one are independent of the other. A user
is in at most one experiment (two would each want to choose the feed): the one started first that places them.
Because the hashes are independent, the users an earlier experiment claims are a random sample with respect to
a later one's arms, so each experiment's arms still compare like with like, over fewer users.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate

from rec_core.experiments.spec import Experiment

_SCALE = float(2**64)


@dataclass(frozen=True, slots=True)
class Placement:
    experiment: str
    arm: str
    variant: str


def position(experiment: str, user_id: str) -> float:
    """The user's place in [0, 1) for ``experiment``: uniform over users, independent across experiments."""
    digest = hashlib.blake2b(f"{experiment}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


class Assignment:
    """The arms of a set of running experiments (oldest first)."""

    def __init__(self, experiments: list[Experiment]) -> None:
        running = sorted((e for e in experiments if e.active), key=lambda e: e.started_at)
        self._ranges = [(e.name, list(zip(accumulate(a.share for a in e.arms), e.arms, strict=True))) for e in running]

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def variant_mask(self, user_ids: Iterable[str], variant: str) -> list[bool]:
        """For each user, whether their arm's variant is ``variant`` (a model version: whose space they are in)."""
        return [(p := self.of(u)) is not None and p.variant == variant for u in user_ids]

    def of(self, user_id: str) -> Placement | None:
        for name, ranges in self._ranges:
            at = position(name, user_id)
            for edge, arm in ranges:
                if at < edge:
                    return Placement(name, arm.name, arm.variant)
        return None
