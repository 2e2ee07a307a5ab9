"""The snapshot's serving index: the arrays the feed API pages from, written once at validation and memory-mapped.

Parquet stays the snapshot's contract (validation, the warehouse and analysts read it). The API needs the same rows
as flat arrays in catalogue codes; building them on every worker's heap at every snapshot cost seconds and most of
its resident memory (4 GB at the large scale). So validation writes them once as NumPy files under ``serve/``,
hashed into the manifest with every other file, and the API maps them (``np.load(mmap_mode="r")``): a snapshot loads
in a few opens, workers share one copy in the page cache, and an old snapshot kept for its cursors costs nothing
until a cursor touches it.

Ids are fixed-width unicode arrays sorted ascending, so a lookup is a binary search over mapped pages
(:class:`IdIndex`) instead of a dict of Python strings. Layout, under the snapshot folder::

    serve/index.json                 format, reason dictionaries, rows left out for an id that breaks the id rule
    serve/video_ids.npy              code -> video id (sorted: the code of a video is its rank among the ids)
    serve/video_creators.npy         creator id by code
    serve/video_created_ms.npy       creation time by code (int64)
    serve/feed_users.npy             the users with a feed, sorted
    serve/feed_offsets.npy           user i's feed is rows [offsets[i], offsets[i + 1]) (int64)
    serve/feed_{codes,scores,reason_codes}.npy     every feed row in (user, rank) order
    serve/trending_{codes,scores,reason_codes}.npy the trending list in rank order
    serve/catalogue_{text,dense}.npy the video tower's inputs (float32), row for row with the catalogue parts

and, for each model space (the snapshot folder, and ``versions/<version>/`` for another model version's)::

    serve/video_vectors.npy          float32 (videos, dim) by code
    serve/user_ids.npy               the users with a batch vector, sorted
    serve/user_vectors.npy           float32 (users, dim) in that order

A snapshot built before the index (its ``build.json`` has no ``serving_index``) is indexed on the reader's heap by
the same code (:func:`load_serving_index`), so it still serves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from rec_core.atomic import write_bytes_atomic
from rec_core.ids import id_problems, sorted_positions
from rec_core.snapshot.files import (
    CATALOGUE_DENSE,
    CATALOGUE_TEXT,
    map_array,
    read_catalogue_shards,
    read_vector_shards,
    save_array,
    vectors_array,
)
from rec_core.snapshot.layout import (
    INDEX_FILE,
    ROOT_ARRAYS,
    SERVE_DIR,
    SPACE_ARRAYS,
    BuildInfo,
    SnapshotError,
    SnapshotPaths,
)

log = logging.getLogger(__name__)

FORMAT = 1


class IdIndex(Mapping[str, int]):
    """id -> position in a sorted array of ids, by binary search: a read-only mapping that can live in a mapped file."""

    __slots__ = ("ids",)

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids  # unicode, sorted ascending, unique

    def get(self, key: object, default: int | None = None) -> int | None:  # type: ignore[override]
        # A longer id than the array's width is not in it; searching for one would widen (copy) the mapped array.
        if not isinstance(key, str) or not len(self.ids) or len(key) > self.ids.dtype.itemsize // 4:
            return default
        i = int(np.searchsorted(self.ids, key))
        return i if i < len(self.ids) and self.ids[i] == key else default

    def codes(self, keys: Sequence[str]) -> np.ndarray:
        """Every key's position (-1: absent), by one binary search for all of them: a live page looks up hundreds of
        ids, and one :meth:`get` each cost more than the rest of the page."""
        return sorted_positions(self.ids, keys)

    def __getitem__(self, key: str) -> int:
        i = self.get(key)
        if i is None:
            raise KeyError(key)
        return i

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids.tolist())

    def __len__(self) -> int:
        return len(self.ids)


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

    user_row: IdIndex
    offsets: np.ndarray  # int64, len(users) + 1
    items: RankedList

    def bounds(self, user_id: str) -> tuple[int, int] | None:
        row = self.user_row.get(user_id)
        return None if row is None else (int(self.offsets[row]), int(self.offsets[row + 1]))


@dataclass(frozen=True, slots=True)
class SpaceArrays:
    """One model version's vectors in the snapshot's codes."""

    video_vectors: np.ndarray  # float32 (videos, dim), by code
    user_row: IdIndex
    user_vectors: np.ndarray  # float32 (users, dim), by user_row


@dataclass(frozen=True, slots=True)
class ServingIndex:
    video_ids: np.ndarray  # unicode, sorted: code -> id
    creator_ids: np.ndarray  # unicode, by code
    created_ms: np.ndarray  # int64, by code
    feeds: FeedIndex
    trending: RankedList
    spaces: dict[str, SpaceArrays]  # by model version, the build's own first
    skipped_ids: dict[str, int]  # "videos" / "users" -> rows left out for their id
    catalogue_text: np.ndarray  # float32 (catalogue rows, text dim): the caption embeddings, in catalogue-part order
    catalogue_dense: np.ndarray  # float32 (catalogue rows, dense dim)

    @property
    def video_code(self) -> IdIndex:
        return IdIndex(self.video_ids)


def load_serving_index(paths: SnapshotPaths, build: BuildInfo) -> ServingIndex:
    """The index mapped from ``serve/``; for a snapshot built before it, built on the heap from its Parquet."""
    return open_serving_index(paths, build) if build.serving_index else build_serving_index(paths, build)


def write_serving_index(paths: SnapshotPaths, build: BuildInfo) -> ServingIndex:
    """Build the index from the snapshot's Parquet files and write it under ``serve/`` (each file atomically,
    ``index.json`` last); a rerun rewrites it. Raises :class:`SnapshotError` on rows that do not fit together."""
    index = build_serving_index(paths, build)
    root = paths.root / SERVE_DIR
    arrays = {
        "video_ids": index.video_ids,
        "video_creators": index.creator_ids,
        "video_created_ms": index.created_ms,
        "feed_users": index.feeds.user_row.ids,
        "feed_offsets": index.feeds.offsets,
        "feed_codes": index.feeds.items.codes,
        "feed_scores": index.feeds.items.scores,
        "feed_reason_codes": index.feeds.items.reason_codes,
        "trending_codes": index.trending.codes,
        "trending_scores": index.trending.scores,
        "trending_reason_codes": index.trending.reason_codes,
        "catalogue_text": index.catalogue_text,
        "catalogue_dense": index.catalogue_dense,
    }
    for name, array in arrays.items():
        save_array(root / f"{name}.npy", array)
    for space, space_build in paths.spaces(build):
        of = index.spaces[space_build.model_version]
        folder = space.space_root / SERVE_DIR
        for name, array in zip(SPACE_ARRAYS, (of.video_vectors, of.user_row.ids, of.user_vectors), strict=True):
            save_array(folder / f"{name}.npy", array)
    meta = {
        "format": FORMAT,
        "feed_reasons": index.feeds.items.reasons,
        "trending_reasons": index.trending.reasons,
        "skipped_ids": index.skipped_ids,
    }
    write_bytes_atomic(root / INDEX_FILE, json.dumps(meta, indent=1, sort_keys=True).encode())
    return index


def open_serving_index(paths: SnapshotPaths, build: BuildInfo) -> ServingIndex:
    """Map the index written by :func:`write_serving_index`; raises :class:`SnapshotError` when it is not there."""
    root = paths.root / SERVE_DIR
    try:
        meta = json.loads((root / INDEX_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"snapshot {paths.snapshot_id}: no readable serving index ({exc})") from None
    if meta.get("format") != FORMAT:
        raise SnapshotError(f"snapshot {paths.snapshot_id}: serving index format {meta.get('format')}, not {FORMAT}")
    what = f"snapshot {paths.snapshot_id}: serving index file"
    a = {name: map_array(root / f"{name}.npy", what) for name in ROOT_ARRAYS}
    spaces = {}
    for space, space_build in paths.spaces(build):
        folder = space.space_root / SERVE_DIR
        vectors, user_ids, user_vectors = (map_array(folder / f"{name}.npy", what) for name in SPACE_ARRAYS)
        spaces[space_build.model_version] = SpaceArrays(vectors, IdIndex(user_ids), user_vectors)
    return ServingIndex(
        video_ids=a["video_ids"],
        creator_ids=a["video_creators"],
        created_ms=a["video_created_ms"],
        feeds=FeedIndex(
            IdIndex(a["feed_users"]),
            a["feed_offsets"],
            RankedList(a["feed_codes"], a["feed_scores"], a["feed_reason_codes"], list(meta["feed_reasons"])),
        ),
        trending=RankedList(
            a["trending_codes"], a["trending_scores"], a["trending_reason_codes"], list(meta["trending_reasons"])
        ),
        spaces=spaces,
        skipped_ids={k: int(v) for k, v in meta.get("skipped_ids", {}).items()},
        catalogue_text=a["catalogue_text"],
        catalogue_dense=a["catalogue_dense"],
    )


def build_serving_index(paths: SnapshotPaths, build: BuildInfo) -> ServingIndex:
    """The index in memory, from the snapshot's vectors, catalogue, feeds and trending list."""
    videos, bad_videos = _valid_rows(paths, read_vector_shards(paths, "videos", build.video_shards), "videos")
    video_ids, order = _sorted_ids(videos.column(0))
    series = pl.Series(video_ids, dtype=pl.String)
    catalogue = read_catalogue_shards(paths, build.video_shards)
    creator_ids, created_ms = _catalogue_columns(paths, catalogue, series)
    spaces: dict[str, SpaceArrays] = {}
    bad_users: list[str] = []
    for space, space_build in paths.spaces(build):
        vectors = vectors_array(videos)[order] if not space.version else _space_vectors(space, space_build, series)
        users, bad = _valid_rows(space, read_vector_shards(space, "users", space_build.user_shards), "users")
        bad_users = bad_users or bad
        user_ids, user_order = _sorted_ids(users.column(0))
        spaces[space_build.model_version] = SpaceArrays(
            video_vectors=np.ascontiguousarray(vectors, dtype=np.float32),
            user_row=IdIndex(user_ids),
            user_vectors=np.ascontiguousarray(vectors_array(users)[user_order], dtype=np.float32),
        )
    trending = pl.read_parquet(paths.trending_file).filter(~pl.col("video_id").is_in(bad_videos)).sort("rank")
    return ServingIndex(
        video_ids=video_ids,
        creator_ids=creator_ids,
        created_ms=created_ms,
        feeds=_feed_index(paths, build, series, bad_videos),
        trending=_ranked(paths, trending, series),
        spaces=spaces,
        skipped_ids={k: len(v) for k, v in (("videos", bad_videos), ("users", bad_users)) if v},
        catalogue_text=np.ascontiguousarray(vectors_array(catalogue, CATALOGUE_TEXT)),
        catalogue_dense=np.ascontiguousarray(vectors_array(catalogue, CATALOGUE_DENSE)),
    )


def _sorted_ids(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Ids as a sorted fixed-width unicode array, and the row order that sorts them; raises on a duplicate."""
    ids = np.asarray(column.to_pylist(), dtype=str)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        dup = ids[1:][ids[1:] == ids[:-1]][0]
        raise SnapshotError(f"id {dup!r} has more than one row")
    return ids, order


def _valid_rows(paths: SnapshotPaths, table: pa.Table, kind: str) -> tuple[pa.Table, list[str]]:
    """``kind``'s vector rows less those whose id breaks the id rule (an older batch let such an id into a lake),
    and those ids: one bad id must not keep every later snapshot from serving."""
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


def _codes(ids: pl.Series, video_ids: pl.Series) -> pl.Series:
    """The code of each video id (its position in the sorted ``video_ids``), null where it has no vector."""
    return ids.cast(pl.String).cast(pl.Enum(video_ids), strict=False).to_physical()


def _catalogue_columns(
    paths: SnapshotPaths, catalogue: pa.Table, video_ids: pl.Series
) -> tuple[np.ndarray, np.ndarray]:
    """Creator and creation time by code, from the catalogue parts (which may hold rows left out of the vectors)."""
    frame = pl.from_arrow(catalogue.select(["video_id", "creator_id", "created_ms"]))
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(code=_codes(frame["video_id"], video_ids)).drop_nulls("code").sort("code")
    if frame.height != len(video_ids) or frame["code"].n_unique() != len(video_ids):
        have = set(frame["video_id"].to_list())
        missing = [v for v in video_ids.head(len(have) + 3).to_list() if v not in have][:3]
        raise SnapshotError(f"snapshot {paths.snapshot_id}: vectors for videos its catalogue lacks, e.g. {missing}")
    return np.asarray(frame["creator_id"].to_list(), dtype=str), frame["created_ms"].to_numpy().astype(np.int64)


def _space_vectors(space: SnapshotPaths, build: BuildInfo, video_ids: pl.Series) -> np.ndarray:
    """Another model version's video vectors in the root's codes; each video must have one."""
    videos, _ = _valid_rows(space, read_vector_shards(space, "videos", build.video_shards), "videos")
    codes = _codes(pl.Series(videos.column(0).combine_chunks()), video_ids)
    if codes.drop_nulls().n_unique() != len(video_ids):
        raise SnapshotError(f"snapshot {space.snapshot_id}: model version {build.model_version} lacks video vectors")
    vectors = np.empty((len(video_ids), build.embedding_dim), dtype=np.float32)
    vectors[codes.drop_nulls().to_numpy()] = vectors_array(videos)[codes.is_not_null().to_numpy()]
    return vectors


def _feed_index(paths: SnapshotPaths, build: BuildInfo, video_ids: pl.Series, bad_videos: list[str]) -> FeedIndex:
    """Every feed part in order (user shards cut the sorted users, and each part is sorted by user and rank), one
    part in memory at a time: all of them at once, with their id and reason strings, peaked at 7.5 GB at the large
    scale (20 M rows), the most of any step of validation."""
    users, lengths, parts = [], [], []
    reasons: dict[str, int] = {}
    for shard in range(build.user_shards):
        columns = ["user_id", "video_id", "score", "reason"]
        frame = pl.from_arrow(pq.read_table(paths.feed_part(shard, build.user_shards), columns=columns))
        assert isinstance(frame, pl.DataFrame)
        if bad_videos:  # left out of the catalogue; the ranks after them close up when paged
            frame = frame.filter(~pl.col("video_id").is_in(bad_videos))
        runs = frame["user_id"].rle()
        users.append(np.asarray(runs.struct.field("value").to_list(), dtype=str))
        lengths.append(runs.struct.field("len").to_numpy())
        parts.append(_ranked(paths, frame, video_ids, reasons))
        del frame, runs
    ids = np.concatenate(users)
    # A user's rows split over two parts, or parts out of order, leave two equal or descending neighbours.
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        raise SnapshotError(f"snapshot {paths.snapshot_id}: feed parts are not in user order")
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
    items = RankedList(
        codes=np.concatenate([part.codes for part in parts]),
        scores=np.concatenate([part.scores for part in parts]),
        reason_codes=np.concatenate([part.reason_codes for part in parts]),
        reasons=list(reasons),
    )
    return FeedIndex(IdIndex(ids), offsets, items)


def _ranked(
    paths: SnapshotPaths, frame: pl.DataFrame, video_ids: pl.Series, reasons: dict[str, int] | None = None
) -> RankedList:
    """Rows (in their order) as codes, with their reasons as a dictionary: ``reasons`` (reason -> code, in order of
    first appearance) when given, extended with this frame's new ones, so several frames share one dictionary."""
    codes = _codes(frame["video_id"], video_ids)
    if codes.null_count():
        missing = frame["video_id"].filter(codes.is_null()).head(3).to_list()
        raise SnapshotError(f"snapshot {paths.snapshot_id}: a list names videos without a vector, e.g. {missing}")
    reasons = {} if reasons is None else reasons
    text = frame["reason"].fill_null("")
    here = text.unique(maintain_order=True)
    to_shared = np.fromiter((reasons.setdefault(r, len(reasons)) for r in here.to_list()), np.int32, len(here))
    local = text.cast(pl.Enum(here)).to_physical().to_numpy() if len(here) else np.zeros(0, np.int64)
    return RankedList(
        codes=codes.cast(pl.Int32).to_numpy(),
        scores=frame["score"].to_numpy().astype(np.float32),
        reason_codes=to_shared[local].astype(np.int32, copy=False),
        reasons=list(reasons),
    )
