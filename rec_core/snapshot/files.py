"""The snapshot's files and the lake tables a build reads: their schemas, and the one way to read and write them.

Every stage that writes into a snapshot (the embed stages, materialization, trending) and every reader (validation,
the vector load, the API) takes its schema and its reader from here, so the contract is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rec_core.atomic import write_with
from rec_core.settings import Settings
from rec_core.snapshot.layout import BuildInfo, SnapshotError, SnapshotPaths

VIDEO_ID = "video_id"
USER_ID = "user_id"
VECTOR = "vector"

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


def columns_of(schema: pa.Schema) -> dict[str, pa.DataType]:
    """Column name -> type, the form validation compares a file against."""
    return {f.name: f.type for f in schema}


# ---- lake tables of a build -------------------------------------------------------


def lake_table_path(settings: Settings, build: BuildInfo, table: str) -> Path:
    """A table of the lake version the build names, not the live one: a rerun must see the same data."""
    path = settings.lake_dir / build.lake_version / f"{table}.parquet"
    if not path.is_file():
        raise SnapshotError(
            f"snapshot {build.snapshot_id} reads lake version {build.lake_version}, which has no {table} table "
            f"(pruned? REC_LAKE_VERSIONS_KEEP={settings.lake_versions_keep}); begin a new snapshot"
        )
    return path


def read_lake_table(settings: Settings, build: BuildInfo, table: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(lake_table_path(settings, build, table), columns=columns)


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


def vectors_array(table: pa.Table) -> np.ndarray:
    """The ``vector`` column as an (n, dim) float32 array."""
    column = table.column(VECTOR).combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def read_vector_shards(paths: SnapshotPaths, kind: str, shards: int) -> pa.Table:
    """All shards of ``kind`` (``"videos"`` or ``"users"``) in order; raises naming any missing shard."""
    locate = {"videos": paths.video_vectors, "users": paths.user_vectors}[kind]
    files = [locate(i, shards) for i in range(shards)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SnapshotError(f"snapshot {paths.snapshot_id} lacks {len(missing)} {kind} vector shard(s): {missing}")
    return pa.concat_tables([pq.read_table(f) for f in files])
