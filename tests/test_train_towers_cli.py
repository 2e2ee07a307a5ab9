"""The training command's arguments (pure argument parsing)."""

from __future__ import annotations

from jobs.train_towers import build_parser
from rec_core.model.training import TrainConfig


def test_without_flags_the_command_uses_the_training_defaults() -> None:
    args = build_parser().parse_args([])
    defaults = TrainConfig()
    assert (args.epochs, args.batch_size, args.aux_weight) == (
        defaults.epochs,
        defaults.batch_size,
        defaults.aux_weight,
    )
    assert isinstance(args.epochs, int)
