"""The snapshot's files and the lake tables a build reads: their schemas, and the one way to read and write them.

Every stage that writes into a snapshot (the embed stages, materialization, trending) and every reader (validation,
the vector load, the API) takes its schema and its reader from here, so the contract is written once. The lake
readers are for the batch stages only: the API reads nothing but the snapshot (see ``rec_core.snapshot.layout``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rec_core.atomic import write_with
from rec_core.data.lake import lake_version_dir
from rec_core.settings import PathSettings
from rec_core.snapshot.layout import BuildInfo, SnapshotError, SnapshotPaths

VIDEO_ID = "video_id"
USER_ID = "user_id"
VECTOR = "vector"


def columns_of(schema: pa.Schema) -> dict[str, pa.DataType]:
    """Column name -> type, the form validation compares a file against."""
    return {f.name: f.type for f in schema}


# Exact Arrow types, so a reader can memory-map without casting.
FEED_SCHEMA = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field(VIDEO_ID, pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)
TRENDING_SCHEMA = pa.schema([f for f in FEED_SCHEMA if f.name != USER_ID])

# The catalogue part of a video shard, row for row with its vectors. ``text`` and ``dense`` are the video tower's
# inputs as of the build's as-of (the caption embedding of the model's text encoder and the unstandardised dense
# features); their widths belong to the model, so they are checked as fixed-size float32 lists of any width.
CATALOGUE_TEXT = "text"
CATALOGUE_DENSE = "dense"


def catalogue_schema(text_dim: int, dense_dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field(VIDEO_ID, pa.string(), nullable=False),
            pa.field("creator_id", pa.string(), nullable=False),
            pa.field("created_ms", pa.int64(), nullable=False),
            pa.field("caption", pa.string(), nullable=False),
            pa.field("hashtags", pa.list_(pa.string()), nullable=False),
            pa.field("duration_s", pa.float32(), nullable=False),
            pa.field(CATALOGUE_TEXT, pa.list_(pa.float32(), text_dim), nullable=False),
            pa.field(CATALOGUE_DENSE, pa.list_(pa.float32(), dense_dim), nullable=False),
        ]
    )


# Validation compares these exactly; the two matrix columns only for being fixed-size float32 lists.
CATALOGUE_COLUMNS = {
    name: kind
    for name, kind in columns_of(catalogue_schema(1, 1)).items()
    if name not in {CATALOGUE_TEXT, CATALOGUE_DENSE}
}


# ---- lake tables of a build -------------------------------------------------------


def lake_table_path(paths: PathSettings, build: BuildInfo, table: str) -> Path:
    """A table of the lake version the build names, not the live one: a rerun must see the same data."""
    path = lake_version_dir(paths, build.lake_version) / f"{table}.parquet"
    if not path.is_file():
        raise SnapshotError(
            f"snapshot {build.snapshot_id} reads lake version {build.lake_version}, which has no {table} table "
            "(pruned? see REC_LAKE_VERSIONS_KEEP); begin a new snapshot"
        )
    return path


def read_lake_table(paths: PathSettings, build: BuildInfo, table: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(lake_table_path(paths, build, table), columns=columns)


# ---- vector files -------------------------------------------------------------------


def vector_schema(id_column: str, dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field(id_column, pa.string(), nullable=False),
            pa.field(VECTOR, pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def vector_table(id_column: str, ids: np.ndarray | Sequence[str], vectors: np.ndarray) -> pa.Table:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    return pa.Table.from_arrays([pa.array(list(ids), pa.string()), column], schema=vector_schema(id_column, dim))


def write_vectors(table: pa.Table, target: Path) -> None:
    """Atomically (temp name, fsync, rename): a rerun overwrites, a killed run leaves no half file."""
    # Float vectors barely compress; uncompressed is faster both ways. Same input, same bytes.
    write_with(target, lambda tmp: pq.write_table(table, tmp, compression="none"))


def vectors_array(table: pa.Table, column: str = VECTOR) -> np.ndarray:
    """A fixed-size list column (``vector`` by default) as an (n, width) float32 array."""
    values = table.column(column).combine_chunks()
    dim = values.type.list_size
    return values.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def read_vector_shards(paths: SnapshotPaths, kind: str, shards: int) -> pa.Table:
    """All shards of ``kind`` (``"videos"`` or ``"users"``) in order; raises naming any missing shard."""
    locate = {"videos": paths.video_vectors, "users": paths.user_vectors}[kind]
    return _read_shards(paths, [locate(i, shards) for i in range(shards)], f"{kind} vector")


# ---- the catalogue --------------------------------------------------------------------


def catalogue_table(videos: pa.Table | dict[str, Sequence], text: np.ndarray, dense: np.ndarray) -> pa.Table:
    """A catalogue part: ``videos`` (the plain columns of :func:`catalogue_schema`) plus the two matrices."""
    text = np.ascontiguousarray(text, dtype=np.float32)
    dense = np.ascontiguousarray(dense, dtype=np.float32)
    schema = catalogue_schema(text.shape[1], dense.shape[1])
    columns = [pa.array(videos[name], schema.field(name).type) for name in CATALOGUE_COLUMNS]
    matrices = [
        pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1), pa.float32()), m.shape[1]) for m in (text, dense)
    ]
    return pa.Table.from_arrays([*columns, *matrices], schema=schema)


def write_catalogue(table: pa.Table, target: Path) -> None:
    """Atomically, like the vectors (a snapshot begun before catalogues existed gets the folder here)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    write_with(target, lambda tmp: pq.write_table(table, tmp, compression="none"))


def read_catalogue_shards(paths: SnapshotPaths, shards: int, columns: list[str] | None = None) -> pa.Table:
    """Every catalogue part in shard order (``columns`` of it, or all): the whole catalogue, sorted by ``video_id``."""
    return _read_shards(paths, [paths.catalogue_part(i, shards) for i in range(shards)], "catalogue", columns)


def _read_shards(paths: SnapshotPaths, files: list[Path], what: str, columns: list[str] | None = None) -> pa.Table:
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SnapshotError(f"snapshot {paths.snapshot_id} lacks {len(missing)} {what} shard(s): {missing}")
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])


def save_array(target: Path, array: np.ndarray) -> None:
    """``array`` as a NumPy file at ``target``, written atomically, for :func:`map_array` to map."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # a handle: np.save would append ".npy" to the temporary name
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)

    write_with(target, write)


def map_array(path: Path, what: str) -> np.ndarray:
    """The array at ``path`` mapped read-only (its pages shared by every process that maps it); ``what`` names it in
    the :class:`SnapshotError` raised when it does not read."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:  # an empty array has no pages to map
        return np.load(path, allow_pickle=False)
    except OSError as exc:
        raise SnapshotError(f"{what} {path.name}: {exc}") from None
