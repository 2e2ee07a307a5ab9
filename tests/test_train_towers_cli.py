"""The training command's arguments (pure argument parsing)."""

from __future__ import annotations

import pytest

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


def test_ranker_flag_overrides_rec_ranker_only_when_given() -> None:
    parser = build_parser()
    assert parser.parse_args([]).ranker is None  # REC_RANKER decides
    assert parser.parse_args(["--ranker", "off"]).ranker == "off"
    with pytest.raises(SystemExit):
        parser.parse_args(["--ranker", "maybe"])
