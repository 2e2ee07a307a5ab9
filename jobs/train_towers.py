"""``python -m jobs.train_towers``: features, training, evaluation against baselines, the gate.

Steps, each logged: load the live lake and its temporal split; embed captions
(cached: a rerun encodes only new or changed videos); train the towers with
early stopping on validation recall; evaluate the model, the baselines and the
current model on the same test split; save a new model version with its
metrics and curves; promote it if it passes the quality gate.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from jobs.cli import settings_for
from rec_core.data.lake import LakeError
from rec_core.eval.evaluation import (
    LakeData,
    baseline_metrics,
    comparison,
    load_lake_data,
    markdown_table,
    prepare_loaded,
    two_tower_metrics,
    write_report,
)
from rec_core.eval.plots import training_curves_png
from rec_core.model.store import ModelStore, ModelStoreError, gate
from rec_core.model.training import TrainConfig, prepare, train
from rec_core.settings import Settings

log = logging.getLogger("jobs.train_towers")


def train_version(settings: Settings, config: TrainConfig | None = None, data: LakeData | None = None) -> str:
    """Train on the live lake's split and save a new model version (not yet evaluated or promoted)."""
    config = config or TrainConfig(embedding_dim=settings.embedding_dim, seed=settings.seed)
    data = data or load_lake_data(settings)
    log.info("lake %s (%s): %s", data.lake_version, data.dataset, data.split.summary())
    prepared = prepare(data.split, data.videos, data.interactions, data.follows, data.text(settings))
    result = train(prepared, config)
    run_config = {
        "train": config.to_dict(),
        "text_model": settings.text_model,
        "lake_version": data.lake_version,
        "dataset": data.dataset,
        "split": data.split.summary(),
        "best_epoch": result.best_epoch,
        "best_valid": result.best_valid,
        "train_seconds": round(result.seconds, 1),
    }
    store = ModelStore(settings.models_dir)
    version = store.new_version_name(run_config)
    metrics = comparison(data.dataset, data.split, {"two_tower": two_tower_metrics(result.model, prepared)})
    store.save(
        version,
        result.model,
        prepared.vocabs,
        prepared.stats,
        run_config,
        metrics,
        extra_files={
            "curves.png": training_curves_png(result.curves, f"{version} ({data.dataset})"),
            "curves.json": json.dumps(result.curves, indent=2).encode(),
        },
    )
    log.info("saved model version %s (best epoch %d, %.0fs)", version, result.best_epoch, result.seconds)
    return version


def evaluate_version(settings: Settings, version: str, data: LakeData | None = None) -> dict:
    """Add the baselines and the current model, on the same test split, to the version's metrics and report."""
    store = ModelStore(settings.models_dir)
    data = data or load_lake_data(settings)
    metrics = store.read_json(version, "metrics.json")
    models = metrics["models"]
    models.update(baseline_metrics(data.split))
    current = store.current()
    if current is not None and current != version:
        try:
            loaded = store.load(current)
            models["current_model"] = two_tower_metrics(loaded.model, prepare_loaded(loaded, data, settings))
            metrics["current_model_version"] = current
        except (ModelStoreError, KeyError, RuntimeError, ValueError) as exc:
            # A current model that cannot be evaluated on this data is no bar to clear; say so loudly.
            log.warning("current model %s could not be evaluated on this split: %s", current, exc)
    store.update_metrics(version, metrics)
    write_report(metrics, store.root / version / "report", f"Evaluation of {version} ({data.dataset})")
    log.info("evaluation of %s:\n%s", version, markdown_table(models))
    return metrics


def gate_version(settings: Settings, version: str, *, promote: bool = True) -> dict:
    """Apply the quality gate to an evaluated version; promote it if it passes and ``promote`` is set."""
    store = ModelStore(settings.models_dir)
    models = store.read_json(version, "metrics.json")["models"]
    if "most_pop" not in models:
        raise ModelStoreError(f"{version} has not been evaluated against the baselines; run evaluate_version first")
    decision = gate(models["two_tower"], models["most_pop"], models.get("current_model"))
    previous = store.current()
    if promote and decision.promote:
        store.promote(version)
        log.info("promoted %s to current: %s", version, "; ".join(decision.reasons))
    elif promote:
        log.warning("gate refused %s; current model stays %s: %s", version, previous, "; ".join(decision.reasons))
    return {
        "version": version,
        "passed": decision.promote,
        "promoted": store.current() == version,
        "current": store.current(),
        "reasons": decision.reasons,
    }


def train_towers(settings: Settings, config: TrainConfig | None = None, *, promote: bool = True) -> dict:
    """The whole stage: train, evaluate against baselines and the current model, gate."""
    started = time.monotonic()
    data = load_lake_data(settings)
    version = train_version(settings, config, data)
    metrics = evaluate_version(settings, version, data)
    decision = gate_version(settings, version, promote=promote)
    return {**decision, "seconds": round(time.monotonic() - started, 1), "metrics": metrics["models"]}


def build_parser() -> argparse.ArgumentParser:
    # Defaults from an instance: on a slots dataclass, TrainConfig.epochs is a slot descriptor, not 6.
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="data root (default: REC_DATA_DIR)")
    parser.add_argument("--epochs", type=_positive_int, default=defaults.epochs)
    parser.add_argument("--embedding-dim", type=_positive_int, help="default: REC_EMBEDDING_DIM")
    parser.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size)
    parser.add_argument("--no-logq", action="store_true", help="ablation: no log-Q popularity correction")
    parser.add_argument("--aux-weight", type=float, default=defaults.aux_weight, help="0 disables the MSE head")
    parser.add_argument(
        "--time-windows",
        type=_non_negative_int,
        default=defaults.time_windows,
        help="batches per time window (each batch from one window, videos as of its start); 0: random batches",
    )
    parser.add_argument("--no-promote", action="store_true", help="save the version but never make it current")
    parser.add_argument("--seed", type=int, help="default: REC_SEED")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_for(args)
    config = TrainConfig(
        embedding_dim=args.embedding_dim or settings.embedding_dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        logq=not args.no_logq,
        aux_weight=args.aux_weight,
        time_windows=args.time_windows,
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


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "0 or a positive integer")


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
