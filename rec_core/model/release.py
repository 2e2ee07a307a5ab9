"""How a model version becomes current: caption features, training, evaluation against the baselines on
held-out time, and the quality gate.

Each step is a function of the settings (the ``train_towers`` DAG runs them as separate tasks,
``python -m jobs.train_towers`` and the pipeline's ``train_or_reuse`` stage in one call). A version the
gate refuses stays on disk for inspection and the current model stays current.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

from rec_core.data.lake import lake_for
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
from rec_core.model.text_features import embed_videos_text
from rec_core.model.training import TrainConfig, prepare, train
from rec_core.settings import Settings

log = logging.getLogger(__name__)


def build_features(settings: Settings) -> dict:
    """Embed every video's caption and hashtags into the feature cache; a rerun encodes only new or changed text."""
    videos = lake_for(settings.paths, settings.batch).read("videos", columns=["video_id", "caption", "hashtags"])
    _, stats = embed_videos_text(videos, settings.paths, settings.model)
    return {"videos": videos.num_rows, **dataclasses.asdict(stats)}


def train_version(settings: Settings, config: TrainConfig | None = None, data: LakeData | None = None) -> str:
    """Train on the live lake's split and save a new model version (not yet evaluated or promoted)."""
    config = config or TrainConfig(embedding_dim=settings.model.embedding_dim, seed=settings.seed)
    data = data or load_lake_data(settings.paths, settings.batch)
    log.info("lake %s (%s): %s", data.lake_version, data.dataset, data.split.summary())
    prepared = prepare(
        data.split, data.videos, data.interactions, data.follows, data.text(settings.paths, settings.model)
    )
    result = train(prepared, config)
    run_config = {
        "train": config.to_dict(),
        "text_model": settings.model.text_model,
        "lake_version": data.lake_version,
        "dataset": data.dataset,
        "split": data.split.summary(),
        "best_epoch": result.best_epoch,
        "best_valid": result.best_valid,
        "train_seconds": round(result.seconds, 1),
    }
    store = ModelStore(settings.paths.models_dir)
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


def train_candidate(settings: Settings, *, epochs: int, embedding_dim: int) -> dict:
    """The train step of a model release: a new version with these epochs and tower size; ``{"version": ...}``."""
    config = TrainConfig(epochs=epochs, embedding_dim=embedding_dim, seed=settings.seed)
    return {"version": train_version(settings, config)}


def evaluate_version(settings: Settings, version: str, data: LakeData | None = None) -> dict:
    """Add the baselines and the current model, on the same test split, to the version's metrics and report."""
    store = ModelStore(settings.paths.models_dir)
    data = data or load_lake_data(settings.paths, settings.batch)
    metrics = store.read_json(version, "metrics.json")
    models = metrics["models"]
    models.update(baseline_metrics(data.split))
    current = store.current()
    if current is not None and current != version:
        try:
            loaded = store.load(current)
            prepared = prepare_loaded(loaded, data, settings.paths, settings.model)
            models["current_model"] = two_tower_metrics(loaded.model, prepared)
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
    store = ModelStore(settings.paths.models_dir)
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
    """The whole model release on one read of the lake: train, evaluate against baselines and the current
    model, gate."""
    started = time.monotonic()
    data = load_lake_data(settings.paths, settings.batch)
    version = train_version(settings, config, data)
    metrics = evaluate_version(settings, version, data)
    decision = gate_version(settings, version, promote=promote)
    return {**decision, "seconds": round(time.monotonic() - started, 1), "metrics": metrics["models"]}


def choose_model(settings: Settings, *, retrain: bool, epochs: int | None = None) -> dict:
    """Train a candidate and gate it (``retrain``), or reuse the current model; returns the model to serve and
    whether this call promoted a new one."""
    store = ModelStore(settings.paths.models_dir)
    decision = None
    if retrain or store.current() is None:
        config = TrainConfig(embedding_dim=settings.model.embedding_dim, seed=settings.seed)
        if epochs is not None:
            config = dataclasses.replace(config, epochs=epochs)
        decision = train_towers(settings, config)
        decision = {key: decision[key] for key in ("version", "passed", "promoted", "current", "reasons")}
    current = store.current()
    if current is None:
        reasons = decision["reasons"] if decision else "none trained"
        raise ModelStoreError(f"no model passed the quality gate: {reasons}")
    return {"model_version": current, "gate": decision, "promoted": bool(decision and decision["promoted"])}


def evaluate_model(settings: Settings, version: str | None = None, *, with_baselines: bool = True) -> dict:
    """A stored version (default: the current one) and, unless told not to, the baselines, on the live lake's
    held-out split; nothing is written."""
    loaded = ModelStore(settings.paths.models_dir).load(version)
    data = load_lake_data(settings.paths, settings.batch)
    models = {
        "two_tower": two_tower_metrics(loaded.model, prepare_loaded(loaded, data, settings.paths, settings.model))
    }
    if with_baselines:
        models.update(baseline_metrics(data.split))
    result = comparison(data.dataset, data.split, models)
    result["model_version"] = loaded.version
    return result
