"""Arrow schemas of the lake tables, defined once and checked on every write.

The lake is the one source of truth (docs/architecture.md, invariant 1); everything
else is derived from these tables, so their shapes are pinned here. ``impressions``
is what the API served (one row per item shown); ``interactions.request_id`` names
the page an event came from, when the app said so, which joins engagement to the
impression that caused it.

Columns added after lakes were written (``interactions.request_id``, ``skipped``) are listed in
its table's ``added`` columns: a table without one, from an older lake or an import
that does not know it, reads as all null in it instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

TS = pa.timestamp("ms", tz="UTC")

VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("creator_id", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("hashtags", pa.list_(pa.string()), nullable=False),
        pa.field("duration_s", pa.float32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("created_at", TS, nullable=False),
        pa.field("creator_followers", pa.int64(), nullable=False),
        pa.field("creator_likes", pa.int64(), nullable=False),
        pa.field("views", pa.int64(), nullable=False),
        pa.field("likes", pa.int64(), nullable=False),
        pa.field("comments", pa.int64(), nullable=False),
        pa.field("shares", pa.int64(), nullable=False),
    ]
)

USERS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("created_at", TS, nullable=False),
        pa.field("country", pa.string(), nullable=True),
        pa.field("language", pa.string(), nullable=True),
        pa.field("age_group", pa.string(), nullable=True),
    ]
)

FOLLOWS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("creator_id", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
    ]
)

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("watch_time_s", pa.float32(), nullable=False),
        pa.field("completion", pa.float32(), nullable=False),
        pa.field("liked", pa.bool_(), nullable=False),
        pa.field("shared", pa.bool_(), nullable=False),
        pa.field("commented", pa.bool_(), nullable=False),
        pa.field("request_id", pa.string(), nullable=True),  # the page the (first) event came from
        pa.field("skipped", pa.bool_(), nullable=True),  # a skip event said so; null: not recorded (imports)
    ]
)

IMPRESSIONS = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),  # one page served
        pa.field("position", pa.int32(), nullable=False),  # in the user's walk: 0 is the first item of page 1
        pa.field("ts", TS, nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("snapshot_id", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("experiment", pa.string(), nullable=True),  # the experiment the user was in; null: none
        pa.field("arm", pa.string(), nullable=True),  # their arm in it
        pa.field("source", pa.string(), nullable=False),  # precomputed | live | trending
        pa.field("reason", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
    ]
)


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    sort_by: tuple[str, ...]
    added: tuple[str, ...] = ()  # nullable columns newer than the table: absent reads as null


# The world: what every import and generator writes whole (rec_core.data.file_import, rec_core.synthetic).
TABLES: dict[str, TableSpec] = {
    "videos": TableSpec("videos", VIDEOS, ("video_id",), ("video_id",)),
    "users": TableSpec("users", USERS, ("user_id",), ("user_id",)),
    "follows": TableSpec("follows", FOLLOWS, ("user_id", "creator_id"), ("user_id", "creator_id")),
    "interactions": TableSpec(
        "interactions",
        INTERACTIONS,
        ("user_id", "video_id", "ts"),
        ("ts", "user_id", "video_id"),
        ("request_id", "skipped"),
    ),
}
# Every table a lake version may hold: the world, and what the API logged (absent until the first ingest of it).
LAKE_TABLES: dict[str, TableSpec] = {
    **TABLES,
    "impressions": TableSpec("impressions", IMPRESSIONS, ("request_id", "position"), ("ts", "request_id", "position")),
}


class SchemaError(ValueError):
    """A table does not match its lake schema; the message names table and column."""


def conform(name: str, table: pa.Table) -> pa.Table:
    """Return ``table`` cast to the lake schema of ``name``, or raise :class:`SchemaError`.

    Extra columns are an error (they would be silently dropped otherwise), as are
    missing columns (but the table's ``added`` ones, filled with nulls), values
    that do not cast, and nulls in non-nullable columns.
    """
    spec = LAKE_TABLES.get(name)
    if spec is None:
        raise SchemaError(f"unknown lake table {name!r}; known: {', '.join(LAKE_TABLES)}")
    table = with_added_columns(name, table)
    have, want = set(table.column_names), set(spec.schema.names)
    if missing := sorted(want - have):
        raise SchemaError(f"{name}: missing column(s) {', '.join(missing)}")
    if extra := sorted(have - want):
        raise SchemaError(f"{name}: unexpected column(s) {', '.join(extra)}")
    columns = []
    for f in spec.schema:
        col = table.column(f.name)
        try:
            col = col.cast(f.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(f"{name}.{f.name}: cannot be read as {f.type}: {exc}") from None
        if not f.nullable and col.null_count:
            raise SchemaError(f"{name}.{f.name}: {col.null_count} null value(s) in a required column")
        columns.append(col)
    out = pa.Table.from_arrays(columns, schema=spec.schema)
    _check_unique_key(spec, out)
    return out


def with_added_columns(name: str, table: pa.Table) -> pa.Table:
    """``table`` with each of its spec's ``added`` columns it lacks appended as nulls of the column's type."""
    spec = LAKE_TABLES[name]
    for column in spec.added:
        if column not in table.column_names:
            table = table.append_column(
                spec.schema.field(column), pa.nulls(table.num_rows, spec.schema.field(column).type)
            )
    return table


def _check_unique_key(spec: TableSpec, table: pa.Table) -> None:
    if table.num_rows == 0:
        return
    grouped = table.group_by(list(spec.key)).aggregate([([], "count_all")])
    dupes = grouped.filter(pc.greater(grouped["count_all"], 1))
    if dupes.num_rows:
        example = {k: dupes[k][0].as_py() for k in spec.key}
        raise SchemaError(f"{spec.name}: {dupes.num_rows} duplicate key(s) on ({', '.join(spec.key)}), e.g. {example}")
