"""``make bench-warm-start``: a release on a grown lake, from the current model's weights against from scratch.

On a fresh data root: generate the world, commit it rewound (its newest 10% of interactions and 1% of videos left
out, ``rec_core.synthetic.rewind``), release a model on it (cold, promoted), then commit the whole world, as an
ingest would. On that grown lake, side by side in one run, two releases that are not promoted: ``REC_WARM_START=
off`` (from random weights, up to the usual epochs with early stopping) and ``on`` (from the first model, at most
``warm_epochs``). Reported for each: the towers' training time and epochs, the release's time, and the served
stack's test figures; then the warm stack minus the cold one per user on the same test users, with paired
bootstrap intervals (``rec_core.eval.intervals``), so "quality unchanged" is a measured statement, not a hope.

Slow (four trainings at the default scale, about 15 minutes on 2 cores): its own target, not ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from rec_core.data.lake import lake_for
from rec_core.eval.evaluation import prepare_loaded
from rec_core.eval.intervals import paired_difference
from rec_core.eval.ranking_metrics import UserMetrics
from rec_core.model.ranking import AsOfTestStart
from rec_core.model.release import release_data, train_towers
from rec_core.model.store import ModelStore
from rec_core.model.training import TrainConfig
from rec_core.progress import setup_logging
from rec_core.rank.ranker import Ranker
from rec_core.rank.retrieval import Towers
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data
from rec_core.synthetic.params import SCALES
from rec_core.synthetic.rewind import NEW_INTERACTIONS, NEW_VIDEOS, rewound, world_tables

log = logging.getLogger("bench.warm_start")
METRICS = ("recall@20", "recall@50", "ndcg@20", "cold_recall@50")


def grow(settings: Settings, scale: str) -> dict:
    """A world generated, committed rewound, released on (promoted), then committed whole; the first release."""
    generate_data(settings, scale)
    lake = lake_for(settings.paths, settings.batch)
    whole = world_tables(lake)
    lake.commit(rewound(whole, NEW_INTERACTIONS, NEW_VIDEOS), source=f"rewound by {NEW_INTERACTIONS:.0%}")
    first = train_towers(settings, TrainConfig(embedding_dim=settings.model.embedding_dim, seed=settings.seed))
    if not first["promoted"]:
        raise RuntimeError(f"the first release was not promoted, so nothing can start warm: {first['reasons']}")
    lake.commit(whole, source="growth")
    return first


def release(settings: Settings, warm: str) -> dict:
    started = time.perf_counter()
    config = TrainConfig(embedding_dim=settings.model.embedding_dim, seed=settings.seed)
    summary = train_towers(settings.override(warm_start=warm), config, promote=False)
    seconds = time.perf_counter() - started
    store = ModelStore(settings.paths.models_dir)
    record = store.read_json(summary["version"], "config.json")
    gated = store.read_json(summary["version"], "metrics.json")["gate"]["compared"]["candidate"]
    curves = store.read_json(summary["version"], "curves.json")
    return {
        "version": summary["version"],
        "warm_start": record["warm_start"],
        "train_seconds": record["train_seconds"],
        "epochs_run": len(curves["loss"]),
        "best_epoch": record["best_epoch"],
        "release_seconds": round(seconds, 1),
        "stack": summary["stack"],
        "metrics": summary["metrics"][gated],
    }


def per_user(settings: Settings, versions: list[str]) -> dict[str, UserMetrics]:
    """Each version's served stack (with its ranker, as of test_start), per user, on the release's test users."""
    store = ModelStore(settings.paths.models_dir)
    data = release_data(settings)
    instant = AsOfTestStart.of(data)
    out = {}
    for version in versions:
        ranker = Ranker.load_if_present(store.root / version)
        loaded = store.load(version)
        towers = Towers.from_training(loaded.model, prepare_loaded(loaded, data, settings.paths, settings.model))
        out[version] = instant.stack_metrics(towers, ranker)
    return out


def to_markdown(first: dict, runs: dict[str, dict], diffs: dict[str, str]) -> str:
    lines = [
        "| start | training s | epochs run (best) | release s | " + " | ".join(METRICS) + " |",
        "| --- | ---: | ---: | ---: |" + " ---: |" * len(METRICS),
    ]
    for name, run in runs.items():
        figures = " | ".join(f"{run['metrics'].get(m, float('nan')):.4f}" for m in METRICS)
        lines.append(
            f"| {name} | {run['train_seconds']:.0f} | {run['epochs_run']} ({run['best_epoch']:g}) | "
            f"{run['release_seconds']:.0f} | {figures} |"
        )
    lines.append("")
    lines.append(f"First release (cold, on the rewound lake): {first['version']}, {first['seconds']:.0f} s.")
    lines.append("Warm minus cold, per user, 95% paired bootstrap intervals:")
    lines += [f"- {metric}: {text}" for metric, text in diffs.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="default")
    parser.add_argument("--data", type=Path, help="data root to recreate (default: <REC_DATA_DIR>/bench/warm-SCALE)")
    args = parser.parse_args(argv)
    base = Settings.load()
    setup_logging(base.log_level)
    data_dir = (args.data or base.paths.data_dir / "bench" / f"warm-{args.scale}").resolve()
    if data_dir == base.paths.data_dir.resolve() or data_dir in base.paths.data_dir.resolve().parents:
        parser.error(f"--data {data_dir} would delete the data root; name a folder of its own")
    shutil.rmtree(data_dir, ignore_errors=True)
    settings = base.override(data_dir=data_dir)
    first = grow(settings, args.scale)
    runs = {"cold (REC_WARM_START=off)": release(settings, "off"), "warm (REC_WARM_START=on)": release(settings, "on")}
    cold, warm = (run["version"] for run in runs.values())
    users = per_user(settings, [cold, warm])
    diffs = {}
    for metric in METRICS:
        d = paired_difference(users[warm], users[cold], metric)
        diffs[metric] = f"{d.interval.signed()}, {d.verdict} ({len(users[warm].users)} users)"
    report = to_markdown(first, runs, diffs)
    out = data_dir / "warm_start.md"
    out.write_text(report + "\n")
    record = {"scale": args.scale, "first": first, "runs": runs, "warm_minus_cold": diffs}
    (data_dir / "warm_start.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"\n{report}\n\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
