"""Model versions are pruned at the end of a release, and never one that something still needs.

The store's bookkeeping is what is tested here: versions are folders with a config (how they load is tested
elsewhere), snapshots are real ``begin_snapshot`` folders, experiments go through the real registry, and the object
store is moto's S3 server. That a release prunes is checked on a real release in ``test_ranker_release.py``.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pytest

from jobs.models import main as models_main
from rec_core.experiments.registry import start, stop
from rec_core.experiments.spec import Arm
from rec_core.model.features import FeatureStats
from rec_core.model.retention import prune_versions, versions_in_use
from rec_core.model.store import PENDING, TRASH, ModelStore, model_store
from rec_core.model.towers import USER_DENSE, VIDEO_DENSE, TowerConfig, TwoTower
from rec_core.model.vocabs import Vocabs
from rec_core.settings import Settings
from rec_core.snapshot.layout import begin_snapshot
from rec_core.storage.object_store import open_store
from rec_core.storage.synced_folder import SyncedFolder

NAMES = [f"m2026120{day}T000000Z-{day:08x}" for day in range(1, 8)]  # oldest first


def _settings(root: Path, keep: int, env: dict[str, str] | None = None) -> Settings:
    return Settings.load({"REC_DATA_DIR": str(root), **(env or {}), "REC_MODEL_VERSIONS_KEEP": str(keep)})


def _store_with(settings: Settings, names: list[str]) -> ModelStore:
    store = model_store(settings.paths)
    for name in names:
        folder = store.root / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        if store.remote is not None:
            SyncedFolder(store.remote, f"models/{name}", folder).push()
    return store


def _snapshot(settings: Settings, model: str, others: tuple[str, ...] = (), minute: int = 0) -> None:
    begin_snapshot(
        settings.paths,
        model_version=model,
        lake_version="v00001",
        as_of=dt.datetime(2026, 12, 6, tzinfo=dt.UTC),
        video_shards=1,
        user_shards=1,
        embedding_dim=16,
        feed_length=10,
        versions={v: {"embedding_dim": 16, "model_files": []} for v in others},
        now=dt.datetime(2026, 12, 6, 0, minute, tzinfo=dt.UTC),
    )


def test_a_prune_keeps_the_newest_the_current_and_every_version_in_use(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "data", keep=2)
    store = _store_with(settings, NAMES)
    store.promote(NAMES[0])  # a rollback made the oldest current
    _snapshot(settings, NAMES[1], others=(NAMES[2],))  # built with one version, carrying another for an arm
    experiments = settings.paths.experiments_file
    start(experiments, "stopped", (Arm("a", NAMES[4], 0.5), Arm("b", "model", 0.5)), versions=NAMES)
    stop(experiments, "stopped")
    start(experiments, "running", (Arm("a", NAMES[3], 0.5), Arm("b", "model", 0.5)), versions=NAMES)

    assert versions_in_use(settings.paths) == {NAMES[1], NAMES[2], NAMES[3]}
    for name in (NAMES[4], NAMES[5]):  # `jobs.evaluate`'s reports
        (settings.paths.reports_dir / name).mkdir(parents=True)
        (settings.paths.reports_dir / name / "report.md").write_text("# Evaluation")
    assert prune_versions(settings) == [NAMES[4]]  # a stopped experiment pins nothing
    assert sorted(p.name for p in settings.paths.reports_dir.iterdir()) == [NAMES[5]], "a report goes with its version"
    assert store.versions() == [*NAMES[:4], *NAMES[5:]]
    assert not (store.root / NAMES[4]).exists() and not list(store.root.glob(f"{TRASH}*"))
    assert prune_versions(settings) == [], "a second prune finds nothing more to do"

    # The snapshot is gone (pruned itself) and the experiment stopped: their versions go at the next prune.
    for build in settings.paths.snapshots_dir.glob("*/build.json"):
        build.unlink()
    stop(experiments, "running")
    assert prune_versions(settings) == NAMES[1:4]
    assert store.versions() == [NAMES[0], *NAMES[5:]]
    assert store.current() == NAMES[0]


def test_a_prune_killed_midway_leaves_no_half_version_and_the_next_one_finishes(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "data", keep=1)
    store = _store_with(settings, NAMES[:3])
    store.promote(NAMES[2])
    # What a kill between the rename and the removal leaves: a trash folder, half removed.
    os.replace(store.root / NAMES[0], store.root / f"{TRASH}{NAMES[0]}")
    (store.root / f"{TRASH}{NAMES[0]}" / "config.json").unlink()
    assert store.versions() == NAMES[1:3], "a version on its way out is never listed, so never loaded"
    assert prune_versions(settings) == [NAMES[1]]
    assert sorted(p.name for p in store.root.iterdir()) == ["CURRENT", NAMES[2]]


def test_an_unreadable_snapshot_build_stops_the_prune_rather_than_guess(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "data", keep=1)
    store = _store_with(settings, NAMES[:3])
    _snapshot(settings, NAMES[0])
    build = next(settings.paths.snapshots_dir.glob("*/build.json"))
    build.write_text("{not json")
    with pytest.raises(ValueError):
        prune_versions(settings)
    assert store.versions() == NAMES[:3]


def test_the_cli_prunes_with_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path / "data", keep=3)
    store = _store_with(settings, NAMES[:5])
    store.promote(NAMES[4])
    monkeypatch.setenv("REC_MODEL_VERSIONS_KEEP", "2")
    assert models_main(["--data-dir", str(settings.paths.data_dir), "prune"]) == 0
    assert capsys.readouterr().out.strip() == f"pruned 3 model version(s): {', '.join(NAMES[:3])}"
    assert store.versions() == NAMES[3:5]


@pytest.mark.slow
def test_a_prune_on_the_object_store_deletes_the_versions_there(s3_env: dict[str, str], tmp_path: Path) -> None:
    settings = _settings(tmp_path / "data", keep=2, env=s3_env)
    store = _store_with(settings, NAMES[:4])
    store.promote(NAMES[0])
    assert prune_versions(settings) == [NAMES[1]]
    assert store.versions() == [NAMES[0], *NAMES[2:4]]
    assert not open_store(settings.paths).keys(f"models/{NAMES[1]}/"), "every object of the version is gone"
    # Another machine, which never held a copy, sees the same store.
    assert model_store(_settings(tmp_path / "other", keep=2, env=s3_env).paths).versions() == store.versions()


@pytest.mark.slow
def test_another_machines_copies_of_versions_pruned_from_the_store_go_at_its_next_load(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """The machine that prunes removes its own copies; every other machine's go when it next loads a model
    (a copy touched within a day stays: it may be that machine's save, not pushed yet)."""
    store_env = {k: v for k, v in s3_env.items() if k != "REC_DATA_DIR"}  # each machine its own disk
    trainer = _settings(tmp_path / "trainer", keep=1, env=store_env)
    store = _store_with(trainer, NAMES[:2])
    tiny = TwoTower(TowerConfig(embedding_dim=8, text_dim=8, n_items=5, n_creators=2, n_hashtags=2))
    vocabs = Vocabs(np.array(["a"], dtype=object), np.array(["x"], dtype=object), np.array(["t"], dtype=object))
    stats = FeatureStats.fit(np.zeros((2, len(VIDEO_DENSE))), np.zeros((2, len(USER_DENSE))))
    store.save(NAMES[2], tiny, vocabs, stats, {}, {})
    store.promote(NAMES[2])
    worker = model_store(_settings(tmp_path / "worker", keep=1, env=store_env).paths)
    for name in NAMES[:3]:
        worker.folder(name)  # pulled once, for an embedding shard, say
    (worker.root / f"{PENDING}{NAMES[5]}").mkdir()  # a pending version another machine completed since
    assert prune_versions(trainer) == NAMES[:2]

    held = sorted(p.name for p in worker.root.iterdir())
    assert held == sorted([f"{PENDING}{NAMES[5]}", *NAMES[:3]])
    worker.load()  # within a day of their last use: kept
    assert sorted(p.name for p in worker.root.iterdir()) == held
    two_days_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).timestamp()
    for name in held:
        os.utime(worker.root / name, (two_days_ago, two_days_ago))
    assert worker.load().version == NAMES[2]
    assert [p.name for p in worker.root.iterdir()] == [NAMES[2]]
