"""A model version carries its ranker: trained after the towers on the same split, saved in the version's folder
with its record, evaluated and gated as the stack the version serves; REC_RANKER=off releases retrieval alone,
as before the ranking stage. Real training, real LightGBM, the tiny world; small configs to keep it quick."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from rec_core.eval.evaluation import load_lake_data, prepare_loaded
from rec_core.eval.ranking_metrics import evaluate_scores, in_rows, user_metrics, user_metrics_many
from rec_core.model.ranking import MOST_POP_AT_TEST, RANKED, RETRIEVAL, AsOfTestStart, PopularityAsOf
from rec_core.model.release import (
    evaluate_version,
    gate_version,
    train_candidate,
    train_candidate_ranker,
    train_towers,
)
from rec_core.model.store import ModelStore, ModelStoreError
from rec_core.model.training import TrainConfig
from rec_core.rank.candidates import DEFAULT_CANDIDATES
from rec_core.rank.ranker import META_FILE, MODEL_FILE, OBJECTIVES, Ranker, RankerConfig
from rec_core.rank.retrieval import Towers
from rec_core.rank.scoring import RankedRetrieval, evaluated_stacks
from rec_core.settings import Settings
from rec_core.synthetic.commit import generate_data

pytestmark = pytest.mark.slow

TOWERS = TrainConfig(epochs=2, embedding_dim=32, batch_size=256, seed=3)
FAST = RankerConfig(max_rounds=60, early_stopping=15, min_data_in_leaf=20, folds=3, cv_groups=0)
# What a version folder held before the ranking stage: REC_RANKER=off must write exactly this.
TOWER_FILES = {
    "weights.safetensors",
    "config.json",
    "feature_stats.json",
    "metrics.json",
    "curves.png",
    "curves.json",
    "vocab_items.parquet",
    "vocab_creators.parquet",
    "vocab_hashtags.parquet",
    "report",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny lake and its caption cache, never trained on: copy it (:func:`_copy`) to train."""
    data = tmp_path_factory.mktemp("release-world") / "data"
    settings = Settings.load({}).override(data_dir=data)
    generate_data(settings, "tiny", seed=11)
    load_lake_data(settings.paths, settings.batch).text(settings.paths, settings.model)  # fills the cache
    return data


@pytest.fixture(scope="module")
def ranked(world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict]:
    """One release with the ranker on (the default) and both objectives cross-validated (REC_RANKER_OBJECTIVE=auto,
    so its record compares them): its settings and train_towers' summary."""
    settings = _copy(world, tmp_path_factory.mktemp("ranked") / "data", ranker_objective="auto")
    assert settings.model.ranker_on
    return settings, train_towers(settings, TOWERS, ranker_config=FAST)


def _copy(source: Path, data: Path, **overrides: str) -> Settings:
    shutil.copytree(source, data)
    return Settings.load({}).override(data_dir=data, **overrides)


def test_a_version_with_the_ranker_on_carries_it_loadable_with_its_record(ranked: tuple[Settings, dict]) -> None:
    settings, summary = ranked
    store = ModelStore(settings.paths.models_dir)
    version = summary["version"]
    folder = store.root / version
    assert {MODEL_FILE, META_FILE} | TOWER_FILES == {p.name for p in folder.iterdir()}
    assert not list(store.root.glob(".*")), "nothing half-written is left beside the versions"

    record = store.read_json(version, "config.json")["ranker"]
    assert record["has_ranker"] is True and record["objective"] in OBJECTIVES
    assert record["n_candidates"] == DEFAULT_CANDIDATES and record["train_seconds"] > 0
    assert record["n_popular"] == settings.model.ranker_popular  # the second source, as REC_RANKER_POPULAR says
    assert set(record["cv"]) == set(OBJECTIVES)  # the validation window's out-of-fold figures of both objectives
    chosen = record["cv"][record["objective"]]
    assert chosen["ndcg"] == max(cv["ndcg"] for cv in record["cv"].values())
    assert 0 < chosen["tower_ndcg"] < 1 and record["examples"]["users"] >= FAST.folds
    split = store.read_json(version, "config.json")["split"]
    assert record["examples"]["features_as_of_ms"] < record["examples"]["labels_until_ms"]
    # The tiny lake's validation window holds fewer users than REC_RANKER_MIN_USERS: earlier windows were added.
    assert 1 < record["examples"]["windows"] <= settings.model.ranker_windows
    assert split["valid_start"] < split["test_start"]

    # The saved ranker is the one that was evaluated: loaded from the folder, it scores the test split the same.
    ranker = Ranker.load_if_present(folder)
    assert ranker is not None and ranker.config.objective == record["objective"]
    assert (ranker.n_candidates, ranker.n_popular) == (record["n_candidates"], record["n_popular"])
    data = load_lake_data(settings.paths, settings.batch)
    loaded = store.load(version)
    towers = Towers.from_training(loaded.model, prepare_loaded(loaded, data, settings.paths, settings.model))
    instant = AsOfTestStart.of(data)
    view = instant.view(towers)
    again = evaluate_scores(RankedRetrieval(view, instant.state, ranker, ranker.n_candidates), data.split, on="test")
    models = store.read_json(version, "metrics.json")["models"]
    assert again["recall@50"] == pytest.approx(models[RANKED]["recall@50"], abs=1e-9)
    assert again["ndcg@20"] == pytest.approx(models[RANKED]["ndcg@20"], abs=1e-9)


def _released_stack(settings: Settings, summary: dict) -> tuple[Towers, Ranker, AsOfTestStart]:
    """The released version's towers and ranker, and the lake as of its test start."""
    store = ModelStore(settings.paths.models_dir)
    data = load_lake_data(settings.paths, settings.batch)
    loaded = store.load(summary["version"])
    towers = Towers.from_training(loaded.model, prepare_loaded(loaded, data, settings.paths, settings.model))
    ranker = Ranker.load_if_present(store.root / summary["version"])
    assert ranker is not None
    return towers, ranker, AsOfTestStart.of(data)


def test_the_stacks_read_their_own_top_and_find_what_ranking_the_full_catalogue_finds(
    ranked: tuple[Settings, dict],
) -> None:
    """The release evaluates retrieval, retrieval + ranker and MostPop together, each taking its top 50 from its own
    list (one candidate block per batch for both stacks); ranking each one's full-catalogue scores gives every user
    the very same figures."""
    towers, ranker, instant = _released_stack(*ranked)
    assert ranker.n_popular > 0
    together = instant.stacks_metrics(towers, ranker)
    state, users = instant.state, instant.targets.users
    view = instant.view(towers)
    stacks = evaluated_stacks(view, state, ranker)
    scorers = {RETRIEVAL: stacks["retrieval"], RANKED: stacks["ranked"], MOST_POP_AT_TEST: PopularityAsOf.of(state)}
    for name, scorer in scorers.items():
        top = scorer.top(users, 50)
        assert top is not None, f"{name} lists 50 videos for every test user"
        assert not in_rows(instant.targets.history, users, top).any(), f"{name}'s list is used: no training item"
        full = user_metrics(lambda batch, s=scorer: s(batch), instant.targets)  # a plain ScoreFn: full catalogue
        for key, values in full.values.items():
            np.testing.assert_array_equal(together[name].values[key], values, err_msg=f"{name} {key}")
        assert together[name].coverage == full.coverage


def test_stacks_over_many_batches_of_shared_blocks_equal_each_stack_ranked_alone(
    ranked: tuple[Settings, dict],
) -> None:
    """The two stacks share one candidate block a batch (CandidateBlocks keeps the last and builds the next): over
    many small batches, so that the kept block is replaced again and again, each stack's per-user figures are those
    of the same stack built on its own."""
    towers, ranker, instant = _released_stack(*ranked)
    view, targets = instant.view(towers), instant.targets
    stacks = evaluated_stacks(view, instant.state, ranker)
    together = user_metrics_many({RETRIEVAL: stacks["retrieval"], RANKED: stacks["ranked"]}, targets, batch_size=7)
    assert len(targets.users) > 3 * 7
    for name, alone in (
        (RETRIEVAL, RankedRetrieval(view, instant.state, None, ranker.n_candidates)),
        (RANKED, RankedRetrieval(view, instant.state, ranker, ranker.n_candidates)),
    ):
        expected = user_metrics(alone, targets, batch_size=7)
        for key, values in expected.values.items():
            np.testing.assert_array_equal(together[name].values[key], values, err_msg=f"{name} {key}")


def test_the_evaluation_reports_both_stacks_and_the_gate_judges_the_served_one(ranked: tuple[Settings, dict]) -> None:
    settings, summary = ranked
    store = ModelStore(settings.paths.models_dir)
    metrics = store.read_json(summary["version"], "metrics.json")
    models = metrics["models"]
    assert {"two_tower", RETRIEVAL, RANKED, "most_pop", MOST_POP_AT_TEST} <= set(models)
    assert models[RANKED]["recall@50"] != models[RETRIEVAL]["recall@50"]  # the ranker reordered something
    assert summary["stack"] == RANKED and summary["promoted"] and store.current() == summary["version"]
    assert metrics["gate"]["stack"] == RANKED and metrics["gate"]["as_of"] == "test_start"
    assert metrics["gate"]["compared"] == {"candidate": RANKED, "most_pop": MOST_POP_AT_TEST, "current_model": None}
    # The reasons quote the figures the gate compared: the stack's, and MostPop's of the same instant.
    ours, pop = models[RANKED]["recall@50"], models[MOST_POP_AT_TEST]["recall@50"]
    assert summary["reasons"][0] == f"recall@50 {ours:.4f} vs MostPop {pop:.4f}, no current model"
    # ... and the paired interval over the test users both were evaluated on.
    evidence = metrics["gate_evidence"]
    assert evidence["users"] == models[RANKED]["users"] == models[MOST_POP_AT_TEST]["users"] == metrics["gate"]["users"]
    assert evidence["vs_most_pop"]["estimate"] == pytest.approx(ours - pop, abs=1e-9)
    assert evidence["vs_most_pop"]["low"] > 0 and evidence["vs_current"] is None
    assert summary["reasons"][1].startswith(f"vs MostPop difference {ours - pop:+.4f}, 95% interval")


def test_the_gate_reads_the_stack_metrics_and_refuses_a_stale_evaluation(
    ranked: tuple[Settings, dict], tmp_path: Path
) -> None:
    """Doctor the figures of the served stack only: the gate's answer follows them, not the towers' ones."""
    source, summary = ranked
    settings = _copy(source.paths.data_dir, tmp_path / "data")
    store, version = ModelStore(settings.paths.models_dir), summary["version"]
    metrics = store.read_json(version, "metrics.json")
    pop = metrics["models"][MOST_POP_AT_TEST]["recall@50"]
    metrics["models"][RANKED]["recall@50"] = 1.05 * pop  # under the 1.1x bar; retrieval alone still clears it
    assert metrics["models"][RETRIEVAL]["recall@50"] > 1.1 * pop and metrics["models"]["two_tower"]["recall@50"] > pop
    store.update_metrics(version, metrics)
    refused = gate_version(settings, version, promote=False)
    assert not refused["passed"] and refused["stack"] == RANKED
    assert f"recall@50 {1.05 * pop:.4f} is not 1.10x MostPop's {pop:.4f}" in refused["reasons"]
    assert store.read_json(version, "metrics.json")["gate"]["passed"] is False

    # The same evaluation cannot be gated for another stack: REC_RANKER=off serves the towers as trained.
    with pytest.raises(ModelStoreError, match="evaluate it again"):
        gate_version(settings.override(ranker="off"), version)


def test_a_gate_run_again_after_another_model_became_current_refuses_to_promote(
    ranked: tuple[Settings, dict], tmp_path: Path
) -> None:
    """An old train_towers run's quality_gate cleared in the Airflow UI promoted its version over a newer, better
    one: its evaluation compared it with the model current back then."""
    source, summary = ranked
    settings = _copy(source.paths.data_dir, tmp_path / "data")
    store, version = ModelStore(settings.paths.models_dir), summary["version"]
    assert store.read_json(version, "metrics.json")["current_at_evaluation"] is None  # the first release
    newer = "m29990101T000000Z-00000001"  # a later release, promoted since
    shutil.copytree(store.root / version, store.root / newer)
    store.promote(newer)
    with pytest.raises(ModelStoreError, match=f"{newer} is current now: evaluate it again"):
        gate_version(settings, version)
    assert store.current() == newer
    assert gate_version(settings, version, promote=False)["current"] == newer  # a look, without promoting, is fine


def test_with_the_ranker_off_a_version_carries_none_and_the_gate_says_retrieval(world: Path, tmp_path: Path) -> None:
    settings = _copy(world, tmp_path / "data", ranker="off")
    summary = train_towers(settings, TOWERS, ranker_config=FAST)
    store = ModelStore(settings.paths.models_dir)
    folder = store.root / summary["version"]
    assert {p.name for p in folder.iterdir()} == TOWER_FILES and Ranker.load_if_present(folder) is None
    assert "ranker" not in store.read_json(summary["version"], "config.json")
    metrics = store.read_json(summary["version"], "metrics.json")
    # Today's evaluation: the towers as trained against the baselines, nothing of the ranking stage.
    assert set(metrics["models"]) == {"two_tower", "most_pop"}
    assert "served_stack" not in metrics
    assert summary["stack"] == RETRIEVAL and metrics["gate"]["stack"] == RETRIEVAL
    assert metrics["gate"]["compared"]["candidate"] == "two_tower" and metrics["gate"]["as_of"] == "valid_start"
    ours = metrics["models"]["two_tower"]["recall@50"]
    assert summary["reasons"][0].startswith(f"recall@50 {ours:.4f} vs MostPop")


def test_the_two_step_release_never_shows_a_version_without_its_ranker(
    ranked: tuple[Settings, dict], tmp_path: Path
) -> None:
    """The train_towers DAG's steps: the towers wait as a pending version that nothing lists, evaluates or promotes;
    train_ranker writes the version whole; a rerun changes nothing. Then the candidate is evaluated against the
    current model's own stack (which has a ranker) and gated."""
    source, first = ranked
    settings = _copy(source.paths.data_dir, tmp_path / "data")
    store = ModelStore(settings.paths.models_dir)
    version = train_candidate(settings, epochs=1, embedding_dim=16)["version"]
    assert version not in store.versions() and (store.root / f".pending-{version}" / "weights.safetensors").is_file()
    with pytest.raises(ModelStoreError):
        store.promote(version)
    with pytest.raises(ModelStoreError):
        evaluate_version(settings, version)

    done = train_candidate_ranker(settings, version, ranker_config=FAST)
    assert done == {"version": version, "has_ranker": True} and version in store.versions()
    assert not (store.root / f".pending-{version}").exists()
    files = {p.name: p.read_bytes() for p in (store.root / version).iterdir() if p.is_file()}
    assert train_candidate_ranker(settings, version, ranker_config=FAST) == done  # a retried task
    assert files == {p.name: p.read_bytes() for p in (store.root / version).iterdir() if p.is_file()}
    config = store.read_json(version, "config.json")
    assert config["ranker"]["lake_version"] == config["lake_version"]  # the towers' lake, so the towers' split

    metrics = evaluate_version(settings, version)
    assert metrics["current_model_version"] == first["version"] and metrics["current_model_stack"] == RANKED
    # The current model measured as its own stack: exactly what its release measured on this same lake.
    assert metrics["models"]["current_model"]["recall@50"] == pytest.approx(
        first["metrics"][RANKED]["recall@50"], abs=1e-9
    )
    # A release ends by pruning what nothing needs: an old version (a real one's files) goes; the current model
    # and the newest stay, whatever REC_MODEL_VERSIONS_KEEP says.
    old = "m20000101T000000Z-00000000"
    shutil.copytree(store.root / first["version"], store.root / old)
    decision = gate_version(settings.override(model_versions_keep=1), version, promote=False)
    assert decision["pruned"] == [old] and store.versions() == sorted([first["version"], version])
    assert decision["stack"] == RANKED
    assert store.read_json(version, "metrics.json")["gate"]["compared"]["current_model"] == RANKED
    current = metrics["models"]["current_model"]["recall@50"]
    evidence = metrics["gate_evidence"]
    expected = (
        metrics["models"][RANKED]["recall@50"]
        >= max(1.1 * metrics["models"][MOST_POP_AT_TEST]["recall@50"], 0.95 * current)
        and evidence["vs_most_pop"]["low"] > 0
        and evidence["vs_current"]["high"] >= 0
    )
    assert decision["passed"] is expected, (decision, current)


def test_a_pending_version_left_behind_is_pruned_once_stale(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    stale = store.root / ".pending-m20000101T000000Z-00000000"
    fresh = store.root / ".pending-m20990101T000000Z-11111111"
    killed_save = store.root / ".staging-m20000101T000000Z-22222222"  # a save killed mid-write
    saving = store.root / ".staging-m20990101T000000Z-33333333"  # a save in progress
    for folder in (stale, fresh, killed_save, saving):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({}))
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    os.utime(killed_save, (1_000_000_000, 1_000_000_000))
    assert store.prune_pending() == ["m20000101T000000Z-00000000"]
    assert not stale.exists() and fresh.is_dir() and store.versions() == []
    assert not killed_save.exists() and saving.is_dir()
    with pytest.raises(ModelStoreError, match="no pending model version"):
        store.complete("m20000101T000000Z-00000000", {})
