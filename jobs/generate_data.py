"""``python -m jobs.generate_data``: generate the synthetic world and commit it to the lake.

The world (see :mod:`rec_core.synthetic.world`) lands as ONE lake commit of all four
tables, so readers never see videos of one world with interactions of another.
The planted ground truth goes to ``<data root>/truth/`` beside the lake, tagged
with the lake version and table checksums it belongs to. The same seed gives
byte-identical tables, so a rerun leaves the lake version unchanged.

    python -m jobs.generate_data [--scale tiny|default|large] [--users N --videos M] [--seed S] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from jobs.cli import settings_for
from rec_core.data.lake import lake_for
from rec_core.progress import Progress
from rec_core.settings import Settings
from rec_core.synthetic.world import SCALES, generate_world, params_for, write_truth

log = logging.getLogger(__name__)


def generate_data(
    settings: Settings,
    scale: str = "default",
    *,
    users: int | None = None,
    videos: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Generate a world of ``scale`` (optionally with other user / video counts) and commit it to the lake.

    Returns a JSON-friendly summary: scale, seed, lake version, whether the lake changed, rows per table, seconds.
    """
    seed = settings.seed if seed is None else seed
    if seed < 0:
        raise ValueError(f"seed must be at least 0, got {seed}")
    params = params_for(scale, users, videos)
    started = time.perf_counter()
    steps = Progress("generate_data (steps)", total=3, every_s=0.0, logger=log)
    log.info(
        "generating the %s world: %d users, %d videos, seed %d, into %s",
        scale,
        params.users,
        params.videos,
        seed,
        settings.data_dir,
    )
    world = generate_world(params, seed)
    steps.advance()

    lake = lake_for(settings)
    before = lake.current().name if lake.exists() else None
    source = f"generate_data scale={scale} users={params.users} videos={params.videos} seed={seed}"
    t_lake = time.perf_counter()
    version = lake.commit(world.tables, source=source)
    lake_s = time.perf_counter() - t_lake
    steps.advance()

    t_truth = time.perf_counter()
    tables = version.manifest["tables"]
    write_truth(
        world.truth,
        settings.truth_dir,
        {
            "scale": scale,
            "lake_version": version.name,
            "lake_sha256": {name: meta["sha256"] for name, meta in tables.items()},
        },
    )
    truth_s = time.perf_counter() - t_truth
    steps.advance()

    summary: dict[str, Any] = {
        "scale": scale,
        "seed": seed,
        "users": params.users,
        "videos": params.videos,
        "lake_version": version.name,
        "lake_changed": version.name != before,
        "rows": {name: int(meta["rows"]) for name, meta in tables.items()},
        "seconds": round(time.perf_counter() - started, 3),
        "timings": {
            **{k: round(v, 3) for k, v in world.timings.items()},
            "lake commit": round(lake_s, 3),
            "truth": round(truth_s, 3),
        },
        "lake_dir": str(settings.lake_dir),
        "truth_dir": str(settings.truth_dir),
    }
    log.info(
        "generate_data done in %.1fs: lake %s (%s), rows %s",
        summary["seconds"],
        version.name,
        "new" if summary["lake_changed"] else "unchanged",
        summary["rows"],
    )
    return summary


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.generate_data",
        description="Generate a synthetic short-video world with planted structure and commit it to the lake.",
    )
    sizes = ", ".join(f"{name}: {p.users:,} users / {p.videos:,} videos" for name, p in SCALES.items())
    parser.add_argument("--scale", choices=list(SCALES), default="default", help=f"world size ({sizes})")
    parser.add_argument("--users", type=_positive_int, help="number of users (overrides the scale's)")
    parser.add_argument("--videos", type=_positive_int, help="number of videos (overrides the scale's)")
    parser.add_argument("--seed", type=_non_negative_int, help="random seed (default: REC_SEED, 42)")
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR, ./data)")
    return parser


def format_summary(summary: dict[str, Any]) -> str:
    rows = summary["rows"]
    width = max(len(name) for name in rows)
    lines = [
        f"lake {summary['lake_version']} ({'new' if summary['lake_changed'] else 'unchanged'}) "
        f"at {summary['lake_dir']}, seed {summary['seed']}, {summary['seconds']:.1f}s",
        *(f"  {name.ljust(width)}  {count:>12,}" for name, count in rows.items()),
        f"ground truth: {summary['truth_dir']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_for(args)
    summary = generate_data(settings, args.scale, users=args.users, videos=args.videos, seed=args.seed)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
