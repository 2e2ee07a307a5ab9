"""A snapshot whose build applies the ranker carries it and the state its features read, checksummed, and validation
refuses one whose ranking files are missing, unreadable, or not what build.json records."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rec_core.settings import Settings
from rec_core.snapshot.layout import RANK_FILES, SnapshotError, SnapshotPaths
from rec_core.snapshot.manifest import read_manifest, verify_checksums
from rec_core.snapshot.publish import live_snapshot
from rec_core.snapshot.validate import validate_snapshot
from tests.test_rank_stage import ranked_world

pytestmark = pytest.mark.slow


@pytest.fixture
def ranked(tmp_path_factory: pytest.TempPathFactory, api_world: Path, tmp_path: Path) -> tuple[Settings, SnapshotPaths]:
    data = tmp_path / "data"
    shutil.copytree(ranked_world(tmp_path_factory, api_world), data)
    settings = Settings.load({"REC_DATA_DIR": str(data)})
    live = live_snapshot(settings.paths)
    assert live is not None and live.read_build().ranker_applied
    return settings, live


def test_the_ranking_files_are_in_the_manifest_and_validate(ranked: tuple[Settings, SnapshotPaths]) -> None:
    settings, paths = ranked
    manifest = validate_snapshot(settings.paths, paths.snapshot_id)
    build = paths.read_build()
    assert manifest.ranker == build.ranker and manifest.ranker["applied"]  # type: ignore[index]
    assert {f"rank/{name}" for name in RANK_FILES} <= set(manifest.checksums)
    assert {f"model/{build.model_version}/{name}" for name in build.model_files or ()} <= set(manifest.checksums)
    assert manifest.counts["ranker_users"] == manifest.counts["lake_users"]
    assert manifest.counts["ranker_videos"] == manifest.counts["videos"]
    size = sum((paths.rank_dir / name).stat().st_size for name in RANK_FILES)
    assert size < 2 * 2**20, f"rank/ holds {size} bytes for a world of 300 users"


def _rewrite_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _drop_rows(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 1), path)


def _drop_key(paths: SnapshotPaths, key: str) -> None:
    path = paths.rank_dir / "state.json"
    meta = json.loads(path.read_text())
    del meta[key]
    path.write_text(json.dumps(meta))


def _double(path: Path) -> None:
    np.save(path, np.load(path) * 2)


def _drop_column(path: Path, column: str) -> None:
    table = pq.read_table(path)
    pq.write_table(table.drop_columns([column]), path)


DAMAGE: list[tuple[str, Callable[[SnapshotPaths], None], str]] = [
    ("missing", lambda p: (p.rank_dir / "users.parquet").unlink(), "missing file(s): rank/users.parquet"),
    ("no ranker", lambda p: (p.rank_dir / "ranker.txt").unlink(), "missing file(s): rank/ranker.txt"),
    ("garbage", lambda p: (p.rank_dir / "ranker.txt").write_text("not a model"), "ranker is applied, but"),
    ("truncated", lambda p: _drop_rows(p.rank_dir / "users.parquet"), "users has"),
    ("other ranker", lambda p: _rewrite_json(p.rank_dir / "ranker.json", n_candidates=7), "build.json records"),
    ("other features", lambda p: _rewrite_json(p.rank_dir / "ranker.json", features=["x"]), "other features"),
    ("state format", lambda p: _rewrite_json(p.rank_dir / "state.json", format=99), "state format 99"),
    ("state key", lambda p: _drop_key(p, "t_ms"), "lacks 't_ms'"),
    ("totals", lambda p: _rewrite_json(p.rank_dir / "state.json", window_totals=[1.0]), "window_totals must list"),
    ("not an object", lambda p: (p.rank_dir / "state.json").write_text("[1, 2]"), "holds a list"),
    ("column", lambda p: _drop_column(p.rank_dir / "videos.parquet", "creator"), "lacks column(s) creator"),
    ("mapped state", lambda p: _double(p.rank_dir / "serve" / "item_views.npy"), "serve/item_views differs"),
    ("mapped file", lambda p: (p.rank_dir / "serve" / "follows_keys.npy").unlink(), "rank/serve/follows_keys.npy"),
    (
        "model",
        lambda p: next((p.model_dir / p.read_build().model_version).glob("weights.*")).write_bytes(b"\0" * 64),
        "model copy",
    ),
]


@pytest.mark.parametrize(("how", "damage", "reason"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_validation_refuses_damaged_ranking_files(
    ranked: tuple[Settings, SnapshotPaths], how: str, damage: Callable[[SnapshotPaths], None], reason: str
) -> None:
    settings, paths = ranked
    manifest = read_manifest(paths)
    damage(paths)
    with pytest.raises(SnapshotError, match="refused") as refused:
        validate_snapshot(settings.paths, paths.snapshot_id)
    assert reason in str(refused.value), str(refused.value)
    # Publish (and rollback) re-hash against the manifest validation wrote: the damage shows there too.
    assert any(name.startswith(("rank/", "model/")) for name in verify_checksums(paths, manifest)), how
