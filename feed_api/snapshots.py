"""Which snapshots this process serves: the live one, plus retained ones that cursors still walk.

A background thread calls :meth:`SnapshotRegistry.refresh` every ``REC_API_RELOAD_MS``: when ``LIVE``
(the object store's, with ``REC_DATA_URI``: its files are copied here first) names a new snapshot it is loaded
off the request path and then swapped in with one reference assignment, so a request sees the old snapshot or
the new one, never a mix. If the new one fails to load the old one keeps serving (docs/architecture.md,
invariant 4) and the failure is logged and retried with a back-off. The previous live snapshot stays loaded, so
walks that began on it continue on it; a retained snapshot not in memory (after a restart) is loaded on the
first cursor that names it. A snapshot whose folder is gone (pruned) is dropped, and its cursors get
``cursor_expired``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from feed_api.snapshot_load import load_view
from feed_api.snapshot_view import SnapshotView
from rec_core.settings import BatchSettings, PathSettings
from rec_core.snapshot.layout import SnapshotError, snapshot_paths
from rec_core.snapshot.remote import fetch_snapshot, remote_snapshots, sync_live
from rec_core.storage.object_store import StoreError

log = logging.getLogger(__name__)

RETRY_S = 30.0  # wait before retrying a snapshot that failed to load


class SnapshotRegistry:
    def __init__(
        self, paths: PathSettings, batch: BatchSettings, on_loaded: Callable[[SnapshotView], None] | None = None
    ) -> None:
        self._paths = paths
        self._remote = remote_snapshots(paths)  # one store client for the process's life (None: local snapshots)
        self._batch = batch
        self._on_loaded = on_loaded or (lambda view: None)
        self._views: OrderedDict[str, SnapshotView] = OrderedDict()
        self._failed: dict[str, float] = {}  # snapshot id -> time of the failed load
        self._closing: list[SnapshotView] = []  # evicted; closed one tick later, after requests using them end
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.live: SnapshotView | None = None
        self.last_error: str | None = None

    def refresh(self) -> None:
        """Pick up a newly published snapshot and forget pruned ones; never raises."""
        for view in self._closing:
            view.close()
        self._closing = []
        try:
            # From the object store when snapshots live on one (the live snapshot's files are brought here first).
            live_id = sync_live(self._paths, self._remote)
        except (OSError, StoreError, SnapshotError) as exc:
            log.warning("cannot read the LIVE pointer: %s", exc)
            return
        self._forget_pruned()
        if live_id is None or (self.live is not None and self.live.snapshot_id == live_id):
            return
        if time.monotonic() - self._failed.get(live_id, -RETRY_S) < RETRY_S:
            return
        view = self._load(live_id)
        if view is not None:
            with self._lock:
                self.live = view
            log.info("now serving snapshot %s", live_id)

    def get(self, snapshot_id: str) -> SnapshotView | None:
        """The snapshot a cursor names, loading a retained one on demand; None when it is gone."""
        view = self._views.get(snapshot_id)
        if view is not None:
            return view
        try:
            snapshot_paths(self._paths, snapshot_id)
            held = fetch_snapshot(self._paths, snapshot_id, self._remote)
        except (OSError, StoreError, SnapshotError) as exc:
            log.warning("cannot fetch snapshot %s: %s", snapshot_id, exc)
            return None
        return self._load(snapshot_id) if held else None

    def loaded(self, snapshot_id: str) -> SnapshotView | None:
        """The snapshot if it is in memory now; never loads (safe on the event loop)."""
        return self._views.get(snapshot_id)

    def views(self) -> list[SnapshotView]:
        return list(self._views.values())

    def close(self) -> None:
        with self._lock:
            for view in [*self._views.values(), *self._closing]:
                view.close()
            self._views.clear()
            self._closing = []
            self.live = None

    def _load(self, snapshot_id: str) -> SnapshotView | None:
        with self._load_lock:  # one load at a time: a snapshot takes seconds and hundreds of MB
            if snapshot_id in self._views:
                return self._views[snapshot_id]
            started = time.perf_counter()
            try:
                view = load_view(self._paths, snapshot_paths(self._paths, snapshot_id))
                self._on_loaded(view)
            except Exception as exc:  # keep serving what we have; say why this one is not served
                self._failed[snapshot_id] = time.monotonic()
                self.last_error = f"snapshot {snapshot_id} failed to load: {exc}"
                log.exception("snapshot %s failed to load; still serving %s", snapshot_id, self.live_id)
                return None
            self._failed.pop(snapshot_id, None)
            with self._lock:
                self._views[snapshot_id] = view
                self._evict()
            log.info("snapshot %s ready in %.1fs", snapshot_id, time.perf_counter() - started)
            return view

    @property
    def live_id(self) -> str | None:
        return self.live.snapshot_id if self.live else None

    def _evict(self) -> None:
        keep = self._batch.snapshots_keep + 1
        for snapshot_id in list(self._views):
            if len(self._views) <= keep:
                break
            if self.live is None or snapshot_id != self.live.snapshot_id:
                self._closing.append(self._views.pop(snapshot_id))

    def _forget_pruned(self) -> None:
        with self._lock:
            for snapshot_id, view in list(self._views.items()):
                if not (self._paths.snapshots_dir / snapshot_id).is_dir() and view is not self.live:
                    log.info("snapshot %s was pruned; its cursors now expire", snapshot_id)
                    self._closing.append(self._views.pop(snapshot_id))
