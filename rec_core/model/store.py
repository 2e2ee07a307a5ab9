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

With the lake on an object store (``REC_DATA_URI``), the models are there too, under ``<prefix>/models/``: each
version (and each pending one) is a :class:`rec_core.storage.synced_folder.SyncedFolder`, so the steps of a
release may run on different machines (the towers on one, the ranker on another, the evaluation on a third), and
``models/CURRENT`` is an object. ``<data root>/models/`` is then this machine's copy, brought up to date with the
store before each read; :func:`model_store` picks the kind.

Each release ends by pruning (:mod:`rec_core.model.retention`): the newest ``REC_MODEL_VERSIONS_KEEP`` versions
stay, and so does every version the current pointer, a snapshot or a running experiment still names. On a store,
every other machine drops its copies of versions pruned there at its next load (:meth:`ModelStore.drop_pruned_copies`).

Promotion goes through the quality gate (:mod:`rec_core.model.gate`): a model that does not clearly beat
MostPop, or falls below the current model on the same test users, is kept as a version but never becomes
current.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_model

from rec_core.atomic import fsync_dir, write_bytes_atomic
from rec_core.model.errors import ModelStoreError
from rec_core.model.features import FeatureStats
from rec_core.model.towers import LEGACY_VIDEO_DENSE, TowerConfig, TwoTower, quantize_int8
from rec_core.model.vocabs import Vocabs
from rec_core.settings import PathSettings
from rec_core.storage.object_store import ObjectStore, StoreError
from rec_core.storage.synced_folder import MANIFEST, SyncedFolder
from rec_core.storage.versions import VersionError

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
PENDING = ".pending-"  # a version whose towers are saved and whose ranker step has not finished yet
TRASH = ".trash-"  # a pruned version on its way out (ModelStore.prune)
STAGING = ".staging-"  # a version being written (ModelStore.save); renamed into place when whole
REMOTE_PREFIX = "models"  # under the object store's prefix


@dataclass(slots=True)
class LoadedModel:
    version: str
    model: TwoTower
    vocabs: Vocabs
    stats: FeatureStats
    config: dict
    metrics: dict


class ModelStore:
    def __init__(self, root: Path, remote: ObjectStore | None = None) -> None:
        """``remote``: the object store that holds the versions (``root`` then being this machine's copy)."""
        self.root = Path(root)
        self.remote = remote

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
        if final.exists() or (self.root / version).exists() or self._on_remote(version):
            raise ModelStoreError(f"model version {version} already exists")
        stage = self.root / f"{STAGING}{version}"
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
        if (synced := self._synced(final.name)) is not None:
            synced.push()
        return final

    def complete(self, version: str, extra_files: dict[str, bytes], config: dict | None = None) -> Path:
        """Finish a pending version: add ``extra_files``, merge ``config`` into its config.json, rename it into
        place. A retry after the rename finds the version done and changes nothing."""
        if self.remote is not None:
            return self._complete_remote(version, extra_files, config)
        pending, final = self._folder(version, pending=True), self._folder(version)
        if final.is_dir() and not pending.exists():
            return final
        if not pending.is_dir():
            raise ModelStoreError(f"no pending model version {version!r} under {self.root}")
        _finish(pending, extra_files, config)
        os.replace(pending, final)
        fsync_dir(self.root)
        return final

    def _complete_remote(self, version: str, extra_files: dict[str, bytes], config: dict | None) -> Path:
        # The store decides what is done: this machine may never have seen the pending version, or may hold a
        # local rename whose push was killed. Redone whole until the pending folder is gone from the store.
        pending, final = self._synced(f"{PENDING}{version}"), self._synced(version)
        assert pending is not None and final is not None
        if not pending.exists():
            if final.exists():
                return final.pull()
            raise ModelStoreError(f"no pending model version {version!r} in {pending.where()}")
        shutil.rmtree(pending.local, ignore_errors=True)
        pending.pull()
        _finish(pending.local, extra_files, config)
        shutil.rmtree(final.local, ignore_errors=True)
        os.replace(pending.local, final.local)
        final.push()  # its manifest appearing is the version becoming complete
        pending.delete()
        return final.local

    def prune_pending(self, older_than_s: float = 86_400.0) -> list[str]:
        """Remove pending versions older than ``older_than_s`` (their ranker step failed for good); their names.
        Staging folders as old go too: a save killed mid-write (a live one renames its own within seconds)."""
        cutoff = time.time() - older_than_s
        for stage in self.root.glob(f"{STAGING}*") if self.root.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):  # its save renamed it into place meanwhile
                if stage.stat().st_mtime < cutoff:
                    shutil.rmtree(stage, ignore_errors=True)
        if self.remote is not None:  # a version's name says when it was made (new_version_name)
            doomed = [n for n in self._remote_folders(PENDING) if _made_at(n.removeprefix(PENDING)) < cutoff]
            for name in doomed:
                self._remote_folder(name).delete()
                shutil.rmtree(self.root / name, ignore_errors=True)
            return [name.removeprefix(PENDING) for name in doomed]
        if not self.root.is_dir():
            return []
        stale = [p for p in self.root.glob(f"{PENDING}*") if p.is_dir() and p.stat().st_mtime < cutoff]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        return [folder.name.removeprefix(PENDING) for folder in stale]

    def prune(self, keep: int, pinned: Collection[str] = ()) -> list[str]:
        """Delete every version but the newest ``keep``, the current one and ``pinned``; the deleted names, oldest
        first. A local version is renamed out of :meth:`versions`' sight (``.trash-<version>``) before it is
        removed, so a kill in between leaves no half version for a reader to load, and the next prune finishes it;
        in the object store its manifest goes first (:meth:`SyncedFolder.delete`)."""
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        versions = self.versions()  # oldest first: a name starts with its UTC stamp (new_version_name)
        spared = {*versions[-keep:], *pinned, self.current()}
        doomed = [v for v in versions if v not in spared]
        for version in doomed:
            if self.remote is not None:
                self._remote_folder(version).delete()
            if (self.root / version).is_dir():
                os.replace(self.root / version, self.root / f"{TRASH}{version}")
        for trash in self.root.glob(f"{TRASH}*") if self.root.is_dir() else ():
            shutil.rmtree(trash, ignore_errors=True)
        return doomed

    def update_metrics(self, version: str, metrics: dict) -> None:
        write_bytes_atomic(self.folder(version) / "metrics.json", json.dumps(metrics, indent=2).encode())
        if (synced := self._synced(version)) is not None:
            synced.push(["metrics.json"])

    def write_into(self, version: str, subfolder: str, writer: Callable[[Path], object]) -> Path:
        """Let ``writer`` fill ``<version>/<subfolder>/`` (a report, say), then make it part of the version."""
        target = self.folder(version) / subfolder
        writer(target)
        if (synced := self._synced(version)) is not None:
            synced.push([str(p.relative_to(synced.local)) for p in target.rglob("*") if p.is_file()])
        return target

    def versions(self) -> list[str]:
        if self.remote is not None:
            return self._remote_folders("m")
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith("m"))

    def current(self) -> str | None:
        if self.remote is not None:
            blob = self.remote.get(f"{REMOTE_PREFIX}/{CURRENT}")
            return blob.data.decode().strip() if blob else None
        pointer = self.root / CURRENT
        return pointer.read_text().strip() if pointer.is_file() else None

    def promote(self, version: str) -> None:
        if version not in self.versions():
            raise ModelStoreError(f"no model version {version!r} under {self.where()}")
        if self.remote is not None:
            self.remote.put(f"{REMOTE_PREFIX}/{CURRENT}", f"{version}\n".encode())
            return
        write_bytes_atomic(self.root / CURRENT, f"{version}\n".encode())

    def where(self) -> str:
        return f"{self.remote.location}/{REMOTE_PREFIX}" if self.remote is not None else str(self.root)

    def folder(self, version: str, pending: bool = False, *, only: list[str] | None = None) -> Path:
        """The version's folder on this machine, brought up to date with the store first where there is one
        (every file, or the files ``only`` names)."""
        local = self._folder(version, pending)
        if (synced := self._synced(local.name)) is not None:
            with contextlib.suppress(VersionError):  # not in the store: the caller's own check says so
                synced.pull(only)
        return local

    def read_json(self, version: str, name: str, *, pending: bool = False) -> dict:
        return self._json(self.folder(version, pending, only=[name]), version, name, pending)

    def _json(self, folder: Path, version: str, name: str, pending: bool) -> dict:
        path = folder / name
        if not path.is_file():
            raise ModelStoreError(f"no {'pending ' if pending else ''}model version {version!r} under {self.root}")
        return json.loads(path.read_text())

    def load(self, version: str | None = None, *, quantize: bool = False, pending: bool = False) -> LoadedModel:
        """A model version (default: the current one); ``quantize`` gives int8 towers for inference only;
        ``pending``: a version saved as pending (its towers, before :meth:`complete`)."""
        version = version or self.current()
        if version is None:
            raise ModelStoreError(f"no current model under {self.root}: run `python -m jobs.train_towers` first")
        folder = self.folder(version, pending)  # one pull of the whole version; the reads below are local
        config = self._json(folder, version, "config.json", pending)
        # A version saved before the dense video inputs grew reads the first LEGACY_VIDEO_DENSE of them.
        model = TwoTower(TowerConfig(**{"video_dense": LEGACY_VIDEO_DENSE, **config["tower"]}))
        _load_mapped(model, folder / "weights.safetensors")
        model.eval()
        if quantize:
            model = quantize_int8(model)
        stats = FeatureStats.from_json((folder / "feature_stats.json").read_text())
        metrics = self._json(folder, version, "metrics.json", pending)
        if self.remote is not None:
            try:
                self.drop_pruned_copies()
            except (OSError, StoreError) as exc:  # housekeeping: never a reason for a load to fail
                log.warning("could not drop copies of pruned model versions under %s: %s", self.root, exc)
        return LoadedModel(version, model, Vocabs.load(folder), stats, config, metrics)

    def drop_pruned_copies(self, older_than_s: float = 86_400.0) -> list[str]:
        """With the versions on a store: remove this machine's copies of versions (and pending ones) the store no
        longer holds, untouched for ``older_than_s`` (a younger one may be this machine's save, not yet pushed).
        Whichever machine prunes the store, each other machine's copies go at its next load. Returns their names."""
        if self.remote is None or not self.root.is_dir():
            return []
        stored = set(self._remote_folders(""))
        cutoff = time.time() - older_than_s
        gone = []
        for folder in self.root.iterdir():
            if not folder.is_dir() or not folder.name.removeprefix(PENDING).startswith("m") or folder.name in stored:
                continue
            # Processes of this machine (parallel shards) may race for the same copy: whoever renames it removes it.
            trash = self.root / f"{TRASH}{folder.name}.{os.getpid()}"
            try:
                if folder.stat().st_mtime >= cutoff:
                    continue
                os.replace(folder, trash)  # out of versions()' sight before it is half removed
            except FileNotFoundError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
            gone.append(folder.name)
            log.info("model version %s was pruned from %s; removed this machine's copy", folder.name, self.where())
        return gone

    def _folder(self, version: str, pending: bool = False) -> Path:
        return self.root / f"{PENDING}{version}" if pending else self.root / version

    def _synced(self, name: str) -> SyncedFolder | None:
        return self._remote_folder(name) if self.remote is not None else None

    def _remote_folder(self, name: str) -> SyncedFolder:
        assert self.remote is not None
        return SyncedFolder(self.remote, f"{REMOTE_PREFIX}/{name}", self.root / name)

    def _remote_folders(self, start: str) -> list[str]:
        """Names of the folders in the store whose name starts with ``start`` (versions: "m"; pending ones)."""
        assert self.remote is not None
        names = {key.split("/")[1] for key in self.remote.keys(f"{REMOTE_PREFIX}/") if key.endswith(f"/{MANIFEST}")}
        return sorted(n for n in names if n.startswith(start))

    def _on_remote(self, version: str) -> bool:
        return self.remote is not None and any(
            self._remote_folder(name).exists() for name in (version, f"{PENDING}{version}")
        )


def model_store(paths: PathSettings) -> ModelStore:
    """THE way jobs open the model store: under the data root, or on the object store ``REC_DATA_URI`` names."""
    if paths.object_store:
        from rec_core.storage.object_store import open_store

        return ModelStore(paths.models_dir, open_store(paths))
    return ModelStore(paths.models_dir)


def _finish(pending: Path, extra_files: dict[str, bytes], config: dict | None) -> None:
    """Add a pending version's last files and config; rewritten whole on a retry, so a step killed half-way
    leaves nothing that the rename could publish."""
    for name, data in extra_files.items():
        write_bytes_atomic(pending / name, data)
    if config:
        merged = {**json.loads((pending / "config.json").read_text()), **config}
        write_bytes_atomic(pending / "config.json", json.dumps(merged, indent=2, default=str).encode())
    fsync_dir(pending)


def _made_at(version: str) -> float:
    """When a version was named (``m<UTC stamp>-<digest>``); 0 for a name not made by new_version_name."""
    try:
        stamp = dt.datetime.strptime(version[1:17], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return 0.0
    return stamp.timestamp()


def _load_mapped(model: TwoTower, path: Path) -> None:
    """The weights at ``path`` into ``model`` as views of the file's mapping (safetensors maps it), not copies: every
    API worker that loads this version shares their pages, as it shares the snapshot's mapped serving index.

    The file holds each tied tensor once (the towers share their id tables), so a name it lacks must be another
    name of a tensor it holds. Safe only because no writer rewrites a version's file in place (saves, snapshot
    copies and pulls from the store all rename a new file into place): a mapped file truncated under a reader
    would fault it."""
    tensors = load_file(path)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    state = model.state_dict()
    held = {state[name].data_ptr() for name in tensors}
    untied = [name for name in missing if state[name].data_ptr() not in held]
    if untied or unexpected:
        raise ModelStoreError(f"{path}: weights missing {untied}, unexpected {unexpected}")
