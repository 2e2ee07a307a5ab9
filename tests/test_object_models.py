"""Model versions on the object store: a release whose steps run on different machines, against moto's S3 server.

Each "machine" is its own data root (its cache) with the same ``REC_DATA_URI``: the towers are trained on one,
their ranker on a second, the evaluation runs on a third, the gate on the first again, and a fourth machine that
has never seen any of it begins a snapshot of the promoted version and builds the analysts' warehouse. Real lake,
encoder, training, ranker, evaluation and gate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest

from rec_core.data.warehouse import build_warehouse
from rec_core.model.release import evaluate_version, gate_version, train_candidate, train_candidate_ranker
from rec_core.model.store import PENDING, model_store
from rec_core.rank.ranker import RankerConfig
from rec_core.settings import Settings
from rec_core.snapshot.begin import begin
from rec_core.storage.object_store import S3Store, open_store
from rec_core.storage.synced_folder import SyncedFolder
from rec_core.synthetic.commit import generate_data

pytestmark = pytest.mark.slow

FAST = RankerConfig(max_rounds=60, early_stopping=15, min_data_in_leaf=20, folds=3, cv_groups=0)


def machine(env: dict[str, str], root: Path) -> Settings:
    return Settings.load({**env, "REC_DATA_DIR": str(root), "REC_RANKER": "on"})


def test_a_release_split_over_machines_meets_on_the_store(s3_env: dict[str, str], tmp_path: Path) -> None:
    a, b, c, d = (machine(s3_env, tmp_path / name) for name in ("a", "b", "c", "d"))
    generate_data(a, "tiny", videos=600, seed=3)  # fewer captions: each machine encodes its own

    version = train_candidate(a, epochs=2, embedding_dim=16)["version"]
    keys = open_store(a.paths).keys("models/")
    assert f"models/{PENDING}{version}/manifest.json" in keys and f"models/{version}/manifest.json" not in keys

    done = train_candidate_ranker(
        b, version, ranker_config=FAST
    )  # b has never seen the pending version: it comes from the store
    assert done["has_ranker"], done
    keys = open_store(a.paths).keys("models/")
    assert f"models/{version}/manifest.json" in keys
    assert not [k for k in keys if k.startswith(f"models/{PENDING}")], "the pending folder is gone once complete"
    assert (
        train_candidate_ranker(c, version, ranker_config=FAST) == done
    )  # a retry elsewhere finds it complete and changes nothing

    metrics = evaluate_version(c, version)
    assert {"most_pop", "gate_evidence"} <= set(metrics) | set(metrics["models"])
    decision = gate_version(a, version)  # a's own copy predates the evaluation: it must read the store's
    assert decision["promoted"], decision

    store = model_store(d.paths)
    assert store.current() == version and store.versions() == [version]
    assert store.read_json(version, "metrics.json")["gate"]["passed"] is True
    assert (store.folder(version) / "report" / "comparison.png").is_file()
    assert not (a.paths.models_dir / "CURRENT").exists(), "the pointer lives in the store only"

    # The snapshot carries its model: begun on d, it copies the promoted version from the store (the rest of the
    # build reads that copy and the lake, both tested elsewhere; kept short for the suite's time).
    snapshot = begin(d, video_shards=1, user_shards=1)["snapshot_id"]
    build = json.loads((d.paths.snapshots_dir / snapshot / "build.json").read_text())
    assert build["model_version"] == version and build["ranker"] is not None
    copied = d.paths.snapshots_dir / snapshot / "model" / version
    assert (copied / "weights.safetensors").read_bytes() == (store.folder(version) / "weights.safetensors").read_bytes()
    # Analysts on any machine see every version's metrics, read from the store.
    con = duckdb.connect(str(build_warehouse(d.paths, d.batch)), read_only=True)
    try:
        row = con.execute(
            "SELECT model_version, current FROM model_metrics WHERE model = 'most_pop' AND metric = 'recall@50'"
        ).fetchall()
    finally:
        con.close()
    assert row == [(version, True)]


def test_pushes_from_two_machines_merge_and_a_killed_one_changes_nothing(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(machine(s3_env, tmp_path).paths)
    one, two = (SyncedFolder(store, "models/m1", tmp_path / name / "m1") for name in ("one", "two"))
    for folder, name in ((one, "weights.bin"), (two, "ranker.txt")):
        folder.local.mkdir(parents=True)
        (folder.local / name).write_bytes(os.urandom(64))
    one.push()
    # two read the manifest before one's push landed and swaps after it: its merge keeps one's file.
    real_put = S3Store.put
    raced = []

    def one_pushes_first(self: S3Store, key: str, data: bytes, **kw: object) -> str:
        if key.endswith("manifest.json") and not raced:
            raced.append(True)
            (one.local / "metrics.json").write_text("{}")
            one.push(["metrics.json"])
        return real_put(self, key, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(S3Store, "put", one_pushes_first)
    two.push()
    monkeypatch.undo()
    assert raced and set(two.files()) == {"weights.bin", "ranker.txt", "metrics.json"}
    reader = SyncedFolder(store, "models/m1", tmp_path / "reader" / "m1")
    assert sorted(p.name for p in reader.pull().iterdir()) == ["metrics.json", "ranker.txt", "weights.bin"]

    # A push killed after uploading its bytes but before the manifest swap changes nothing a reader sees.
    (one.local / "metrics.json").write_text('{"changed": true}')

    def die_at_manifest(self: S3Store, key: str, data: bytes, **kw: object) -> str:
        if key.endswith("manifest.json"):
            raise KeyboardInterrupt  # stands for the kill: the process stops here
        return real_put(self, key, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(S3Store, "put", die_at_manifest)
    with pytest.raises(KeyboardInterrupt):
        one.push(["metrics.json"])
    monkeypatch.undo()
    assert (reader.pull() / "metrics.json").read_text() == "{}"
