"""``python -m jobs.generate_data``: generate the synthetic world and commit it to the lake.

What lands where is :mod:`rec_core.synthetic.commit`; the world itself is
:mod:`rec_core.synthetic.generator`. The same seed gives byte-identical tables, so a
rerun leaves the lake version unchanged.

    python -m jobs.generate_data [--scale tiny|default|large] [--users N --videos M] [--seed S] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.cli import non_negative_int, positive_int, settings_for
from rec_core.synthetic.commit import format_summary, generate_data
from rec_core.synthetic.params import SCALES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.generate_data",
        description="Generate a synthetic short-video world with planted structure and commit it to the lake.",
    )
    sizes = ", ".join(f"{name}: {p.users:,} users / {p.videos:,} videos" for name, p in SCALES.items())
    parser.add_argument("--scale", choices=list(SCALES), default="default", help=f"world size ({sizes})")
    parser.add_argument("--users", type=positive_int, help="number of users (overrides the scale's)")
    parser.add_argument("--videos", type=positive_int, help="number of videos (overrides the scale's)")
    parser.add_argument("--seed", type=non_negative_int, help="random seed (default: REC_SEED, 42)")
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR, ./data)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_for(args)
    summary = generate_data(settings, args.scale, users=args.users, videos=args.videos, seed=args.seed)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
