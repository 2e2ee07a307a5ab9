"""The ranker's examples: the validation window, and earlier windows where that one holds too few users.

A ranker learns how far to trust the towers against what is watched now from the users of one validation window
(features as of its start, labels inside it: :mod:`rec_core.rank.examples`). A small lake's window holds few of
them: MovieLens-small's temporal split has about 60 users with a positive among their candidates, too few to learn
from or to choose between objectives (docs/quality.md). Such a lake adds earlier windows, each holding as many
interactions as the validation window (:meth:`~rec_core.data.split.Split.window_before`), latest first, until the
examples hold ``min_users`` users or ``most`` windows. Each earlier window gets towers of its own, trained from
scratch on everything before its start with the version's training configuration: its examples' tower scores must
come from towers that never saw the window, like the validation window's. (The version's own towers trained on
every earlier window; their scores there would teach the ranker to trust the towers far more than it should, and a
warm start from them would carry the same knowledge.) A lake whose validation window holds ``min_users`` users
trains nothing more.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from rec_core.eval.evaluation import LakeData
from rec_core.model.training import TrainConfig, train
from rec_core.rank.events import RankEvents
from rec_core.rank.examples import RankExamples, pooled, split_examples
from rec_core.rank.retrieval import Towers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LabelWindows:
    """How many label windows a ranker may learn from, and when it stops adding them."""

    most: int = 1  # 1: the validation window alone
    min_users: int = 0  # earlier windows are added while the examples hold fewer users than this
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)  # the earlier windows' towers

    def __post_init__(self) -> None:
        if self.most < 1 or self.min_users < 0:
            raise ValueError(f"need most >= 1 and min_users >= 0, got {self.most} and {self.min_users}")


def ranker_examples(
    data: LakeData,
    towers: Towers,
    windows: LabelWindows,
    n: int,
    max_users: int,
    seed: int,
    n_popular: int,
    events: RankEvents,
) -> RankExamples:
    """The examples of ``towers`` (trained on ``data``'s split before its validation window) on that window, pooled
    with earlier windows' as ``windows`` says (temporal splits only: under leave-last-out every user already has a
    window of their own). ``n``, ``max_users``, ``n_popular``: per window, as :func:`split_examples` takes them;
    ``events``: ``data``'s frames as :class:`RankEvents` (every window reads the same ones)."""
    split = data.split
    frames = (data.videos, data.interactions, data.follows)
    parts = [split_examples(towers, events, split, frames, n, max_users, seed, n_popular)]
    if split.protocol != "temporal":
        return parts[0]
    for back in range(1, windows.most):
        users = sum(len(part.groups) for part in parts)
        if users >= windows.min_users:
            break
        earlier = split.window_before(back)
        if earlier is None:
            log.info("ranker: no window %d before the validation window (too little history before it)", back)
            break
        log.info(
            "ranker: %d users with a positive, fewer than %d: adding the window [%s, %s) with towers trained before it",
            users,
            windows.min_users,
            earlier.valid_start,
            earlier.test_start,
        )
        window = dataclasses.replace(data, split=earlier)
        prepared = window.prepare(towers.text)
        model = train(prepared, windows.train).model
        parts.append(
            split_examples(
                Towers.from_training(model, prepared), events, earlier, frames, n, max_users, seed, n_popular
            )
        )
    return pooled(parts)
