"""Reading a published snapshot folder into a :class:`feed_api.snapshot_view.SnapshotView`, and the views of the
other model versions it carries.

Everything comes from the snapshot folder (the model store only for a snapshot begun before it carried its
model). The catalogue codes, feeds, trending list and vectors are the serving index validation wrote, mapped
(:mod:`rec_core.snapshot.serving_index`); a row whose id breaks the id rule was left out of it and is counted in
``skipped_ids``. A version's view shares the snapshot's catalogue arrays, feeds, trending list and ranking state:
only its model, vectors, collection and ranker are its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa

from feed_api.snapshot_view import AddedVideos, SnapshotView
from rec_core.experiments.assign import Assignment
from rec_core.experiments.spec import experiments_from_build
from rec_core.feed import policy
from rec_core.feed.engagement import EngagementHead
from rec_core.feed.rank_stage import RankCatalogue, RankModel, load_rank_model
from rec_core.model.inference import as_of_ms, serving_catalogue
from rec_core.model.vocabs import Vocabs
from rec_core.rank.ranker import Ranker
from rec_core.settings import PathSettings
from rec_core.snapshot.layout import BuildInfo, SnapshotPaths
from rec_core.snapshot.manifest import read_manifest
from rec_core.snapshot.model_copy import load_snapshot_model
from rec_core.snapshot.serving_index import RankedList, SpaceArrays, load_serving_index
from rec_core.snapshot.vector_store import VectorStore
from rec_core.snapshot.watch_history import open_watch_history

log = logging.getLogger(__name__)


def load_view(path_settings: PathSettings, paths: SnapshotPaths) -> SnapshotView:
    """Map a published snapshot's serving index and open its Milvus collection; raises on anything missing."""
    started = time.perf_counter()
    read_manifest(paths)  # a snapshot without one was never validated
    policy.warm_up()  # the live path's feed policy is compiled: here, not in the first request
    build = paths.read_build()
    index = load_serving_index(paths, build)
    own = index.spaces[build.model_version]
    model = load_snapshot_model(path_settings, paths, build)
    catalogue = serving_catalogue(
        model,
        build,
        video_ids=index.video_ids,
        creator_ids=index.creator_ids,
        created_ms=index.created_ms,
        text=index.catalogue_text,
        dense=index.catalogue_dense,
    )
    store = _open_store(path_settings, paths, build)
    view = SnapshotView(
        snapshot_id=paths.snapshot_id,
        build=build,
        published_at=time.time(),
        as_of_ms=as_of_ms(build),
        video_ids=index.video_ids,
        video_code=index.video_code,
        creator_ids=index.creator_ids,
        created_ms=index.created_ms,
        video_vectors=own.video_vectors,
        feeds=index.feeds,
        trending=index.trending,
        trending_vector=_trending_vector(own.video_vectors, index.trending),
        user_row=own.user_row,
        user_vectors=own.user_vectors,
        model=model,
        catalogue=catalogue,
        store=store,
        known_creators=frozenset(np.unique(index.creator_ids).tolist()),  # a string per creator, not per video
        skipped_ids=index.skipped_ids,
        assignment=Assignment(experiments_from_build(build.experiments)),
        watched=open_watch_history(paths, build),
    )
    ranker = load_rank_model(path_settings, paths, build, model)
    if ranker is not None:
        view.ranking = ranker.over(index.video_ids, view.video_vectors)
    try:
        for version in build.extra_versions:
            space = paths.space(version, build)
            view.spaces[version] = _space_view(path_settings, space, build.space(version), view, index.spaces[version])
    except Exception:
        view.close()
        raise
    # What a load reads through Arrow (the model's vocabularies; the catalogue's Parquet parts, before the catalogue
    # came from the mapped index, grew it by ~100 MiB at 500,000 videos) is freed but kept by Arrow's allocator: each
    # worker would hold it for the life of the snapshot (bench_serving_memory).
    pa.default_memory_pool().release_unused()
    log.info(
        "snapshot %s loaded in %.1fs (%s): %d videos, %d users with feeds (%d items), %d user vectors, "
        "%d watched pairs",
        paths.snapshot_id,
        time.perf_counter() - started,
        "mapped" if build.serving_index else "indexed on the heap: built before serve/",
        len(index.video_ids),
        len(index.feeds.user_row),
        len(index.feeds.items),
        len(own.user_row),
        len(view.watched),
    )
    return view


def _open_store(path_settings: PathSettings, paths: SnapshotPaths, build: BuildInfo) -> VectorStore:
    store = VectorStore(paths.milvus_uri(path_settings), paths.collection_name(path_settings), build.embedding_dim)
    if not store.exists():
        store.close()
        raise ValueError(f"snapshot {paths.snapshot_id}: Milvus collection {store.collection} is missing")
    return store


def _trending_vector(vectors: np.ndarray, trending: RankedList) -> np.ndarray:
    """The mean of the top trending videos' vectors: where a user with nothing searches from."""
    top = trending.codes[: min(50, len(trending))]
    centroid = vectors[top].mean(axis=0) if len(top) else vectors.mean(axis=0)
    return (centroid / max(float(np.linalg.norm(centroid)), 1e-12)).astype(np.float32)


def _space_view(
    path_settings: PathSettings, space: SnapshotPaths, build: BuildInfo, root: SnapshotView, arrays: SpaceArrays
) -> SnapshotView:
    """Another model version's view of the snapshot: ``root``'s catalogue, feeds and trending list with that
    version's model, video and user vectors (by the same codes), collection and ranker."""
    vectors = arrays.video_vectors
    model = load_snapshot_model(path_settings, space, build)
    # The same videos and inputs, read by this version's vocabulary.
    catalogue = replace(root.catalogue, item_idx=Vocabs.lookup(model.vocabs.items, root.catalogue.video_ids))
    view = replace(
        root,
        build=build,
        video_vectors=vectors,
        trending_vector=_trending_vector(vectors, root.trending),
        user_row=arrays.user_row,
        user_vectors=arrays.user_vectors,
        model=model,
        catalogue=catalogue,
        store=_open_store(path_settings, space, build),
        added=AddedVideos(),
        ranking=None,
        spaces={},
    )
    if root.ranking is not None and build.ranker_applied:
        # begin_snapshot writes every space's feature state from one state: share the root's, load the ranker.
        shared = root.ranking
        ranker = RankModel(Ranker.load(space.rank_dir), shared.model.state, EngagementHead.of(model.model.engagement))
        view.ranking = RankCatalogue(ranker, shared.item_rows, vectors)
    elif (ranker := load_rank_model(path_settings, space, build, model)) is not None:
        view.ranking = ranker.over(root.video_ids, vectors)
    return view
