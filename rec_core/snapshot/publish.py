"""Publishing, rolling back and pruning validated feed snapshots (docs/architecture.md, invariant 3).

The protocol, in the order it runs (validation, step 1, is :mod:`rec_core.snapshot.validate`; it writes the
manifest that :mod:`rec_core.snapshot.manifest` reads back):

2. :func:`publish` re-hashes the files against the manifest and then makes the
   snapshot live with ONE atomic rename of ``snapshots/LIVE``. Only after that
   rename does it append to ``snapshots/history.json`` and prune. Killed before
   the rename, nothing a reader looks at has changed (a stray temp file at most);
   killed after it, the new snapshot is live and whole, and the next publish,
   rollback or prune appends the missing history entry (``LIVE`` is the truth,
   the history a log of it).
3. Pruning (after each publish, and as each build begins) keeps the ``keep``
   (``REC_SNAPSHOTS_KEEP``) most recently published snapshots plus the live one.
   A doomed folder is first renamed to ``.trash-<id>`` (so no reader or
   rollback can pick up a half-deleted snapshot), its Milvus server collection
   dropped, then the folder removed; a kill in between leaves a trash folder the
   next prune finishes. Folders never published are left alone while
   anything in them is younger than ``abandoned_after`` (a build in progress),
   and removed once older (an abandoned build). The history keeps its last
   :data:`HISTORY_KEPT` entries and every older one that names a snapshot still
   held, so it does not grow with every publish.
4. :func:`rollback` makes the most recent earlier snapshot live again, skipping
   snapshots that were themselves rolled back from (rolling back twice never
   returns to the bad one).

Publish, rollback and prune hold an exclusive lock on ``snapshots/.lock`` so two
publishers cannot interleave.

With ``REC_DATA_URI`` set the same steps run against the object store (:mod:`rec_core.snapshot.remote`): the
visible change is the store's ``LIVE`` swapped with ``If-Match`` (publishers on other machines are not held off by
the local lock, so the loser of a race fails having changed nothing), pruning deletes the store's copy too, and
this machine's ``LIVE`` and history are a mirror of the store's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rec_core.atomic import write_bytes_atomic
from rec_core.settings import PathSettings, Settings
from rec_core.snapshot.layout import (
    BUILD_FILE,
    LIVE_POINTER,
    MANIFEST_FILE,
    SNAPSHOT_ID,
    SnapshotError,
    SnapshotPaths,
    live_snapshot_id,
    snapshot_folders,
    snapshot_paths,
)
from rec_core.snapshot.manifest import Manifest, read_manifest, try_manifest, verify_checksums
from rec_core.snapshot.remote import HISTORY_FILE, RemoteSnapshots, locked, remote_snapshots, sync_live

log = logging.getLogger(__name__)

TRASH_PREFIX = ".trash-"
# A never-published folder untouched for this long is an abandoned build, not one in progress.
ABANDONED_AFTER = dt.timedelta(days=1)
# Publish-log entries kept beyond those naming a snapshot still held (each API worker on a store rereads the log):
# enough that a machine away for that many publishes still learns which of its copies were pruned.
HISTORY_KEPT = 1000


@dataclass(frozen=True, slots=True)
class PublishResult:
    snapshot_id: str
    previous: str | None  # the snapshot live before; None on the first publish
    changed: bool  # False when the snapshot was live already (publishing is idempotent)
    published_at: str | None
    model_version: str
    pruned: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One snapshot folder, for humans (``python -m jobs.publish --list``)."""

    snapshot_id: str
    state: str  # live | published | validated | building
    live: bool
    published_at: str | None  # last time it became live
    model_version: str | None
    counts: dict[str, int]


def publish(
    paths: PathSettings,
    snapshot_id: str,
    *,
    keep: int,
    abandoned_after: dt.timedelta = ABANDONED_AFTER,
    allow_older: bool = False,
) -> PublishResult:
    """Make a validated snapshot live with one atomic pointer change, record it, then prune to the ``keep``
    most recently published snapshots (plus the live one).

    Idempotent: publishing the live snapshot again changes nothing (beyond repairing a history
    entry a killed publish did not get to write). A snapshot begun before the live one is refused unless
    ``allow_older``: an old pipeline run cleared and run again in the Airflow UI published its snapshot over a
    newer one, a rollback recorded as a publish.
    """
    snapshot = snapshot_paths(paths, snapshot_id)
    with _locked(paths) as remote:
        live = _recover(paths, remote)
        if live == snapshot_id:
            entry = _history(paths)[-1]
            return PublishResult(snapshot_id, live, False, entry.get("published_at"), entry.get("model_version", ""))
        if live is not None and not allow_older and _began(snapshot_id) < _began(live):
            raise SnapshotError(
                f"snapshot {snapshot_id} began before the live {live}: publishing it would serve older feeds as "
                "new ones. To go back, roll back (`python -m jobs.publish --rollback`), or publish it with "
                "--allow-older"
            )
        if remote is not None:
            remote.pull(snapshot_id)
        if not snapshot.root.is_dir():
            raise SnapshotError(f"no snapshot {snapshot_id} under {paths.snapshots_dir}")
        manifest = read_manifest(snapshot)
        if manifest.snapshot_id != snapshot_id:
            raise SnapshotError(f"snapshot {snapshot_id}: its manifest names {manifest.snapshot_id}")
        published_before = any(e["snapshot_id"] == snapshot_id for e in _history(paths))
        _verify_or_refuse(paths, snapshot, manifest, lenient_milvus=published_before)
        entry = _swap(paths, remote, snapshot_id, manifest.model_version, action="publish", previous=live)
        pruned = _prune(paths, remote, keep, abandoned_after)
    log.info("snapshot %s is live (previous: %s); pruned %s", snapshot_id, live, pruned or "nothing")
    return PublishResult(snapshot_id, live, True, entry["published_at"], manifest.model_version, pruned)


def _began(snapshot_id: str) -> str:
    """When the snapshot began, as its id's leading UTC time (``s20260101T000000Z-...``): sortable as text."""
    return snapshot_id.split("-", 1)[0]


def rollback(paths: PathSettings) -> str:
    """Make the previously published snapshot live again (atomically); returns its id."""
    if not paths.snapshots_dir.is_dir() and remote_snapshots(paths) is None:  # before a lock under a mistyped root
        raise SnapshotError(f"nothing has been published under {paths.snapshots_dir}: there is nothing to roll back")
    with _locked(paths) as remote:
        live = _recover(paths, remote)
        if live is None:
            raise SnapshotError("nothing has been published yet: there is nothing to roll back")
        history = _history(paths)
        target = _rollback_target(paths, remote, history, live)
        if target is None:
            earlier = sorted({e["snapshot_id"] for e in history} - {live})
            raise SnapshotError(
                f"no earlier published snapshot to roll back to from {live} (published before: {earlier or 'none'}, "
                "each pruned since or rolled back from); publish one with --snapshot ID"
            )
        snapshot = remote.pull(target) if remote is not None else snapshot_paths(paths, target)
        manifest = read_manifest(snapshot)
        _verify_or_refuse(paths, snapshot, manifest, lenient_milvus=True)
        _swap(paths, remote, target, manifest.model_version, action="rollback", previous=live)
    log.warning("rolled back from %s to %s", live, target)
    return target


def prune(paths: PathSettings, *, keep: int, abandoned_after: dt.timedelta = ABANDONED_AFTER) -> list[str]:
    """Delete what publishing no longer needs (see the module doc); returns the snapshot ids removed."""
    with _locked(paths) as remote:
        _recover(paths, remote)
        return _prune(paths, remote, keep, abandoned_after)


def live_snapshot(paths: PathSettings) -> SnapshotPaths | None:
    """The live snapshot's folder (its files brought from the store first, if it lives on one), or None before
    the first publish."""
    live = sync_live(paths)
    if live is None:
        return None
    snapshot = snapshot_paths(paths, live)
    if not snapshot.root.is_dir():
        raise SnapshotError(f"{LIVE_POINTER} names snapshot {live}, whose folder is missing")
    return snapshot


def list_snapshots(paths: PathSettings) -> list[SnapshotInfo]:
    """Every snapshot folder, oldest first, with its state; read-only."""
    root = paths.snapshots_dir
    remote = remote_snapshots(paths)
    if remote is not None:  # the store's snapshots, this machine's copy of the pointer and history brought first
        sync_live(paths, remote)
    if not root.is_dir():
        return []
    live = live_snapshot_id(paths)
    last: dict[str, dict] = {e["snapshot_id"]: e for e in _history(paths)}
    held = snapshot_folders(root)
    out = []
    for name in sorted(set(remote.ids()) if remote is not None else held):
        manifest, built_by = _describe(remote, SnapshotPaths(root / name))
        entry = last.get(name)
        if name == live:
            state = "live"
        elif entry is not None:
            state = "published"
        else:
            state = "validated" if manifest is not None else "building"
        model = entry.get("model_version") if entry else (manifest.model_version if manifest else built_by)
        out.append(
            SnapshotInfo(
                snapshot_id=name,
                state=state,
                live=name == live,
                published_at=entry.get("published_at") if entry else None,
                model_version=model,
                counts=manifest.counts if manifest else {},
            )
        )
    return out


def _describe(remote: RemoteSnapshots | None, snapshot: SnapshotPaths) -> tuple[Manifest | None, str | None]:
    """A snapshot's manifest (None before validation) and the model version its build names, read from this
    machine's copy or, for one it does not hold, from the store (without copying the snapshot here)."""
    if remote is None or snapshot.root.is_dir():
        manifest = try_manifest(snapshot)
        needed = manifest is None and snapshot.build_file.is_file()  # only then is build.json read, as before
        return manifest, snapshot.read_build().model_version if needed else None
    folder = remote.folder(snapshot.snapshot_id)
    manifest, build = folder.read(MANIFEST_FILE), folder.read(BUILD_FILE)
    try:
        parsed = Manifest.from_json(manifest.decode()) if manifest else None
    except (ValueError, KeyError, TypeError):
        parsed = None
    return parsed, json.loads(build).get("model_version") if build else None


def read_history(paths: PathSettings) -> list[dict]:
    """The publish log, oldest first: snapshot_id, published_at, model_version, action, previous (the store's,
    when snapshots live on one)."""
    remote = remote_snapshots(paths)
    return remote.history() if remote is not None else _history(paths)


# ---- internals ------------------------------------------------------------------------------------------------------


@contextmanager
def _locked(paths: PathSettings) -> Iterator[RemoteSnapshots | None]:
    """The local lock, and the store's snapshots when they live on one."""
    with locked(paths):
        yield remote_snapshots(paths)


def _verify_or_refuse(
    paths: PathSettings, snapshot: SnapshotPaths, manifest: Manifest, *, lenient_milvus: bool
) -> None:
    # A Lite file that has been live was opened by the API's Milvus Lite, which rewrites SQLite pages: its bytes
    # legitimately differ from validation time, so once published it is only required to exist.
    skip = frozenset({snapshot.milvus_lite_file.name}) if lenient_milvus else frozenset()
    if bad := verify_checksums(snapshot, manifest, skip=skip):
        _refuse_publish(snapshot.snapshot_id, [f"changed since validation: {', '.join(bad)}"])
    lite = not paths.milvus_uri and manifest.milvus_uri == snapshot.milvus_lite_file.name
    if lite and not snapshot.milvus_lite_file.is_file():
        _refuse_publish(snapshot.snapshot_id, [f"{snapshot.milvus_lite_file.name} missing"])


def _refuse_publish(snapshot_id: str, problems: list[str]) -> None:
    for problem in problems:
        log.error("snapshot %s not published: %s", snapshot_id, problem)
    raise SnapshotError(f"snapshot {snapshot_id} refused: " + "; ".join(problems))


def _swap(
    paths: PathSettings,
    remote: RemoteSnapshots | None,
    snapshot_id: str,
    model_version: str,
    *,
    action: str,
    previous: str | None,
) -> dict:
    """THE visible change (one rename, or one conditional write of the store's LIVE), then its log entry."""
    # Past HISTORY_KEPT entries the snapshots that exist decide which older ones stay: listed before the swap (and
    # only then), so that after it nothing but the log's own write can fail.
    held = _held(paths, remote) if len(_history(paths)) >= HISTORY_KEPT else set()
    if remote is not None:
        remote.swap(snapshot_id)
    else:
        write_bytes_atomic(paths.snapshots_dir / LIVE_POINTER, f"{snapshot_id}\n".encode())
    entry = {
        "snapshot_id": snapshot_id,
        "published_at": _now(),
        "model_version": model_version,
        "action": action,
        "previous": previous,
    }
    # Only the swap's winner writes the log (on a store, a prune elsewhere must not overwrite a rollback's entry).
    _write_history(paths, remote, _trimmed([*_history(paths), entry], held))
    return entry


def _recover(paths: PathSettings, remote: RemoteSnapshots | None) -> str | None:
    """Finish what a killed publish/prune left (call under the lock); returns the live id."""
    root = paths.snapshots_dir
    if remote is not None:
        remote.mirror()
        # The store's log, not this machine's copy of it: another machine may have logged a rollback since.
        remote.write_local_history()
    for tmp in root.glob(f".{LIVE_POINTER}.*.tmp"):
        tmp.unlink(missing_ok=True)
    for tmp in root.glob(f".{HISTORY_FILE}.*.tmp"):
        tmp.unlink(missing_ok=True)
    for trash in sorted(root.glob(f"{TRASH_PREFIX}*")):
        _remove_trash(paths, trash)
    live = live_snapshot_id(paths)
    history = _history(paths)
    if live is not None and (not history or history[-1]["snapshot_id"] != live):
        # Killed between the pointer rename and the history write: LIVE is the truth, log it now.
        manifest = try_manifest(SnapshotPaths(root / live))
        when = dt.datetime.fromtimestamp((root / LIVE_POINTER).stat().st_mtime, dt.UTC)
        history.append(
            {
                "snapshot_id": live,
                "published_at": when.isoformat(timespec="seconds"),
                "model_version": manifest.model_version if manifest else None,
                "action": "recovered",
                "previous": history[-1]["snapshot_id"] if history else None,
            }
        )
        _write_history(paths, remote, history)
        log.warning("history.json lacked the live snapshot %s (a publish was killed after its swap); added", live)
    return live


def _rollback_target(paths: PathSettings, remote: RemoteSnapshots | None, history: list[dict], live: str) -> str | None:
    # A snapshot rolled back FROM is bad until someone publishes it again explicitly.
    retired: set[str] = set()
    for entry in history:
        if entry.get("action") == "rollback" and entry.get("previous"):
            retired.add(entry["previous"])
        elif entry.get("action", "publish") == "publish":
            retired.discard(entry["snapshot_id"])
    seen: set[str] = set()
    for entry in reversed(history):
        sid = entry["snapshot_id"]
        if sid in seen or sid == live or sid in retired:
            continue
        seen.add(sid)
        if remote.validated(sid) if remote is not None else snapshot_paths(paths, sid).manifest_file.is_file():
            return sid
    return None


def _prune(
    paths: PathSettings, remote: RemoteSnapshots | None, keep_published: int, abandoned_after: dt.timedelta
) -> list[str]:
    root = paths.snapshots_dir
    live = live_snapshot_id(paths)
    keep: list[str] = []
    for entry in reversed(_history(paths)):
        if entry["snapshot_id"] not in keep:
            keep.append(entry["snapshot_id"])
    keep = keep[:keep_published]
    published = {e["snapshot_id"] for e in _history(paths)}
    now = dt.datetime.now(dt.UTC).timestamp()
    held = snapshot_folders(root)
    stored = set(remote.ids()) if remote is not None else set()
    doomed = []
    for name in sorted(held | stored):
        if name == live or name in keep:
            continue
        if name not in published and now - _touched_at(root / name, remote) < abandoned_after.total_seconds():
            continue  # never published and recently touched: a build in progress (or awaiting publish)
        doomed.append(name)
    for name in doomed:
        if name not in published:
            log.warning("removing abandoned snapshot %s (untouched for over %s)", name, abandoned_after)
        trash = root / f"{TRASH_PREFIX}{name}"
        if name in held:
            os.replace(root / name, trash)  # atomic: from here on no reader or rollback can pick it
        if remote is not None and name in stored:
            remote.delete(name)
        if name in held:
            _remove_trash(paths, trash)
        elif paths.milvus_uri:
            _drop_collection_or_warn(paths, name)
    return doomed


def _held(paths: PathSettings, remote: RemoteSnapshots | None) -> set[str]:
    """The snapshots that exist: this machine's folders and, on a store, the store's."""
    return snapshot_folders(paths.snapshots_dir) | (set(remote.ids()) if remote is not None else set())


def _trimmed(history: list[dict], remaining: set[str]) -> list[dict]:
    """The last HISTORY_KEPT entries, and older ones that name a remaining snapshot (as published, or as rolled
    back from: what pruning and rollback read of it)."""
    tail = len(history) - HISTORY_KEPT
    return [
        e for i, e in enumerate(history) if i >= tail or e["snapshot_id"] in remaining or e.get("previous") in remaining
    ]


def _remove_trash(paths: PathSettings, trash: Path) -> None:
    snapshot_id = trash.name[len(TRASH_PREFIX) :]
    if paths.milvus_uri and SNAPSHOT_ID.match(snapshot_id) and not _drop_collection_or_warn(paths, snapshot_id):
        return  # keep the trash folder so the next prune retries the drop
    shutil.rmtree(trash, ignore_errors=True)


def _drop_collection_or_warn(paths: PathSettings, snapshot_id: str) -> bool:
    try:
        _drop_collection(paths, snapshot_id)
    except Exception as exc:
        log.warning("could not drop the Milvus collection of %s (will retry): %s", snapshot_id, exc)
        return False
    return True


def _drop_collection(paths: PathSettings, snapshot_id: str) -> None:
    from rec_core.snapshot.vector_store import open_client  # pymilvus is slow to import: only in server mode

    name = SnapshotPaths(paths.snapshots_dir / snapshot_id).collection_name(paths)
    client = open_client(paths.milvus_uri)
    try:
        # Its own collection and those of the other model versions it carried (``<name>__<version>``).
        for collection in client.list_collections():
            if collection == name or collection.startswith(f"{name}__"):
                client.drop_collection(collection)
                log.info("dropped Milvus collection %s", collection)
    finally:
        client.close()


def _touched_at(folder: Path, remote: RemoteSnapshots | None) -> float:
    """When a build last wrote to its folder: here, or (snapshots on a store) on any machine, its last push."""
    pushed = (remote.folder(folder.name).modified() or 0.0) if remote is not None else 0.0
    if not folder.is_dir():
        return pushed
    newest = max(folder.stat().st_mtime, pushed)
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                newest = max(newest, (Path(dirpath) / name).stat().st_mtime)
            except FileNotFoundError:
                continue
    return newest


def _history(paths: PathSettings) -> list[dict]:
    path = paths.snapshots_dir / HISTORY_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def _write_history(paths: PathSettings, remote: RemoteSnapshots | None, history: list[dict]) -> None:
    if remote is not None:
        remote.write_history(history)
    else:
        write_bytes_atomic(paths.snapshots_dir / HISTORY_FILE, json.dumps(history, indent=2).encode())


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def publish_stage(
    settings: Settings, snapshot_id: str, *, abandoned_after: dt.timedelta = ABANDONED_AFTER
) -> dict[str, Any]:
    """The ``publish`` stage: publish an already validated snapshot; returns the result as a dict."""
    result = publish(settings.paths, snapshot_id, keep=settings.batch.snapshots_keep, abandoned_after=abandoned_after)
    return dataclasses.asdict(result)
