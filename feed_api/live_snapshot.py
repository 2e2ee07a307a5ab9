"""The snapshot a request is served from now, or the 503 that says why there is none yet."""

from __future__ import annotations

from feed_api.errors import ApiError
from feed_api.snapshot_view import SnapshotView
from feed_api.snapshots import SnapshotRegistry
from rec_core.settings import PathSettings
from rec_core.snapshot.layout import live_snapshot_id


def live_view(registry: SnapshotRegistry, paths: PathSettings) -> SnapshotView:
    """The live snapshot; a 503 ``not_ready`` before one is loaded."""
    view = registry.live
    if view is None:
        raise ApiError(503, "not_ready", None, _not_ready_reason(registry, paths), "retry in a few seconds")
    return view


def _not_ready_reason(registry: SnapshotRegistry, paths: PathSettings) -> str:
    if registry.last_error:
        return registry.last_error
    # Only while nothing is served: a file read per refused request costs nothing then.
    published = live_snapshot_id(paths)
    if published is not None:
        return f"snapshot {published} is loading"
    return "no snapshot has been published yet (run `make pipeline`)"
