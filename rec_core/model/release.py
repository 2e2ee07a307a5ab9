"""How a model version becomes current: caption features, training (the towers, then with ``REC_RANKER=on`` their
ranker), evaluation against the baselines on held-out time, and the quality gate on the stack the version serves.

Each step is a function of the settings (the ``train_towers`` DAG runs them as separate tasks,
``python -m jobs.train_towers`` and the pipeline's ``train_or_reuse`` stage in one call). A version the
gate refuses stays on disk for inspection and the current model stays current. A version is written whole, its
ranker included (:mod:`rec_core.model.ranking`), so none is ever listed, evaluated or promoted without it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass

import numpy as np

from rec_core.data.lake import lake_for
from rec_core.eval.baseline_cache import cached_baselines
from rec_core.eval.baselines import MostPop
from rec_core.eval.evaluation import (
    LakeData,
    baseline_metrics,
    comparison,
    load_lake_data,
    markdown_table,
    most_pop_user_metrics,
    prepare_loaded,
    two_tower_metrics,
    two_tower_user_metrics,
    write_report,
)
from rec_core.eval.plots import training_curves_png
from rec_core.eval.ranking_metrics import UserMetrics
from rec_core.model.gate import Evidence, gate, gate_evidence
from rec_core.model.ranker_windows import LabelWindows
from rec_core.model.ranking import (
    AS_TRAINED,
    AsOfTestStart,
    VersionRanker,
    has_ranker,
    rank_events,
    ranker_objectives,
    release_config,
    served_stack,
    train_version_ranker,
    version_stack_metrics,
)
from rec_core.model.retention import prune_versions
from rec_core.model.store import LoadedModel, ModelStore, ModelStoreError, model_store
from rec_core.model.text_features import (
    compact_cache,
    drop_unused_caches,
    embed_videos_text,
    encode_text_part,
    fold_shared_cache,
)
from rec_core.model.training import (
    StartFrom,
    TrainConfig,
    TrainingData,
    TrainResult,
    prepare,
    tower_config,
    train,
)
from rec_core.model.warm_start import COLD_BY_REQUEST, WarmStart, carried_state, choose_start
from rec_core.rank.events import RankEvents
from rec_core.rank.ranker import Ranker, RankerConfig
from rec_core.rank.retrieval import Towers
from rec_core.runtime import thread_budget
from rec_core.settings import Settings
from rec_core.storage.object_store import StoreError

log = logging.getLogger(__name__)


def build_features(settings: Settings, caption_shards: int = 1, shard: int = 0) -> dict:
    """Embed every video's caption and hashtags into the feature cache; a rerun encodes only new or changed text,
    and the cache sheds the texts no video carries any more once they pass its slack (``compact_cache``); on an
    object store, the files runs pushed to the shared cache are folded into one past a few (``fold_shared_cache``).

    With ``caption_shards`` > 1 this call encodes one part of the texts (``shard``): the stage is mapped over the
    parts, so several workers share a cold encoding."""
    videos = lake_for(settings.paths, settings.batch).read("videos", columns=["video_id", "caption", "hashtags"])
    if caption_shards == 1:
        _, stats = embed_videos_text(videos, settings.paths, settings.model)
    else:
        stats = encode_text_part(videos, settings.paths, settings.model, shard, caption_shards)
    # Any part may compact or fold: each keeps every live text, whichever part encodes it, and appends and pushes
    # made meanwhile are kept (the cache's lock, the store's manifest swap).
    return {
        "videos": videos.num_rows,
        "shard": shard,
        "shards": caption_shards,
        **dataclasses.asdict(stats),
        "cache_dropped": compact_cache(videos, settings.paths, settings.model),
        "store_files_folded": fold_shared_cache(videos, settings.paths, settings.model),
        "caches_removed": _drop_unused_caches(settings),
    }


def _drop_unused_caches(settings: Settings) -> list[str]:
    """The caches of text models that neither the setting nor a kept model version (a release prunes the rest)
    uses; none when the versions cannot be read: then any cache may be in use."""
    store = model_store(settings.paths)
    try:
        trained_with = [store.read_json(v, "config.json").get("text_model") for v in store.versions()]
    except (OSError, ValueError, ModelStoreError, StoreError) as exc:
        log.warning("could not tell which text models the kept versions use (%s); no cache removed", exc)
        return []
    return drop_unused_caches(settings.paths, [settings.model.text_model, *(m for m in trained_with if m)])


@dataclass(slots=True)
class TrainedTowers:
    """The towers of a new version, in memory, with everything its folder holds about them."""

    version: str
    result: TrainResult
    prepared: TrainingData
    run_config: dict
    metrics: dict
    files: dict[str, bytes]

    @property
    def towers(self) -> Towers:
        return Towers.from_training(self.result.model, self.prepared)


def train_version(
    settings: Settings,
    config: TrainConfig | None = None,
    data: LakeData | None = None,
    *,
    ranker_config: RankerConfig | None = None,
    events: RankEvents | None = None,
) -> str:
    """Train on the live lake's split and save a new model version (not yet evaluated or promoted): the towers,
    then, with the ranker on, their ranker, written as one folder. ``events``: ``data``'s
    :func:`~rec_core.model.ranking.rank_events`, where the caller has them."""
    data = data or release_data(settings)
    trained = _train_towers(settings, config, data)
    ranker = _train_ranker(settings, data, trained, ranker_config, events)
    _save(model_store(settings.paths), trained, ranker)
    return trained.version


def train_candidate(settings: Settings, *, epochs: int, embedding_dim: int) -> dict:
    """The train step of a model release: the towers of a new version with these epochs and tower size, saved as
    pending until :func:`train_candidate_ranker` completes it; ``{"version": ...}``."""
    config = TrainConfig(epochs=epochs, embedding_dim=embedding_dim, seed=settings.seed)
    data = release_data(settings)
    trained = _train_towers(settings, config, data)
    store = model_store(settings.paths)
    for stale in store.prune_pending():
        log.warning("removed pending version %s: its ranker step never finished", stale)
    _save(store, trained, None, pending=True)
    return {"version": trained.version}


def train_candidate_ranker(settings: Settings, version: str, *, ranker_config: RankerConfig | None = None) -> dict:
    """The ranker step of a model release: train the pending version's ranker (with the ranker on; nothing with
    it off) and write the version in place, whole. Rerun after it finished, it changes nothing."""
    store = model_store(settings.paths)
    if version in store.versions():
        log.info("model version %s is complete already", version)
    else:
        files, meta = {}, None
        if settings.model.ranker_on:
            loaded = store.load(version, pending=True)
            data = release_data(settings)
            _check_ranker_split(loaded, data)
            config = ranker_config or release_config(settings.seed)
            towers = _towers(loaded, data, settings)
            ranker = train_version_ranker(
                data,
                towers,
                config,
                objectives=ranker_objectives(settings.model),
                n_popular=settings.model.ranker_popular,
                windows=_label_windows(settings, TrainConfig(**loaded.config["train"])),
                workers=thread_budget(settings.model),
            )
            files, meta = ranker.files(), {"ranker": ranker.meta}
        store.complete(version, files, meta)
    return {"version": version, "has_ranker": has_ranker(store.folder(version))}


def _check_ranker_split(loaded: LoadedModel, data: LakeData) -> None:
    """The ranker's examples are honest only if its validation window starts where the towers' training ended or
    later; a lake that moved on between the two steps (an ingest) usually moved the cut later, which is fine."""
    trained_on = loaded.config.get("lake_version")
    if data.lake_version == trained_on:
        return
    towers_cut = dt.datetime.fromisoformat(loaded.config["split"]["valid_start"])
    if data.split.valid_start < towers_cut:
        raise ModelStoreError(
            f"lake moved from {trained_on} to {data.lake_version} since the towers of {loaded.version} were trained, "
            f"and its validation window now starts before their training cut ({towers_cut}): train again"
        )
    log.warning(
        "lake moved from %s to %s since the towers were trained: the ranker learns on its split",
        trained_on,
        data.lake_version,
    )


def _train_towers(settings: Settings, config: TrainConfig | None, data: LakeData) -> TrainedTowers:
    config = config or TrainConfig(embedding_dim=settings.model.embedding_dim, seed=settings.seed)
    log.info("lake %s (%s): %s", data.lake_version, data.dataset, data.split.summary())
    prepared = prepare(
        data.split, data.videos, data.interactions, data.follows, data.text(settings.paths, settings.model)
    )
    start, carry = _start(settings, data, prepared, config)
    result = train(prepared, config, carry)
    run_config = {
        "train": config.to_dict(),
        "text_model": settings.model.text_model,
        "lake_version": data.lake_version,
        "dataset": data.dataset,
        "split": data.split.summary(),
        "best_epoch": result.best_epoch,
        "best_valid": result.best_valid,
        "train_seconds": round(result.seconds, 1),
        "warm_start": {**start.to_dict(), "start_valid": result.start_valid},
    }
    version = model_store(settings.paths).new_version_name(run_config)
    metrics = comparison(data.dataset, data.split, {"two_tower": two_tower_metrics(result.model, prepared)})
    files = {
        "curves.png": training_curves_png(result.curves, f"{version} ({data.dataset})"),
        "curves.json": json.dumps(result.curves, indent=2).encode(),
    }
    log.info("trained the towers of %s (best epoch %g, %.0fs)", version, result.best_epoch, result.seconds)
    return TrainedTowers(version, result, prepared, run_config, metrics, files)


def _start(
    settings: Settings, data: LakeData, prepared: TrainingData, config: TrainConfig
) -> tuple[WarmStart, StartFrom | None]:
    """Whether the towers start from the current model's weights (rec_core.model.warm_start), and the weights."""
    if settings.model.warm_start == "off":
        return COLD_BY_REQUEST, None
    start, source = choose_start(
        model_store(settings.paths),
        lake_version=data.lake_version,
        text_model=settings.model.text_model,
        valid_start=data.split.valid_start,
        protocol=data.split.protocol,
        vocabs=prepared.vocabs,
        tower=tower_config(prepared, config),
    )
    log.info("%s start: %s", "warm" if start.warm else "cold", start.reason)
    if source is None:
        return start, None
    since = dt.datetime.fromisoformat(source.config["split"]["valid_start"])
    return start, StartFrom(
        lambda model: carried_state(source.model, source.vocabs, model, prepared.vocabs),
        int(since.timestamp() * 1000),
    )


def _train_ranker(
    settings: Settings, data: LakeData, trained: TrainedTowers, config: RankerConfig | None, events: RankEvents | None
) -> VersionRanker | None:
    if not settings.model.ranker_on:
        return None
    config = config or release_config(settings.seed)
    return train_version_ranker(
        data,
        trained.towers,
        config,
        objectives=ranker_objectives(settings.model),
        n_popular=settings.model.ranker_popular,
        events=events,
        windows=_label_windows(settings, TrainConfig(**trained.run_config["train"])),
        workers=thread_budget(settings.model),
    )


def _label_windows(settings: Settings, towers: TrainConfig) -> LabelWindows:
    """The label windows a release's ranker learns from (REC_RANKER_WINDOWS, REC_RANKER_MIN_USERS); an earlier
    window's towers train as the version's did (``towers``), from scratch."""
    return LabelWindows(settings.model.ranker_windows, settings.model.ranker_min_users, towers)


def _save(store: ModelStore, trained: TrainedTowers, ranker: VersionRanker | None, *, pending: bool = False) -> None:
    run_config, files = trained.run_config, trained.files
    if ranker is not None:
        run_config = {**run_config, "ranker": ranker.meta}
        files = {**files, **ranker.files()}
    result = trained.result
    store.save(
        trained.version,
        result.model,
        trained.prepared.vocabs,
        trained.prepared.stats,
        run_config,
        trained.metrics,
        extra_files=files,
        pending=pending,
    )
    what = "towers of pending" if pending else "model"
    log.info("saved %s version %s%s", what, trained.version, " with its ranker" if ranker is not None else "")


def _towers(loaded: LoadedModel, data: LakeData, settings: Settings) -> Towers:
    """A saved model's towers over this lake: its own vocabularies and scales, and the captions it was trained to
    read. (What :func:`prepare_loaded` would give them, without building the training inputs that a view as of
    another instant builds again: ten seconds per model at the large scale.)"""
    text = data.text(settings.paths, settings.model, loaded.config.get("text_model"))
    return Towers(loaded.model.eval(), loaded.vocabs, loaded.stats, np.ascontiguousarray(text, dtype=np.float32))


def evaluate_version(
    settings: Settings, version: str, data: LakeData | None = None, events: RankEvents | None = None
) -> dict:
    """Add the baselines (``REC_RELEASE_BASELINES``: MostPop, the gate's bar, or all three) and the current model,
    on the same test split, to the version's metrics and report (``events``: as :func:`train_version` takes them).

    With the ranker on, also the stack as the batch serves it: retrieval alone and with the version's ranker, as of
    ``test_start``, beside MostPop of that instant, and the current model's own stack measured the same way.
    """
    store = model_store(settings.paths)
    data = data or release_data(settings)
    metrics = store.read_json(version, "metrics.json")
    models = metrics["models"]
    models.update(_baselines(settings, data, settings.model.release_baselines))
    stack = served_stack(settings.model, has_ranker(store.folder(version)))
    loaded = store.load(version)
    instant = None
    if stack.as_of == "test_start":
        instant = AsOfTestStart.of(data, events)
        ranker = Ranker.load_if_present(store.folder(version))
        per_user = version_stack_metrics(instant, _towers(loaded, data, settings), ranker)
        metrics["served_stack"] = stack.to_dict()
    else:
        prepared = prepare_loaded(loaded, data, settings.paths, settings.model)
        per_user = {
            "two_tower": two_tower_user_metrics(loaded.model, prepared),
            "most_pop": most_pop_user_metrics(data.split),
        }
    models.update({name: values.summary() for name, values in per_user.items()})
    current, current_users = store.current(), None
    metrics["current_at_evaluation"] = current  # what the gate's comparison stands for (see gate_version)
    if current is not None and current != version:
        try:
            current_users, current_stack = _current_model_metrics(settings, store, current, data, instant)
            models["current_model"] = current_users.summary()
            metrics["current_model_version"] = current
            if instant is not None:
                metrics["current_model_stack"] = current_stack
        except (ModelStoreError, KeyError, RuntimeError, ValueError) as exc:
            # A current model that cannot be evaluated on this data is no bar to clear; say so loudly.
            log.warning("current model %s could not be evaluated on this split: %s", current, exc)
    evidence = gate_evidence(per_user[stack.metrics], per_user[stack.most_pop], current_users)
    metrics["gate_evidence"] = evidence.to_dict()
    store.update_metrics(version, metrics)
    title = f"Evaluation of {version} ({data.dataset})"
    store.write_into(version, "report", lambda folder: write_report(metrics, folder, title))
    log.info("evaluation of %s on %d test users:\n%s", version, evidence.users, markdown_table(models))
    return metrics


def release_data(settings: Settings) -> LakeData:
    """The live lake as a release trains and evaluates on it: its test part cut to the gate's user sample."""
    return load_lake_data(settings.paths, settings.batch).with_test_sample(settings.model.gate_users)


def _baselines(settings: Settings, data: LakeData, which: str) -> dict[str, dict[str, float]]:
    """The baselines ``which`` names (``all``, or ``most_pop`` alone) on ``data``'s test split, fitted once per split
    (rec_core.eval.baseline_cache)."""

    def measure() -> dict[str, dict[str, float]]:
        return baseline_metrics(data.split, models=None if which == "all" else [MostPop()])

    return cached_baselines(settings.paths.baselines_dir, data.split, measure, which=which)


def _current_model_metrics(
    settings: Settings, store: ModelStore, current: str, data: LakeData, instant: AsOfTestStart | None
) -> tuple[UserMetrics, str]:
    """The current model on this split, measured as the candidate's stack is: as trained (``instant`` None), or
    as of test_start with its own ranker when it has one."""
    loaded = store.load(current)
    if instant is None:
        prepared = prepare_loaded(loaded, data, settings.paths, settings.model)
        return two_tower_user_metrics(loaded.model, prepared), AS_TRAINED.name
    ranker = Ranker.load_if_present(store.folder(current))
    stack = served_stack(settings.model, ranker is not None)
    return instant.stack_metrics(_towers(loaded, data, settings), ranker), stack.name


def gate_version(settings: Settings, version: str, *, promote: bool = True) -> dict:
    """Apply the quality gate to the stack an evaluated version serves (with its ranker when it has one and the
    ranker is on); record which stack was gated in its metrics; promote it if it passes and ``promote`` is set."""
    store = model_store(settings.paths)
    metrics = store.read_json(version, "metrics.json")
    models = metrics["models"]
    if "most_pop" not in models:
        raise ModelStoreError(f"{version} has not been evaluated against the baselines; run evaluate_version first")
    stack = served_stack(settings.model, has_ranker(store.folder(version)))
    evaluated = metrics.get("served_stack", AS_TRAINED.to_dict())
    if evaluated != stack.to_dict():
        raise ModelStoreError(
            f"{version} was evaluated for serving {evaluated['name']} as of {evaluated['as_of']}, but with "
            f"REC_RANKER={settings.model.ranker} it serves {stack.name} as of {stack.as_of}: evaluate it again"
        )
    now, then = store.current(), metrics.get("current_at_evaluation", store.current())
    if promote and now not in (then, version):
        # A task cleared and run again later (or a release racing another): the comparison is against a model
        # that is no longer current, and promoting on it put a worse model over a better one.
        raise ModelStoreError(
            f"{version} was compared with the current model {then or '(none)'}, but {now} is current now: "
            "evaluate it again (clear evaluate_version and what follows) before gating it"
        )
    current = models.get("current_model")
    evidence = Evidence.from_dict(metrics["gate_evidence"]) if "gate_evidence" in metrics else None
    decision = gate(models[stack.metrics], models[stack.most_pop], current, evidence=evidence)
    metrics["gate"] = {
        "stack": stack.name,
        "as_of": stack.as_of,
        "compared": {
            "candidate": stack.metrics,
            "most_pop": stack.most_pop,
            "current_model": metrics.get("current_model_stack", AS_TRAINED.name) if current else None,
        },
        "users": evidence.users if evidence is not None else None,
        "passed": decision.promote,
        "reasons": decision.reasons,
    }
    store.update_metrics(version, metrics)
    previous = store.current()
    if promote and decision.promote:
        store.promote(version)
        log.info("promoted %s (%s) to current: %s", version, stack.name, "; ".join(decision.reasons))
    elif promote:
        log.warning(
            "gate refused %s (%s); current model stays %s: %s",
            version,
            stack.name,
            previous,
            "; ".join(decision.reasons),
        )
    return {
        "version": version,
        "stack": stack.name,
        "passed": decision.promote,
        "promoted": store.current() == version,
        "current": store.current(),
        "reasons": decision.reasons,
        "pruned": _prune(settings),
    }


def _prune(settings: Settings) -> list[str]:
    """The release's last step: drop the versions nothing needs any more. A failure leaves them for the next
    release and does not undo this one's decision."""
    try:
        return prune_versions(settings)
    except (OSError, ValueError, ModelStoreError) as exc:  # an unreadable build.json, a store that is down
        log.warning("model versions not pruned this time: %s", exc)
        return []


def train_towers(
    settings: Settings,
    config: TrainConfig | None = None,
    *,
    promote: bool = True,
    ranker_config: RankerConfig | None = None,
) -> dict:
    """The whole model release on one read of the lake: train (the towers, then their ranker with the ranker on),
    evaluate against baselines and the current model, gate."""
    started = time.monotonic()
    data = release_data(settings)
    events = rank_events(data) if settings.model.ranker_on else None  # the ranker's training and evaluation read them
    version = train_version(settings, config, data, ranker_config=ranker_config, events=events)
    metrics = evaluate_version(settings, version, data, events)
    decision = gate_version(settings, version, promote=promote)
    return {**decision, "seconds": round(time.monotonic() - started, 1), "metrics": metrics["models"]}


def choose_model(settings: Settings, *, retrain: bool, epochs: int | None = None) -> dict:
    """Train a candidate and gate it (``retrain``), or reuse the current model; returns the model to serve and
    whether this call promoted a new one."""
    store = model_store(settings.paths)
    decision = None
    if retrain or store.current() is None:
        config = TrainConfig(embedding_dim=settings.model.embedding_dim, seed=settings.seed)
        if epochs is not None:
            config = dataclasses.replace(config, epochs=epochs)
        decision = train_towers(settings, config)
        decision = {key: decision[key] for key in ("version", "stack", "passed", "promoted", "current", "reasons")}
    current = store.current()
    if current is None:
        if decision is None:
            raise ModelStoreError("no model passed the quality gate: none trained")
        # A first run has nothing to fall back on: say what the operator can do, not only that it failed.
        version = decision["version"]
        raise ModelStoreError(
            f"no model passed the quality gate and none is current, so there is nothing to serve: "
            f"{'; '.join(decision['reasons'])}. Read the comparison with `python -m jobs.models show {version}`; "
            f"to serve {version} anyway, `python -m jobs.models promote {version}` (the gate's manual override), "
            f"then run the pipeline again with retrain=false"
        )
    return {"model_version": current, "gate": decision, "promoted": bool(decision and decision["promoted"])}


def evaluate_model(settings: Settings, version: str | None = None, *, with_baselines: bool = True) -> dict:
    """A stored version (default: the current one) and, unless told not to, the baselines, on the live lake's
    held-out split; with the ranker on, also its stack as served (retrieval alone and with its ranker, as of
    test_start). Nothing is written."""
    store = model_store(settings.paths)
    loaded = store.load(version)
    data = load_lake_data(settings.paths, settings.batch)
    prepared = prepare_loaded(loaded, data, settings.paths, settings.model)
    models = {"two_tower": two_tower_metrics(loaded.model, prepared)}
    if settings.model.ranker_on:
        ranker = Ranker.load_if_present(store.folder(loaded.version))
        towers = Towers.from_training(loaded.model, prepared)
        stacks = version_stack_metrics(AsOfTestStart.of(data), towers, ranker)
        models.update({name: values.summary() for name, values in stacks.items()})
    if with_baselines:
        models.update(_baselines(settings, data, "all"))
    result = comparison(data.dataset, data.split, models)
    result["model_version"] = loaded.version
    return result
