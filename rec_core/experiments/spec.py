"""What an experiment is: named arms, each a variant of the feed and a share of users.

A variant is what a user's feed is made of:

* ``model``: the snapshot's model (the two towers and, where the build applies it, the ranker): the default
  feed, what users in no experiment get. Two arms of ``model`` make an A/A experiment; an arm of ``model`` beside
  a treatment is its control (or a holdout).
* ``most_pop``: the most popular videos before the snapshot's as-of, minus what the user has watched (the
  trending list through the same filters): the baseline a recommender must beat.
* a model version of the model store (``m20261203T091500Z-1a2b3c4d``): that version's towers and ranker, though
  it is not the current model. The snapshot carries a space for each version an arm names (its vectors, ranker and
  Milvus collection; :mod:`rec_core.snapshot.layout`), materializes those users' feeds in it, and the API serves
  their live pages from it. An arm naming the current model's version is the same as ``model``.

Shares are fractions of all users, each in (0, 1], summing to at most 1; the users left over are in no arm of
this experiment (they get the default feed, and are not in its report). Names follow the id rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable
from typing import Any

import msgspec

from rec_core.ids import id_problem

VARIANTS = ("model", "most_pop")  # besides a model version
MAX_ARMS = 16
MODEL_VERSION = re.compile(r"^m\d{8}T\d{6}Z-[0-9a-f]{8}$")  # rec_core.model.store.ModelStore.new_version_name


class ExperimentError(ValueError):
    """An experiment or a change to one that cannot be; ``field`` names what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


class Arm(msgspec.Struct, frozen=True):
    name: str
    variant: str
    share: float


class Experiment(msgspec.Struct, frozen=True):
    name: str
    arms: tuple[Arm, ...]
    started_at: str  # ISO time
    changed_at: str | None = None
    stopped_at: str | None = None

    @property
    def active(self) -> bool:
        return self.stopped_at is None


def check_arms(arms: tuple[Arm, ...]) -> None:
    """Raise :class:`ExperimentError` naming the first rule ``arms`` break."""
    if not 1 <= len(arms) <= MAX_ARMS:
        raise ExperimentError("arms", f"an experiment has 1 to {MAX_ARMS} arms, got {len(arms)}")
    names = [a.name for a in arms]
    for i, arm in enumerate(arms):
        if (problem := id_problem(arm.name)) is not None:
            raise ExperimentError(f"arms[{i}].name", problem)
        if arm.variant not in VARIANTS and not MODEL_VERSION.match(arm.variant):
            raise ExperimentError(
                f"arms[{i}].variant",
                f"must be {' or '.join(VARIANTS)} or a model version (m<yyyymmdd>T<hhmmss>Z-<8 hex>), "
                f"got {arm.variant!r}",
            )
        if not (math.isfinite(arm.share) and 0 < arm.share <= 1):
            raise ExperimentError(f"arms[{i}].share", f"must be in (0, 1], got {arm.share!r}")
    if len(set(names)) != len(names):
        raise ExperimentError("arms", f"arm names must differ: {', '.join(names)}")
    if (total := math.fsum(a.share for a in arms)) > 1 + 1e-9:
        raise ExperimentError("arms", f"shares sum to {total:g}: at most 1 (the rest of the users are in no arm)")


def model_versions(arms: Iterable[Arm]) -> list[str]:
    """The model versions ``arms`` name (not ``model`` nor ``most_pop``), sorted, once each."""
    return sorted({a.variant for a in arms if a.variant not in VARIANTS})


def check_versions(arms: tuple[Arm, ...], known: Collection[str]) -> None:
    """Raise :class:`ExperimentError` for an arm naming a model version that ``known`` (the store's) lacks."""
    for i, arm in enumerate(arms):
        if arm.variant not in VARIANTS and arm.variant not in known:
            have = ", ".join(sorted(known)[-5:]) or "none"
            raise ExperimentError(
                f"arms[{i}].variant", f"no model version {arm.variant!r} in the model store (newest: {have})"
            )


def check_name(name: str) -> None:
    if (problem := id_problem(name)) is not None:
        raise ExperimentError("name", problem)


def parse_arms(text: str) -> tuple[Arm, ...]:
    """``"control=model:0.5,pop=most_pop:0.5"`` as arms (the CLI's and the DAG's way to write them)."""
    arms = []
    for i, part in enumerate(p.strip() for p in text.split(",") if p.strip()):
        name, sep, rest = part.partition("=")
        variant, sep2, share = rest.partition(":")
        if not (sep and sep2):
            raise ExperimentError(f"arms[{i}]", f"write each arm as name=variant:share, got {part!r}")
        try:
            value = float(share)
        except ValueError:
            raise ExperimentError(f"arms[{i}].share", f"must be a number, got {share!r}") from None
        arms.append(Arm(name.strip(), variant.strip(), value))
    result = tuple(arms)
    check_arms(result)
    return result


def experiments_from_build(raw: list[dict[str, Any]] | None) -> list[Experiment]:
    """The experiments a snapshot's build.json carries (None: built before experiments; none)."""
    return msgspec.convert(raw or [], list[Experiment])
