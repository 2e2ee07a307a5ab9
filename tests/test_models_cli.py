"""``python -m jobs.models`` (list / show / promote) on two real model versions, and retraining determinism.

Both versions are real trainings (1 epoch, small towers) with the same seed on the tiny lake of the session's
``api_world``, copied without its models: so they are also the determinism check, and the copy brings the
caption cache, so nothing is encoded again. The older one carries its ranker, the newer one was trained with
REC_RANKER=off: their towers' files must be the same byte for byte, the ranker's files the only difference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jobs.models import main as models_main
from rec_core.eval.evaluation import load_lake_data
from rec_core.model.release import train_version
from rec_core.model.store import ModelStore
from rec_core.model.training import TrainConfig
from rec_core.rank.ranker import META_FILE, MODEL_FILE, RankerConfig
from rec_core.settings import Settings
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# Small and short on purpose: what is checked here is bookkeeping and reproducibility, not quality.
CONFIG = TrainConfig(epochs=1, embedding_dim=16, batch_size=256, seed=13)
RANKER = RankerConfig(max_rounds=40, early_stopping=10, min_data_in_leaf=20, folds=3, cv_groups=0, seed=13)


@dataclasses.dataclass(frozen=True, slots=True)
class Versions:
    settings: Settings
    older: str
    newer: str

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.settings.paths.models_dir)


@pytest.fixture(scope="module")
def versions(api_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Versions:
    data = tmp_path_factory.mktemp("models-cli") / "data"
    pristine = api_world.parent / "pristine"
    for part in ("lake", "features"):
        shutil.copytree(pristine / part, data / part)
    settings = Settings.load({}).override(data_dir=data)
    lake = load_lake_data(settings.paths, settings.batch)
    older = train_version(settings, CONFIG, lake, ranker_config=RANKER)  # with its ranker (REC_RANKER's default)
    newer = train_version(settings.override(ranker="off"), CONFIG, lake)  # retrieval alone
    assert older != newer
    return Versions(settings, older, newer)


def _cli(versions: Versions, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``jobs.models.main`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = models_main(["--data-dir", str(versions.settings.paths.data_dir), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _listed(out: str) -> dict[str, bool]:
    """version -> starred as current, from the ``list`` table."""
    rows = [_cells(line) for line in out.splitlines() if line.startswith("| m")]
    return {cells[0]: cells[1] == "*" for cells in rows}


def _column(out: str, name: str) -> dict[str, str]:
    """version -> its cell in the column ``name`` of the ``list`` table."""
    rows = [_cells(line) for line in out.splitlines() if line.startswith("| ")]
    return {cells[0]: cells[rows[0].index(name)] for cells in rows if cells[0].startswith("m")}


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("|")[1:-1]]


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_data_trains_identical_weights_and_metrics(versions: Versions) -> None:
    store = versions.store
    older = load_file(str(store.root / versions.older / "weights.safetensors"))
    newer = load_file(str(store.root / versions.newer / "weights.safetensors"))
    assert older.keys() == newer.keys() and len(older) > 10
    differing = {
        name: float((older[name] - newer[name]).abs().max())
        for name in older
        if not torch.equal(older[name], newer[name])
    }
    assert not differing, f"tensors that differ between two same-seed trainings (max abs difference): {differing}"

    for name in ("metrics.json", "curves.json", "feature_stats.json"):
        assert (store.root / versions.older / name).read_bytes() == (store.root / versions.newer / name).read_bytes(), (
            name
        )
    config_old, config_new = (store.read_json(v, "config.json") for v in (versions.older, versions.newer))
    assert (config_old["best_epoch"], config_old["best_valid"]) == (config_new["best_epoch"], config_new["best_valid"])
    assert config_old["train"] == config_new["train"] == CONFIG.to_dict()
    recall = store.read_json(versions.older, "metrics.json")["models"]["two_tower"]["recall@50"]
    assert 0 < recall < 1, recall  # a real evaluation, not an empty one that would compare equal trivially

    # The ranker is an addition to the version, not a change to its towers.
    old_files = {p.name for p in (store.root / versions.older).iterdir()}
    new_files = {p.name for p in (store.root / versions.newer).iterdir()}
    assert old_files - new_files == {MODEL_FILE, META_FILE} and new_files <= old_files
    assert config_old["ranker"]["has_ranker"] is True and "ranker" not in config_new
    assert {k: v for k, v in config_old.items() if k not in ("ranker", "version", "train_seconds")} == {
        k: v for k, v in config_new.items() if k not in ("version", "train_seconds")
    }


def test_models_cli_lists_shows_and_promotes_the_older_version(
    versions: Versions, capsys: pytest.CaptureFixture[str]
) -> None:
    store, older, newer = versions.store, versions.older, versions.newer
    older_files = _tree_digest(store.root / older)

    code, out, _ = _cli(versions, capsys, "list")
    assert code == 0 and _listed(out) == {older: False, newer: False}, out
    assert _column(out, "has_ranker") == {older: "yes", newer: "no"}, out
    code, _, err = _cli(versions, capsys, "show")  # no current model and no version named
    assert code == 2 and "no current model" in err

    # The real entry point, in its own process: promote the newer one first.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.models", "--data-dir", str(versions.settings.paths.data_dir), "promote", newer],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{newer} is now current"
    assert (store.root / "CURRENT").read_text() == f"{newer}\n"

    # Back to the older one (a rollback): only the pointer moves.
    code, out, _ = _cli(versions, capsys, "promote", older)
    assert code == 0 and out.strip() == f"{older} is now current"
    assert store.current() == older and (store.root / "CURRENT").read_text() == f"{older}\n"
    assert store.versions() == sorted([older, newer]), "promotion neither adds nor removes a version"
    assert _tree_digest(store.root / older) == older_files, "promotion must not touch the version's files"
    code, out, _ = _cli(versions, capsys, "list")
    assert code == 0 and _listed(out) == {older: True, newer: False}, out

    code, out, _ = _cli(versions, capsys, "show")  # the current one
    assert code == 0 and out.splitlines()[0] == f"# {older} (current)"
    assert f"folder: {store.root / older}" in out
    recall = store.read_json(older, "metrics.json")["models"]["two_tower"]["recall@50"]
    table = {cells[0]: cells[1:] for cells in (_cells(line) for line in out.splitlines() if line.startswith("| "))}
    assert table["two_tower"][table["model"].index("recall@50")] == f"{recall:.4f}", table
    assert json.loads(out.split("tower: ", 1)[1].split("\n\n", 1)[0])["embedding_dim"] == CONFIG.embedding_dim
    # The ranker part: what it is and its cross-validation on the validation window; none for the newer one.
    record = store.read_json(older, "config.json")["ranker"]
    assert f"ranker: {record['objective']}, reorders the towers' top {record['n_candidates']}, " in out
    ndcg = record["cv"][record["objective"]]["ndcg"]
    assert table[f"{record['objective']} (chosen)"][0] == f"{ndcg:.4f}", table
    assert "gate: not gated yet" in out  # trained here by train_version alone
    code, out, _ = _cli(versions, capsys, "show", newer)
    assert code == 0 and out.splitlines()[0] == f"# {newer}"
    assert "ranker: none (serves retrieval alone" in out

    # An unknown version is refused and the pointer stays.
    code, _, err = _cli(versions, capsys, "promote", "m20000101T000000Z-deadbeef")
    assert code == 2 and "m20000101T000000Z-deadbeef" in err
    assert store.current() == older
