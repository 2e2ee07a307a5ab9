"""The lake on an S3-compatible object store (``REC_DATA_URI=s3://bucket/prefix``).

The same versions, tables and manifests as :class:`rec_core.data.lake.Lake`, under ``<prefix>/lake/`` in the
store, which is the source of truth every machine shares; ``<data root>/lake/`` is this machine's cache of the
versions it has read, each copied whole and checked against its manifest (:mod:`rec_core.storage.versions`).

What changes is how a commit becomes live, since a store has no rename and machines share no lock: the version
name is claimed and the pointer swapped with conditional writes. The guarantees are the local lake's:

- a commit lands whole or not at all: a writer killed at any point leaves the previous version live;
- ``commit(expect=...)`` raises :class:`LakeConflict` if another version went live since (compare-and-swap);
- in addition, any commit that another machine's commit beat (to the version name or to the pointer) raises
  :class:`LakeConflict` having made nothing live, where the local lake's lock would have serialised them.

Pruning deletes, from the store and the cache, published versions past the newest ``keep_versions`` that no
snapshot pins, and versions claimed but never published once a newer version is live.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from rec_core.data.lake import MANIFEST, Lake, LakeConflict, LakeError, LakeVersion, Pins, version_name, version_number
from rec_core.settings import PathSettings
from rec_core.storage.object_store import ObjectStore, PreconditionFailed, open_store
from rec_core.storage.versions import Pointer, RemoteVersions, VersionError

log = logging.getLogger(__name__)

PREFIX = "lake"


def table_files(manifest: Mapping) -> dict[str, str]:
    return {f"{table}.parquet": meta["sha256"] for table, meta in manifest["tables"].items()}


class ObjectLake(Lake):
    def __init__(self, store: ObjectStore, cache: Path, keep_versions: int = 3, pinned: Pins | None = None) -> None:
        super().__init__(cache, keep_versions, pinned)
        self.remote = RemoteVersions(store, PREFIX, cache, table_files)

    # ---- reading -------------------------------------------------------
    def current(self) -> LakeVersion:
        if self._fixed is not None:
            return self._version(self._fixed)
        pointer = self.remote.live()
        if pointer is None:
            raise LakeError(
                f"no lake at {self.remote.where()}: run `python -m jobs.generate_data` or "
                "`python -m jobs.import_dataset` first"
            )
        return self._version(pointer.name)

    def exists(self) -> bool:
        if self._fixed is not None:
            return self._fixed != ""
        return self.remote.live() is not None

    def _version(self, name: str) -> LakeVersion:
        if not name:
            raise LakeError(f"lake version (empty) is not in {self.remote.where()}")
        try:
            path = self.remote.local(name)
        except VersionError as exc:
            raise LakeError(str(exc)) from exc
        return LakeVersion(name, path, json.loads((path / MANIFEST).read_text()))

    def versions(self) -> list[str]:
        return self.remote.names()

    # ---- writing -------------------------------------------------------
    def _head(self) -> tuple[LakeVersion | None, object]:
        pointer = self.remote.live()
        return (self._version(pointer.name) if pointer else None), pointer

    def _next_name(self, previous: LakeVersion | None, head: object) -> str:
        return self.remote.next_name(_pointer(head), version_name, version_number)

    def _make_live(self, stage: Path, name: str, kept: Mapping[str, str], head: object, source: str) -> Path:
        try:
            return self.remote.publish(name, stage, (stage / MANIFEST).read_bytes(), kept, _pointer(head))
        except PreconditionFailed as exc:
            raise LakeConflict(
                f"another writer committed to {self.remote.where()} while {source} worked ({exc}); "
                "nothing of this commit is live: re-read and retry"
            ) from exc

    def _remove_orphans(self, live: LakeVersion | None) -> None:
        # In the store an unpublished version may be another machine's commit in flight: _prune removes it once a
        # newer version is live. No unpublished version is ever in the cache (a killed commit's staging folder is,
        # and Lake.commit removes it under the lock).
        return

    def _prune(self, keep: str) -> None:
        names = self.versions()
        published = self._published(keep)
        doomed = [n for n in names if n < keep and (n not in published or published.index(n) >= self.keep_versions)]
        try:
            pinned = set(self.pinned()) if self.pinned else set()
        except Exception as exc:  # see Lake._prune: not knowing the pins, delete nothing
            log.warning("lake not pruned: cannot tell which versions snapshots still read (%s)", exc)
            return
        for name in doomed:
            if name not in pinned:
                self.remote.delete(name)
        self.remote.drop_pruned_copies()  # those another machine pruned from the store

    def _published(self, live: str) -> list[str]:
        """The live version and its ancestors still in the store, newest first: the versions that were live."""
        chain: list[str] = []
        name: str | None = live
        while name and name not in chain:
            blob = self.remote.store.get(f"{PREFIX}/{name}/{MANIFEST}")
            if blob is None:
                break
            chain.append(name)
            name = json.loads(blob.data).get("parent")
        return chain


def object_lake(paths: PathSettings, keep_versions: int, pinned: Pins | None = None) -> ObjectLake:
    return ObjectLake(open_store(paths), paths.lake_dir, keep_versions, pinned)


def _pointer(head: object) -> Pointer | None:
    assert head is None or isinstance(head, Pointer)
    return head
