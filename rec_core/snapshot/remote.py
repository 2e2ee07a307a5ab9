"""Feed snapshots on the object store (``REC_DATA_URI``), each machine working on a verified local copy.

Layout under ``<prefix>/snapshots/``::

    LIVE                    the live snapshot's id: swapped with ``If-Match``, THE visible change of a publish
    history.json            the publish log, written after ``LIVE`` (as the local one is after its rename)
    <id>/manifest.json      what snapshot ``<id>`` holds (a :class:`~rec_core.storage.synced_folder.SyncedFolder`)
    <id>/blobs/<sha256>     its files

A snapshot is built by stages that may run on different machines (Celery workers): each stage pulls the snapshot
into ``snapshots_dir/<id>`` before it runs and pushes what it wrote after (:func:`run_synced`), so every stage
sees what the earlier ones wrote, wherever they ran. ``snapshots_dir/LIVE`` and ``history.json`` are a mirror of
the store's (:meth:`RemoteSnapshots.mirror`), written only after the live snapshot's files are local, so the code
that reads local snapshots (the API, the warehouse, validation) works unchanged and never sees a pointer to a
snapshot it does not hold. Publishing and rolling back (:mod:`rec_core.snapshot.publish`) swap the store's
``LIVE``: of two publishers racing, the one whose ``If-Match`` lost changes nothing and says so.

The history object is written without a condition: only the publisher that won the ``LIVE`` swap writes it, and an
entry lost to a rare interleaving is re-added from ``LIVE`` by the next publish (as a killed local publish's is).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rec_core.atomic import exclusive_lock, write_bytes_atomic
from rec_core.settings import PathSettings
from rec_core.snapshot.layout import (
    LIVE_POINTER,
    MANIFEST_FILE,
    SNAPSHOT_ID,
    SnapshotError,
    SnapshotPaths,
    live_snapshot_id,
    snapshot_folders,
)
from rec_core.storage.object_store import ObjectStore, PreconditionFailed
from rec_core.storage.synced_folder import PULLING, SyncedFolder
from rec_core.storage.versions import Pointer

log = logging.getLogger(__name__)

PREFIX = "snapshots"
HISTORY_FILE = "history.json"
LOCK_FILE = ".lock"

# (size, mtime_ns) of each file under a local snapshot folder, by relative path: what a stage changed.
FileStates = dict[str, tuple[int, int]]


class RemoteSnapshots:
    """The store's snapshots, ``LIVE`` and history, and their local mirror under ``paths.snapshots_dir``."""

    def __init__(self, store: ObjectStore, paths: PathSettings) -> None:
        self.store = store
        self.paths = paths
        self.local = paths.snapshots_dir
        self._seen: Pointer | None = None  # LIVE as :meth:`mirror` last read it: what :meth:`swap` expects

    def where(self, name: str = "") -> str:
        return f"{self.store.location}/{PREFIX}/{name}".rstrip("/")

    def folder(self, snapshot_id: str) -> SyncedFolder:
        if not SNAPSHOT_ID.match(snapshot_id):
            raise SnapshotError(f"malformed snapshot id {snapshot_id!r}")
        return SyncedFolder(self.store, f"{PREFIX}/{snapshot_id}", self.local / snapshot_id)

    # ---- reading ---------------------------------------------------------------------------------------------
    def live(self) -> Pointer | None:
        blob = self.store.get(f"{PREFIX}/{LIVE_POINTER}")
        return Pointer(blob.data.decode().strip(), blob.etag) if blob else None

    def history(self) -> list[dict]:
        blob = self.store.get(f"{PREFIX}/{HISTORY_FILE}")
        return json.loads(blob.data) if blob else []

    def ids(self) -> list[str]:
        """Every snapshot the store holds (begun, validated or published), oldest first."""
        suffix = "/manifest.json"
        start = len(f"{PREFIX}/")
        found = (k[start:].removesuffix(suffix) for k in self.store.keys(f"{PREFIX}/") if k.endswith(suffix))
        return sorted(name for name in found if SNAPSHOT_ID.match(name))

    def validated(self, snapshot_id: str) -> bool:
        return MANIFEST_FILE in self.folder(snapshot_id).files()

    def pull(self, snapshot_id: str) -> SnapshotPaths:
        """The snapshot's local folder, brought up to date with the store."""
        folder = self.folder(snapshot_id)
        if not folder.exists():
            raise SnapshotError(f"no snapshot {snapshot_id} in {self.where()}")
        return SnapshotPaths(folder.pull())

    def mirror(self) -> str | None:
        """Make the local ``LIVE`` and history match the store's, pulling the live snapshot first; drop local
        copies of snapshots the store has pruned. Returns the live id. Call under :func:`locked`."""
        pointer = self._seen = self.live()
        if pointer is None:
            return None
        if live_snapshot_id(self.paths) != pointer.name:
            self.pull(pointer.name)
            self.write_local_history()
            self._write_local(LIVE_POINTER, f"{pointer.name}\n".encode())
            log.info("snapshot %s (live on %s) is now live here", pointer.name, self.where())
        return pointer.name

    # ---- writing ---------------------------------------------------------------------------------------------
    def swap(self, snapshot_id: str) -> None:
        """Point the store's ``LIVE`` at ``snapshot_id`` if nobody changed it since :meth:`mirror` read it."""
        key, body = f"{PREFIX}/{LIVE_POINTER}", f"{snapshot_id}\n".encode()
        try:
            if self._seen is None:
                self.store.put(key, body, create_only=True)
            else:
                self.store.put(key, body, if_etag=self._seen.etag)
        except PreconditionFailed:
            raise SnapshotError(
                f"{self.where(LIVE_POINTER)} changed while making {snapshot_id} live (another publish or rollback "
                "won); nothing changed: look at `python -m jobs.publish --list` and try again"
            ) from None
        self._write_local(LIVE_POINTER, body)

    def write_local_history(self) -> None:
        """This machine's copy of the publish log made the store's."""
        self._write_local(HISTORY_FILE, json.dumps(self.history(), indent=2).encode())

    def write_history(self, history: list[dict]) -> None:
        body = json.dumps(history, indent=2).encode()
        self.store.put(f"{PREFIX}/{HISTORY_FILE}", body)
        self._write_local(HISTORY_FILE, body)

    def delete(self, snapshot_id: str) -> None:
        self.folder(snapshot_id).delete()

    def _write_local(self, name: str, body: bytes) -> None:
        self.local.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.local / name, body)


def remote_snapshots(paths: PathSettings) -> RemoteSnapshots | None:
    """The store's snapshots when ``REC_DATA_URI`` names one; None when snapshots live under the data root."""
    if not paths.object_store:
        return None
    from rec_core.storage.object_store import open_store

    return RemoteSnapshots(open_store(paths), paths)


@contextmanager
def locked(paths: PathSettings) -> Iterator[None]:
    """One process of this machine at a time on ``snapshots_dir`` (publishing, mirroring, pruning)."""
    with exclusive_lock(paths.snapshots_dir / LOCK_FILE):
        yield


def sync_live(paths: PathSettings, remote: RemoteSnapshots | None = None) -> str | None:
    """Bring this machine's ``LIVE`` (and the live snapshot's files) up to date with the store; the live id.
    With snapshots under the data root there is nothing to bring: returns the local ``LIVE``. A long-lived
    caller passes its own ``remote`` (one store client, not one per call)."""
    remote = remote or remote_snapshots(paths)
    if remote is None:
        return live_snapshot_id(paths)
    with locked(paths):
        live = remote.mirror()
        _drop_pruned_copies(remote, paths)
    return live


def fetch_snapshot(paths: PathSettings, snapshot_id: str, remote: RemoteSnapshots | None = None) -> bool:
    """Make sure this machine holds a validated snapshot the store has (a retained one a cursor names after a
    restart); False when neither holds it."""
    local = paths.snapshots_dir / snapshot_id / MANIFEST_FILE
    remote = remote or remote_snapshots(paths)
    if remote is None or local.is_file():
        return local.is_file()
    if not remote.folder(snapshot_id).exists() or not remote.validated(snapshot_id):
        return False
    with locked(paths):
        remote.pull(snapshot_id)
    return True


def run_synced(paths: PathSettings, snapshot_id: str | None, call: Callable[[], Any], *, begins: bool = False) -> Any:
    """Run one stage against the store's copy of its snapshot: mirror ``LIVE``, pull the snapshot, run, then
    push what the stage wrote. A stage that ``begins`` a snapshot (returns a new ``snapshot_id``) claims its name
    on the store, so two machines that began one in the same second cannot merge into one folder."""
    remote = remote_snapshots(paths)
    if remote is None:
        return call()
    with locked(paths):
        remote.mirror()
        before = _file_states(remote.pull(snapshot_id).root) if snapshot_id else {}
    try:
        result = call()
    except Exception:
        if snapshot_id:  # what the failed stage removed on purpose (validation drops a stale manifest) goes too
            gone = [name for name in before if name not in _file_states(remote.folder(snapshot_id).local)]
            try:
                if gone:
                    remote.folder(snapshot_id).push([], remove=gone)
            except Exception:  # the stage's own error is the one to report
                log.exception("could not record on the store what failed stage removed from %s", snapshot_id)
        raise
    made = result.get("snapshot_id") if begins and isinstance(result, Mapping) else None
    target = snapshot_id or made
    if target:
        folder = remote.folder(target)
        after = _file_states(folder.local)
        changed = [name for name, state in after.items() if before.get(name) != state]
        gone = [name for name in before if name not in after]
        try:
            folder.push(changed, remove=gone, exclusive=bool(made))
        except PreconditionFailed:
            raise SnapshotError(
                f"snapshot {made} was begun on another machine in the same second ({remote.where(made)}); this "
                "run's copy is left unpushed: run the stage again"
            ) from None
        log.info("pushed %d file(s) of snapshot %s to %s", len(changed), target, remote.where(target))
    return result


def _file_states(root: Path) -> FileStates:
    # Hidden names are never part of a snapshot: another process's temp file (atomic writes, pulls in progress)
    # or a lock file; a file that vanishes while listed was one of those.
    states: FileStates = {}
    for path in root.rglob("*"):
        if path.name.startswith(".") or PULLING in path.name:
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if path.is_file():
            states[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return states


def _drop_pruned_copies(remote: RemoteSnapshots, paths: PathSettings) -> None:
    """Remove local copies of snapshots that were published once and are gone from the store (pruned there).
    Never-published local folders are left alone: one may be a build of this machine that has not pushed yet."""
    local = paths.snapshots_dir
    history_file = local / HISTORY_FILE
    if not history_file.is_file():
        return
    published = {entry["snapshot_id"] for entry in json.loads(history_file.read_text())}
    live = live_snapshot_id(paths)
    held = snapshot_folders(local)
    candidates = (held & published) - {live}
    if not candidates:
        return
    stored = set(remote.ids())
    for name in sorted(candidates - stored):
        log.info("snapshot %s was pruned from %s; removing this machine's copy", name, remote.where())
        trash = local / f".trash-{name}"
        os.replace(local / name, trash)
        shutil.rmtree(trash, ignore_errors=True)
