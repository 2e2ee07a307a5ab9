"""Model versions under ``<data root>/models/``.

Each version is a folder written whole and then renamed into place::

    models/<version>/weights.safetensors   the towers and the engagement head
    models/<version>/config.json           tower + training config, lake version, split cuts, text model
    models/<version>/feature_stats.json    standardisation of the dense features
    models/<version>/vocab_*.parquet       id vocabularies (index 0 = unknown)
    models/<version>/metrics.json          evaluation of this model and the baselines on the same split
    models/<version>/curves.png            loss and validation curves
    models/<version>/ranker.txt, .json     its ranker, when it was trained with one (rec_core.model.ranking)
    models/CURRENT                         the promoted version (one atomic rename to change)

A version trained in two steps (the train_towers DAG: the towers, then their ranker in another task) waits as
``models/.pending-<version>/`` in between: no reader lists, loads or promotes it until :meth:`ModelStore.complete`
adds the rest and renames it into place, so a version is never seen with a part missing.

Promotion goes through the quality gate (:mod:`rec_core.model.gate`): a model that does not clearly beat
MostPop, or falls below the current model on the same test users, is kept as a version but never becomes
current.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_model, save_model

from rec_core.atomic import fsync_dir, write_bytes_atomic
from rec_core.model.features import FeatureStats, Vocabs
from rec_core.model.towers import LEGACY_VIDEO_DENSE, TowerConfig, TwoTower, quantize_int8

CURRENT = "CURRENT"
PENDING = ".pending-"  # a version whose towers are saved and whose ranker step has not finished yet


class ModelStoreError(RuntimeError):
    """No such model version, or no current model."""


@dataclass(slots=True)
class LoadedModel:
    version: str
    model: TwoTower
    vocabs: Vocabs
    stats: FeatureStats
    config: dict
    metrics: dict


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def new_version_name(self, config: dict) -> str:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return f"m{stamp}-{digest}"

    def save(
        self,
        version: str,
        model: TwoTower,
        vocabs: Vocabs,
        stats: FeatureStats,
        config: dict,
        metrics: dict,
        extra_files: dict[str, bytes] | None = None,
        *,
        pending: bool = False,
    ) -> Path:
        """Write a version whole; ``pending``: as a pending version that :meth:`complete` finishes."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self._folder(version, pending)
        if final.exists() or (self.root / version).exists():
            raise ModelStoreError(f"model version {version} already exists")
        stage = self.root / f".staging-{version}"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        try:
            save_model(model, str(stage / "weights.safetensors"))
            config = {**config, "tower": model.cfg.to_dict(), "version": version}
            (stage / "config.json").write_text(json.dumps(config, indent=2, default=str))
            (stage / "feature_stats.json").write_text(stats.to_json())
            (stage / "metrics.json").write_text(json.dumps(metrics, indent=2))
            vocabs.save(stage)
            for name, data in (extra_files or {}).items():
                (stage / name).write_bytes(data)
            for f in stage.iterdir():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(stage)
            os.replace(stage, final)
            fsync_dir(self.root)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return final

    def complete(self, version: str, extra_files: dict[str, bytes], config: dict | None = None) -> Path:
        """Finish a pending version: add ``extra_files``, merge ``config`` into its config.json, rename it into
        place. A retry after the rename finds the version done and changes nothing."""
        pending, final = self._folder(version, pending=True), self._folder(version)
        if final.is_dir() and not pending.exists():
            return final
        if not pending.is_dir():
            raise ModelStoreError(f"no pending model version {version!r} under {self.root}")
        # Rewritten whole on a retry, so a step killed half-way leaves nothing that the rename could publish.
        for name, data in extra_files.items():
            write_bytes_atomic(pending / name, data)
        if config:
            merged = {**json.loads((pending / "config.json").read_text()), **config}
            write_bytes_atomic(pending / "config.json", json.dumps(merged, indent=2, default=str).encode())
        fsync_dir(pending)
        os.replace(pending, final)
        fsync_dir(self.root)
        return final

    def prune_pending(self, older_than_s: float = 86_400.0) -> list[str]:
        """Remove pending versions older than ``older_than_s`` (their ranker step failed for good); their names."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - older_than_s
        stale = [p for p in self.root.glob(f"{PENDING}*") if p.is_dir() and p.stat().st_mtime < cutoff]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        return [folder.name.removeprefix(PENDING) for folder in stale]

    def update_metrics(self, version: str, metrics: dict) -> None:
        write_bytes_atomic(self.root / version / "metrics.json", json.dumps(metrics, indent=2).encode())

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith("m"))

    def current(self) -> str | None:
        pointer = self.root / CURRENT
        return pointer.read_text().strip() if pointer.is_file() else None

    def promote(self, version: str) -> None:
        if version not in self.versions():
            raise ModelStoreError(f"no model version {version!r} under {self.root}")
        write_bytes_atomic(self.root / CURRENT, f"{version}\n".encode())

    def read_json(self, version: str, name: str, *, pending: bool = False) -> dict:
        path = self._folder(version, pending) / name
        if not path.is_file():
            raise ModelStoreError(f"no {'pending ' if pending else ''}model version {version!r} under {self.root}")
        return json.loads(path.read_text())

    def load(self, version: str | None = None, *, quantize: bool = False, pending: bool = False) -> LoadedModel:
        """A model version (default: the current one); ``quantize`` gives int8 towers for inference only;
        ``pending``: a version saved as pending (its towers, before :meth:`complete`)."""
        version = version or self.current()
        if version is None:
            raise ModelStoreError(f"no current model under {self.root}: run `python -m jobs.train_towers` first")
        folder = self._folder(version, pending)
        config = self.read_json(version, "config.json", pending=pending)
        # A version saved before the dense video inputs grew reads the first LEGACY_VIDEO_DENSE of them.
        model = TwoTower(TowerConfig(**{"video_dense": LEGACY_VIDEO_DENSE, **config["tower"]}))
        load_model(model, str(folder / "weights.safetensors"))
        model.eval()
        if quantize:
            model = quantize_int8(model)
        stats = FeatureStats.from_json((folder / "feature_stats.json").read_text())
        metrics = self.read_json(version, "metrics.json", pending=pending)
        return LoadedModel(version, model, Vocabs.load(folder), stats, config, metrics)

    def _folder(self, version: str, pending: bool = False) -> Path:
        return self.root / f"{PENDING}{version}" if pending else self.root / version
