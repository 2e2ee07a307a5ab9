"""``python -m jobs.train_towers``: training, evaluation against baselines, the gate (:mod:`rec_core.model.release`).

Steps, each logged: load the live lake and its temporal split; embed captions
(cached: a rerun encodes only new or changed videos); train the towers with
early stopping on validation recall, from the current model's weights when the lake has only
grown (``--warm-start``, default ``REC_WARM_START``); with the ranker on (``--ranker``, default
``REC_RANKER``), train the ranker on the validation window; save a new model
version with its metrics, curves and ranker; evaluate it, the baselines and the
current model on the same test split; promote it if the stack it serves passes
the quality gate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs.cli import non_negative_int, positive_int, settings_for
from rec_core.data.lake import LakeError
from rec_core.model.release import train_towers
from rec_core.model.training import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    # Defaults from an instance: on a slots dataclass, TrainConfig.epochs is a slot descriptor, not 6.
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    parser.add_argument("--embedding-dim", type=positive_int, help="default: REC_EMBEDDING_DIM")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--no-logq", action="store_true", help="ablation: no log-Q popularity correction")
    parser.add_argument("--aux-weight", type=float, default=defaults.aux_weight, help="0 disables the MSE head")
    parser.add_argument(
        "--time-windows",
        type=non_negative_int,
        default=defaults.time_windows,
        help="batches per time window (each batch from one window, videos as of its start); 0: random batches",
    )
    parser.add_argument(
        "--sparse-ids",
        choices=["auto", "on", "off"],
        default="auto",
        help="sparse gradients and a lazy Adam for the id tables; auto: from 100,000 id-table rows, where the "
        "sparse step overtakes the dense one (2.3x faster at 10x the default vocabulary, docs/performance.md)",
    )
    parser.add_argument(
        "--ranker", choices=["on", "off"], help="train and gate the ranking stage with the towers (default: REC_RANKER)"
    )
    parser.add_argument(
        "--warm-start",
        choices=["on", "off"],
        help="start from the current model when the lake has only grown (default: REC_WARM_START)",
    )
    parser.add_argument("--no-promote", action="store_true", help="save the version but never make it current")
    parser.add_argument("--seed", type=int, help="default: REC_SEED")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_for(args)
    for name in ("ranker", "warm_start"):
        if getattr(args, name) is not None:
            settings = settings.override(**{name: getattr(args, name)})
    config = TrainConfig(
        embedding_dim=args.embedding_dim or settings.model.embedding_dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        logq=not args.no_logq,
        aux_weight=args.aux_weight,
        time_windows=args.time_windows,
        sparse_ids=None if args.sparse_ids == "auto" else args.sparse_ids == "on",
        seed=settings.seed if args.seed is None else args.seed,
    )
    try:
        summary = train_towers(settings, config, promote=not args.no_promote)
    except (LakeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
