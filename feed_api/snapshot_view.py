"""One published snapshot, held in memory for serving.

Everything a page needs is here as flat numpy arrays, so a precomputed page is
a few slices and no database query (docs/architecture.md, invariant 4):

* the catalogue of the snapshot (video ids sorted, creator, creation time, and
  each video's position, its "code", which feeds and cursors refer to),
* every user's ranked feed as one concatenated array of codes with a
  user -> [start, end) index, scores, and reasons as a dictionary,
* the trending list, the users' batch vectors, and the snapshot's Milvus
  collection for live search,
* the model that built it and the snapshot's catalogue (the video tower's
  inputs, written by the video shards), for the user tower online and for
  encoding new videos into the same vector space (loaded once),
* when its build applied the ranker, the ranker and the feature state as of
  the build (:mod:`rec_core.feed.rank_stage`), so live pages run the batch's
  own ranking stage.

A snapshot that carries other model versions for an experiment's arms (:mod:`rec_core.snapshot.layout`) loads a
view per version too (:attr:`SnapshotView.spaces`): the same catalogue, feeds and trending list, with that version's
model, vectors, collection and ranker. A user's walk reads the space of their arm (:meth:`SnapshotView.in_space`),
so a fresh user of that arm gets that version's user tower, and a walk past its list that version's live search.

Everything comes from the snapshot folder (the model store only for a snapshot
begun before it carried its model): serving never reads the lake, so a
snapshot keeps serving after its lake version is pruned.

A row whose id breaks the id rule (:mod:`rec_core.ids`: a snapshot built from a
lake an older API or batch let such an id into) is left out with a warning and
counted in ``skipped_ids``; the rest loads, so one bad id does not keep every
later snapshot from going live.

Loading happens off the request path (:mod:`feed_api.snapshots`), and the
object is never mutated afterwards except for the videos added through the API,
which live in :class:`AddedVideos` under a lock.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from rec_core.experiments.assign import Assignment, Placement
from rec_core.experiments.spec import experiments_from_build
from rec_core.feed.catalogue import codes_of
from rec_core.feed.engagement import EngagementHead
from rec_core.feed.rank_stage import RankCatalogue, RankInputs, RankModel, load_rank_model
from rec_core.ids import id_problems
from rec_core.model.features import Catalogue
from rec_core.model.inference import (
    OnlineUserVector,
    UserProfile,
    as_of_ms,
    snapshot_catalogue,
    user_vector_from_profile,
)
from rec_core.model.store import LoadedModel
from rec_core.rank.ranker import Ranker
from rec_core.settings import PathSettings
from rec_core.snapshot.files import read_vector_shards, vectors_array
from rec_core.snapshot.layout import BuildInfo, SnapshotPaths
from rec_core.snapshot.manifest import read_manifest
from rec_core.snapshot.model_copy import load_snapshot_model
from rec_core.snapshot.vector_store import VectorStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RankedList:
    """Ranked items as catalogue codes, with scores and reasons (``reasons[reason_codes[i]]``)."""

    codes: np.ndarray  # int32
    scores: np.ndarray  # float32
    reason_codes: np.ndarray  # int32
    reasons: list[str]

    def __len__(self) -> int:
        return len(self.codes)


@dataclass(frozen=True, slots=True)
class FeedIndex:
    """All users' feeds, concatenated in (user, rank) order."""

    user_row: dict[str, int]
    offsets: np.ndarray  # int64, len(users) + 1
    items: RankedList

    def bounds(self, user_id: str) -> tuple[int, int] | None:
        row = self.user_row.get(user_id)
        return None if row is None else (int(self.offsets[row]), int(self.offsets[row + 1]))


@dataclass(slots=True)
class AddedVideos:
    """Videos posted to this API since the snapshot was built: searchable in its collection at once."""

    creators: dict[str, str] = field(default_factory=dict)
    created_ms: dict[str, int] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    payload_hash: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(slots=True)
class SnapshotView:
    snapshot_id: str
    build: BuildInfo
    published_at: float  # unix time this process saw it live (for the snapshot age metric)
    as_of_ms: int
    video_ids: np.ndarray  # object, sorted: code -> id
    video_code: dict[str, int]
    creator_ids: np.ndarray  # object, by code
    created_ms: np.ndarray  # int64, by code
    video_vectors: np.ndarray  # float32 (n, dim), by code
    feeds: FeedIndex
    trending: RankedList
    trending_vector: np.ndarray  # the mean of the top trending videos' vectors: a user with nothing
    user_row: dict[str, int]
    user_vectors: np.ndarray
    model: LoadedModel
    catalogue: Catalogue
    store: VectorStore
    known_creators: frozenset[str]
    added: AddedVideos = field(default_factory=AddedVideos)
    skipped_ids: dict[str, int] = field(default_factory=dict)  # "videos" / "users" -> rows left out for their id
    ranking: RankCatalogue | None = None  # the build's ranker over these codes; None: the towers' order
    assignment: Assignment = field(default_factory=lambda: Assignment([]))  # the build's experiments' arms
    spaces: dict[str, SnapshotView] = field(default_factory=dict)  # other model versions' views, by version

    @property
    def dim(self) -> int:
        return self.video_vectors.shape[1]

    @property
    def model_version(self) -> str:
        return self.build.model_version

    def in_space(self, placement: Placement | None) -> SnapshotView:
        """The view a user of ``placement``'s arm is served from: their arm's model version's, else this one."""
        return self if placement is None else self.spaces.get(placement.variant, self)

    def all_spaces(self) -> list[SnapshotView]:
        return [self, *self.spaces.values()]

    def catalogue_size(self) -> int:
        return len(self.video_ids) + len(self.added.creators)

    def creator_of(self, video_id: str) -> str | None:
        code = self.video_code.get(video_id)
        if code is not None:
            return str(self.creator_ids[code])
        return self.added.creators.get(video_id)

    def created_of(self, video_id: str) -> int:
        code = self.video_code.get(video_id)
        return int(self.created_ms[code]) if code is not None else self.added.created_ms.get(video_id, self.as_of_ms)

    def known_video(self, video_id: str) -> bool:
        return video_id in self.video_code or video_id in self.added.creators

    def video_vector(self, video_id: str) -> np.ndarray | None:
        code = self.video_code.get(video_id)
        return self.video_vectors[code] if code is not None else self.added.vectors.get(video_id)

    def batch_vector(self, user_id: str) -> np.ndarray | None:
        row = self.user_row.get(user_id)
        return None if row is None else self.user_vectors[row]

    def profile_vector(self, profile: UserProfile) -> OnlineUserVector:
        """The user tower online, in this snapshot's vector space."""
        return user_vector_from_profile(self.model, self.catalogue, self.model.stats, profile, self.known_creators)

    def ranking_for(self, user_id: str, vector: np.ndarray) -> RankInputs | None:
        """The ranker stage's context for one user whose candidates were retrieved with ``vector``."""
        return None if self.ranking is None else self.ranking.inputs([user_id], vector[None, :])

    def close(self) -> None:
        for view in self.all_spaces():
            view.store.close()


def load_view(path_settings: PathSettings, paths: SnapshotPaths) -> SnapshotView:
    """Read a published snapshot into memory and open its Milvus collection; raises on anything missing."""
    started = time.perf_counter()
    read_manifest(paths)  # a snapshot without one was never validated
    build = paths.read_build()
    videos, bad_videos = _without_bad_ids(paths, read_vector_shards(paths, "videos", build.video_shards), "videos")
    video_ids = np.asarray(videos.column("video_id").to_pylist(), dtype=object)
    order = np.argsort(video_ids, kind="stable")
    video_ids = video_ids[order]
    vectors = vectors_array(videos)[order]
    codes = pl.DataFrame({"video_id": video_ids.astype(str), "code": np.arange(len(video_ids), dtype=np.int32)})

    model = load_snapshot_model(path_settings, paths, build)
    catalogue = snapshot_catalogue(paths, build, model)
    meta = pl.DataFrame(
        {
            "video_id": catalogue.video_ids.astype(str),
            "creator_id": catalogue.creator_ids.astype(str),
            "created_ms": catalogue.created_ms,
        }
    )
    meta = codes.join(meta, on="video_id", how="left").sort("code")
    if meta["creator_id"].null_count():
        missing = meta.filter(pl.col("creator_id").is_null())["video_id"].head(3).to_list()
        raise ValueError(f"snapshot {paths.snapshot_id}: vectors for videos its catalogue lacks, e.g. {missing}")

    feeds = _feed_index(paths, build, codes, bad_videos)
    trending_rows = pl.read_parquet(paths.trending_file).filter(~pl.col("video_id").is_in(bad_videos))
    trending = _ranked(trending_rows.sort("rank"), codes)
    users, bad_users = _without_bad_ids(paths, read_vector_shards(paths, "users", build.user_shards), "users")
    user_ids = users.column("user_id").to_pylist()
    store = _open_store(path_settings, paths, build)
    view = SnapshotView(
        snapshot_id=paths.snapshot_id,
        build=build,
        published_at=time.time(),
        as_of_ms=as_of_ms(build),
        video_ids=video_ids,
        video_code={v: i for i, v in enumerate(video_ids.tolist())},
        creator_ids=meta["creator_id"].to_numpy().astype(object),
        created_ms=meta["created_ms"].to_numpy().astype(np.int64),
        video_vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        feeds=feeds,
        trending=trending,
        trending_vector=_trending_vector(vectors, trending),
        user_row={u: i for i, u in enumerate(user_ids)},
        user_vectors=np.ascontiguousarray(vectors_array(users), dtype=np.float32),
        model=model,
        catalogue=catalogue,
        store=store,
        known_creators=frozenset(catalogue.creator_ids.tolist()),
        skipped_ids={k: len(v) for k, v in (("videos", bad_videos), ("users", bad_users)) if v},
        assignment=Assignment(experiments_from_build(build.experiments)),
    )
    ranker = load_rank_model(path_settings, paths, build, model)
    if ranker is not None:
        view.ranking = ranker.over(video_ids, view.video_vectors)
    try:
        for version in build.extra_versions:
            view.spaces[version] = _space_view(path_settings, paths.space(version, build), build.space(version), view)
    except Exception:
        view.close()
        raise
    log.info(
        "snapshot %s loaded in %.1fs: %d videos, %d users with feeds (%d items), %d user vectors",
        paths.snapshot_id,
        time.perf_counter() - started,
        len(video_ids),
        len(feeds.user_row),
        len(feeds.items),
        len(user_ids),
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
    path_settings: PathSettings, space: SnapshotPaths, build: BuildInfo, root: SnapshotView
) -> SnapshotView:
    """Another model version's view of the snapshot: ``root``'s catalogue, feeds and trending list with that
    version's model, video and user vectors (by the same codes), collection and ranker."""
    videos, _ = _without_bad_ids(space, read_vector_shards(space, "videos", build.video_shards), "videos")
    ids = pl.Series(videos.column("video_id").combine_chunks(), dtype=pl.String)
    rows = codes_of(pl.Series(root.video_ids.astype(str), dtype=pl.String), ids)
    if (rows < 0).any():
        raise ValueError(f"snapshot {space.snapshot_id}: model version {build.model_version} lacks video vectors")
    vectors = np.ascontiguousarray(vectors_array(videos)[rows], dtype=np.float32)
    users, _ = _without_bad_ids(space, read_vector_shards(space, "users", build.user_shards), "users")
    model = load_snapshot_model(path_settings, space, build)
    catalogue = snapshot_catalogue(space, build, model, shared=root.catalogue)
    view = replace(
        root,
        build=build,
        video_vectors=vectors,
        trending_vector=_trending_vector(vectors, root.trending),
        user_row={u: i for i, u in enumerate(users.column("user_id").to_pylist())},
        user_vectors=np.ascontiguousarray(vectors_array(users), dtype=np.float32),
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


def _without_bad_ids(paths: SnapshotPaths, table: pa.Table, kind: str) -> tuple[pa.Table, list[str]]:
    """``kind``'s vector rows less those whose id breaks the id rule, and those ids."""
    ids = pl.Series("id", table.column(0).combine_chunks(), dtype=pl.String)
    bad_mask = ids.is_null() | id_problems(ids).is_not_null()
    if not bad_mask.any():
        return table, []
    bad = ids.filter(bad_mask).to_list()
    log.warning(
        "snapshot %s: %d %s vector(s) left out for an id that breaks the id rule, e.g. %s",
        paths.snapshot_id,
        len(bad),
        kind,
        ascii(bad[0])[:200],
    )
    return table.filter(pa.array((~bad_mask).to_numpy())), bad


def _ranked(frame: pl.DataFrame, codes: pl.DataFrame) -> RankedList:
    """Rows (in their order) with video ids turned into codes; reasons dictionary-encoded."""
    joined = frame.with_row_index("_row").join(codes, on="video_id", how="left").sort("_row")
    if joined["code"].null_count():
        raise ValueError("a feed names a video without a vector in the snapshot")
    reasons = joined["reason"].fill_null("")
    uniques = reasons.unique(maintain_order=True)
    lookup = pl.DataFrame({"reason": uniques, "reason_code": np.arange(len(uniques), dtype=np.int32)})
    reason_codes = reasons.to_frame().join(lookup, on="reason", how="left", maintain_order="left")["reason_code"]
    return RankedList(
        codes=joined["code"].to_numpy().astype(np.int32),
        scores=joined["score"].to_numpy().astype(np.float32),
        reason_codes=reason_codes.to_numpy().astype(np.int32),
        reasons=uniques.to_list(),
    )


def _feed_index(paths: SnapshotPaths, build: BuildInfo, codes: pl.DataFrame, bad_videos: list[str]) -> FeedIndex:
    parts = [paths.feed_part(s, build.user_shards) for s in range(build.user_shards)]
    frame = pl.concat([pl.from_arrow(pq.read_table(p)) for p in parts])  # type: ignore[misc]
    assert isinstance(frame, pl.DataFrame)
    if bad_videos:  # left out of the catalogue above; the ranks after them close up when paged
        frame = frame.filter(~pl.col("video_id").is_in(bad_videos))
    frame = frame.sort(["user_id", "rank"])
    counts = frame.group_by("user_id", maintain_order=True).agg(pl.len().alias("n"))
    offsets = np.concatenate([[0], np.cumsum(counts["n"].to_numpy())]).astype(np.int64)
    return FeedIndex(
        user_row={u: i for i, u in enumerate(counts["user_id"].to_list())},
        offsets=offsets,
        items=_ranked(frame.select("video_id", "score", "reason"), codes),
    )
