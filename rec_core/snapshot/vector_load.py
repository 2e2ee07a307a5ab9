"""Loads a snapshot's video vectors into its Milvus collection (the ``load_vectors`` stage) and checks the count.

A snapshot that carries other model versions' spaces (an experiment's arms, :mod:`rec_core.snapshot.layout`) gets
one collection per space, in the same Milvus Lite file or on the same server."""

from __future__ import annotations

import logging
import time

import pyarrow.compute as pc

from rec_core.progress import Progress
from rec_core.settings import Settings
from rec_core.snapshot.files import VIDEO_ID, read_vector_shards, vectors_array
from rec_core.snapshot.layout import BuildInfo, SnapshotError, SnapshotPaths, snapshot_paths
from rec_core.snapshot.vector_store import VectorStore

log = logging.getLogger(__name__)

BATCH = 10_000  # rows per progress step; the store splits requests further by size
MAX_SKIPPED_EXAMPLES = 5


def load_vectors(settings: Settings, snapshot_id: str) -> dict:
    """Every space's collection of the snapshot; returns the build model's summary (and each version's rows)."""
    paths = snapshot_paths(settings.paths, snapshot_id)
    build = paths.read_build()
    summaries = [_load_space(settings, paths, space_build) for paths, space_build in paths.spaces(build)]
    summary = summaries[0]
    if len(summaries) > 1:
        summary["versions"] = {s["collection"]: s["rows"] for s in summaries[1:]}
    return summary


def _load_space(settings: Settings, paths: SnapshotPaths, build: BuildInfo) -> dict:
    started = time.perf_counter()
    snapshot_id = paths.snapshot_id
    table = read_vector_shards(paths, "videos", build.video_shards)
    ids = table.column(VIDEO_ID).to_pylist()
    vectors = vectors_array(table)
    if vectors.shape[1] != build.embedding_dim:
        raise SnapshotError(f"video vectors are {vectors.shape[1]}-d, snapshot expects {build.embedding_dim}")
    if pc.count_distinct(table.column(VIDEO_ID)).as_py() != len(ids):
        raise SnapshotError(f"snapshot {snapshot_id}: a video id appears in more than one vector row")
    uri, collection = paths.milvus_uri(settings.paths), paths.collection_name(settings.paths)
    log.info("loading %d video vectors into %s (collection %s)", len(ids), uri, collection)
    with VectorStore(uri, collection, build.embedding_dim) as store:
        store.create(drop_existing=True)
        progress = Progress(f"load_vectors {snapshot_id}", len(ids), logger=log)
        skipped: dict[str, str] = {}
        for lo in range(0, len(ids), BATCH):
            hi = min(lo + BATCH, len(ids))
            # A fresh collection and distinct ids, so nothing to replace. A request the client retries after it
            # was applied would hold an id twice: Milvus counts both rows, so the count check below fails the stage.
            skipped.update(store.insert(ids[lo:hi], vectors[lo:hi]).skipped)
            progress.advance(hi - lo)
        store.flush()
        count = store.count()
    expected = len(ids) - len(skipped)
    if count != expected:
        raise SnapshotError(f"collection {collection} at {uri} holds {count} vectors, expected {expected}")
    examples = [f"{i!a}: {why}" for i, why in list(skipped.items())[:MAX_SKIPPED_EXAMPLES]]
    if skipped:
        log.warning("snapshot %s: %d video id(s) not indexed, e.g. %s", snapshot_id, len(skipped), examples)
    return {
        "snapshot": snapshot_id,
        "uri": uri,
        "collection": collection,
        "rows": count,
        "skipped_ids": len(skipped),
        "skipped_examples": examples,
        "seconds": round(time.perf_counter() - started, 2),
    }
