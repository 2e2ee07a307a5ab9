"""A generated world into the lake: one commit of all four tables, the planted truth beside it, and a summary.

The whole world lands as ONE lake commit, so readers never see videos of one world
with interactions of another. The truth goes to ``settings.paths.truth_dir``, tagged with the
lake version and table checksums it belongs to. The same seed gives byte-identical
tables, so a rerun leaves the lake version unchanged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rec_core.data.lake import lake_for
from rec_core.progress import Progress
from rec_core.settings import Settings
from rec_core.synthetic.generator import generate_world
from rec_core.synthetic.params import params_for
from rec_core.synthetic.truth import write_truth

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
        settings.paths.data_dir,
    )
    world = generate_world(params, seed)
    steps.advance()

    lake = lake_for(settings.paths, settings.batch)
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
        settings.paths.truth_dir,
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
        "lake_dir": (
            f"{settings.paths.data_uri.rstrip('/')}/lake"
            if settings.paths.object_store
            else str(settings.paths.lake_dir)
        ),
        "truth_dir": str(settings.paths.truth_dir),
    }
    log.info(
        "generate_data done in %.1fs: lake %s (%s), rows %s",
        summary["seconds"],
        version.name,
        "new" if summary["lake_changed"] else "unchanged",
        summary["rows"],
    )
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary of :func:`generate_data` as the lines the command prints."""
    rows = summary["rows"]
    width = max(len(name) for name in rows)
    lines = [
        f"lake {summary['lake_version']} ({'new' if summary['lake_changed'] else 'unchanged'}) "
        f"at {summary['lake_dir']}, seed {summary['seed']}, {summary['seconds']:.1f}s",
        *(f"  {name.ljust(width)}  {count:>12,}" for name, count in rows.items()),
        f"ground truth: {summary['truth_dir']}",
    ]
    return "\n".join(lines)
