"""Canonical input files -> the four lake tables, with a report of every row left out.

This is the one validation path for outside data: ``jobs.import_dataset`` feeds it
CSV/Parquet files, ``rec_core.data.movielens`` feeds it MovieLens converted to the
same canonical columns. Nothing here writes anywhere except :func:`run_import`,
which commits all four tables to the lake in one all-or-nothing commit.

Canonical input
---------------
One file per table, CSV or Parquet, chosen by extension (``.csv``, ``.csv.gz``,
``.parquet``, ``.pq``); CSV must be UTF-8 with a header row. Required columns:

- videos: ``video_id``, ``caption``
- interactions: ``user_id``, ``video_id``, ``ts``
- users (optional file): ``user_id``
- follows (optional file): ``user_id``, ``creator_id``

Every other lake column is optional; when the column is absent, or a cell in it
is empty, the default below is used (``DEFAULTS`` holds the same table):

| table | column | default when absent or empty |
| --- | --- | --- |
| videos | `hashtags` | none (an empty list) |
| videos | `duration_s` | 30.0 |
| videos | `width` | 1080 |
| videos | `height` | 1920 |
| videos | `creator_id` | the video's own id (each video is its own creator) |
| videos | `creator_followers` | 0 |
| videos | `creator_likes` | 0 |
| videos | `created_at` | the video's first interaction ts, else the earliest interaction ts |
| videos | `views` | number of imported interactions with the video |
| videos | `likes` | number of imported interactions with `liked` true |
| videos | `comments` | number of imported interactions with `commented` true |
| videos | `shares` | number of imported interactions with `shared` true |
| interactions | `completion` | 1.0 (must be in [0, 1]) |
| interactions | `watch_time_s` | completion * the video's duration_s |
| interactions | `liked` | false (true/false/1/0/yes/no accepted, any case) |
| interactions | `shared` | false |
| interactions | `commented` | false |
| users | `created_at` | the user's first interaction ts, else the earliest interaction ts |
| users | `country` | null |
| users | `language` | null |
| users | `age_group` | null |
| follows | `ts` | the earliest interaction ts |

"Interaction ts" above means the imported (valid) interactions; with none at
all, the earliest interaction ts is 1970-01-01. Users named by interactions but
absent from the users file (or all of them, when there is no users file) are
added with the user defaults.

Values
------
- Ids are strings: numbers are cast to strings, surrounding whitespace is
  stripped; then an id must pass the one id rule of :mod:`rec_core.ids` (not
  empty, at most 128 bytes of UTF-8, no control, bidi, zero-width or other
  invisible characters), as the API's ids do.
- Timestamps are ISO 8601 (``2024-05-01``, ``2024-05-01T12:00:00``,
  ``2024-05-01 12:00:00.5+02:00``, ``...Z``; naive means UTC) or unix seconds
  (int or float; a bare number is always seconds). Parquet timestamp and date
  columns are used as they are (naive = UTC). They are stored at millisecond
  precision and must lie in [1970-01-01, 2100-01-01), which catches unix
  milliseconds passed as seconds.
- Hashtags are a string split on spaces, commas or ``|`` (``"#Cats, dogs|fun"``),
  or a list column; each tag is lowercased, loses leading ``#``, and empties and
  duplicates are dropped (first occurrence order kept).
- Booleans: true/false/1/0/yes/no in any case (or a boolean/0-1 Parquet column).
- Columns the lake does not know are ignored and listed in the report.

Bad rows
--------
A row with a bad value is skipped and counted under one reason, the first
check it fails (per table: ids, timestamps, numbers column by column, booleans,
references to other tables, duplicates), with up to three example rows per
reason and column (``REASONS`` lists and explains every reason). Duplicates keep their first valid
occurrence in file order. With ``strict=True`` any skipped row fails the
import. A missing required column or an unreadable file stops the import
(:class:`InputError`) before anything is built.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import textwrap
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from rec_core.ids import MAX_ID_BYTES, TOO_LONG, id_problems
from rec_core.data.lake import Lake
from rec_core.data.tables import TABLES, conform

log = logging.getLogger(__name__)

TABLE_NAMES = ("videos", "interactions", "users", "follows")

REQUIRED: dict[str, tuple[str, ...]] = {
    "videos": ("video_id", "caption"),
    "interactions": ("user_id", "video_id", "ts"),
    "users": ("user_id",),
    "follows": ("user_id", "creator_id"),
}

DEFAULT_DURATION_S = 30.0
DEFAULT_WIDTH = 1080
DEFAULT_HEIGHT = 1920
DEFAULT_COMPLETION = 1.0
MAX_ID_LEN = MAX_ID_BYTES  # UTF-8 bytes, as Milvus counts them
MAX_EXAMPLES = 3
TS_MIN_MS = 0  # 1970-01-01
TS_MAX_MS = 4_102_444_800_000  # 2100-01-01, exclusive
_INT32_MAX = 2**31 - 1
_EXACT_FLOAT_INT = 2**53


@dataclass(frozen=True, slots=True)
class ColumnDefault:
    table: str
    column: str
    default: str


DEFAULTS: tuple[ColumnDefault, ...] = (
    ColumnDefault("videos", "hashtags", "none (an empty list)"),
    ColumnDefault("videos", "duration_s", "30.0"),
    ColumnDefault("videos", "width", "1080"),
    ColumnDefault("videos", "height", "1920"),
    ColumnDefault("videos", "creator_id", "the video's own id (each video is its own creator)"),
    ColumnDefault("videos", "creator_followers", "0"),
    ColumnDefault("videos", "creator_likes", "0"),
    ColumnDefault("videos", "created_at", "the video's first interaction ts, else the earliest interaction ts"),
    ColumnDefault("videos", "views", "number of imported interactions with the video"),
    ColumnDefault("videos", "likes", "number of imported interactions with `liked` true"),
    ColumnDefault("videos", "comments", "number of imported interactions with `commented` true"),
    ColumnDefault("videos", "shares", "number of imported interactions with `shared` true"),
    ColumnDefault("interactions", "completion", "1.0 (must be in [0, 1])"),
    ColumnDefault("interactions", "watch_time_s", "completion * the video's duration_s"),
    ColumnDefault("interactions", "liked", "false (true/false/1/0/yes/no accepted, any case)"),
    ColumnDefault("interactions", "shared", "false"),
    ColumnDefault("interactions", "commented", "false"),
    ColumnDefault("users", "created_at", "the user's first interaction ts, else the earliest interaction ts"),
    ColumnDefault("users", "country", "null"),
    ColumnDefault("users", "language", "null"),
    ColumnDefault("users", "age_group", "null"),
    ColumnDefault("follows", "ts", "the earliest interaction ts"),
)

OPTIONAL: dict[str, tuple[str, ...]] = {t: tuple(d.column for d in DEFAULTS if d.table == t) for t in TABLE_NAMES}

# Bad-row reasons (a row is counted under the first check it fails; see the module docstring).
EMPTY_ID = "empty id"
ID_TOO_LONG = "id too long"
ID_CONTROL = "id has control characters"  # or bidi, zero-width or other invisible ones: see rec_core.ids
MISSING_TS = "missing ts"
BAD_TS = "unparseable ts"
TS_RANGE = "ts out of range"
BAD_NUMBER = "unparseable number"
NUMBER_RANGE = "number out of range"
COMPLETION_RANGE = "completion out of range"
BAD_BOOL = "unparseable boolean"
UNKNOWN_VIDEO = "unknown video"
UNKNOWN_USER = "unknown user"
UNKNOWN_CREATOR = "unknown creator"
DUPLICATE_VIDEO = "duplicate video_id"
DUPLICATE_USER = "duplicate user_id"
DUPLICATE_INTERACTION = "duplicate interaction"
DUPLICATE_FOLLOW = "duplicate follow"

REASONS: dict[str, str] = {
    EMPTY_ID: "an id is empty or missing",
    ID_TOO_LONG: f"an id is longer than {MAX_ID_LEN} bytes in UTF-8",
    ID_CONTROL: "an id contains control, bidi, zero-width or other invisible characters",
    MISSING_TS: "interactions.ts is empty",
    BAD_TS: "a timestamp is neither ISO 8601 nor unix seconds",
    TS_RANGE: "a timestamp is before 1970-01-01 or from 2100 on (unix milliseconds given as seconds?)",
    BAD_NUMBER: "a number (or integer, for integer columns) does not parse or is not finite",
    NUMBER_RANGE: "duration_s, width, height must be > 0; counts and watch_time_s must be >= 0",
    COMPLETION_RANGE: "completion is outside [0, 1]",
    BAD_BOOL: "liked/shared/commented is not one of true/false/1/0/yes/no",
    UNKNOWN_VIDEO: "an interaction names a video_id that is not among the imported videos",
    UNKNOWN_USER: "a follow names a user_id that is neither in the users file nor in the interactions",
    UNKNOWN_CREATOR: "a follow names a creator_id that no imported video has",
    DUPLICATE_VIDEO: "a video_id seen before (the first one is kept)",
    DUPLICATE_USER: "a user_id seen before (the first one is kept)",
    DUPLICATE_INTERACTION: "same user_id, video_id and ts (to the millisecond) seen before (the first one is kept)",
    DUPLICATE_FOLLOW: "same user_id and creator_id seen before (the first one is kept)",
}


def defaults_markdown() -> str:
    """The defaults table as Markdown, for the README (the module docstring holds the same)."""
    rows = ["| table | column | default when absent or empty |", "| --- | --- | --- |"]
    rows += [f"| {d.table} | `{d.column}` | {d.default} |" for d in DEFAULTS]
    return "\n".join(rows)


# ---- errors and the report ---------------------------------------------------


class IngestError(RuntimeError):
    """The import did not happen; the lake is unchanged. ``report`` says why when one exists."""

    def __init__(self, message: str, report: ImportReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class InputError(IngestError):
    """The input cannot be used at all: unreadable file, unsupported format, missing required column."""


class RejectedError(IngestError):
    """The input was read but rejected: bad rows under ``strict``, or no valid video left."""


@dataclass(slots=True)
class BadRows:
    table: str
    reason: str
    column: str | None
    count: int
    examples: list[dict[str, Any]]  # {"row": 1-based data row in the file, column: raw value, ...}


@dataclass(slots=True)
class TableCounts:
    read: int = 0  # data rows in the input (0 when the file is absent)
    skipped: int = 0  # bad rows left out
    added: int = 0  # rows created by the importer (users named only by interactions)
    written: int = 0  # rows in the lake table


@dataclass(slots=True)
class ImportReport:
    source: str
    strict: bool
    inputs: dict[str, str | None] = field(default_factory=dict)  # table -> where it came from
    counts: dict[str, TableCounts] = field(default_factory=dict)
    bad_rows: list[BadRows] = field(default_factory=list)
    defaults_used: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> column -> rows defaulted
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    status: str = "pending"  # committed | unchanged | validated (dry run) | rejected | error
    lake_version: str | None = None
    error: str | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("committed", "unchanged", "validated")

    @property
    def skipped_total(self) -> int:
        return sum(b.count for b in self.bad_rows)

    def skipped(self, reason: str, table: str | None = None, column: str | None = None) -> int:
        """Rows skipped for ``reason`` (optionally only in ``table`` / for ``column``)."""
        return sum(
            b.count
            for b in self.bad_rows
            if b.reason == reason and table in (None, b.table) and column in (None, b.column)
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["skipped_total"] = self.skipped_total
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def format_text(self) -> str:
        lines = [f"import ({self.source}), strict: {'on' if self.strict else 'off'}"]
        for table in TABLE_NAMES:
            if table in self.inputs:
                none = "(none: from the interactions)" if table == "users" else "(none)"
                lines.append(f"  {table:<13} {self.inputs[table] or none}")
        if self.counts:
            lines.append("")
            lines.append(f"  {'table':<13} {'read':>10} {'skipped':>9} {'added':>8} {'written':>10}")
            for table in TABLE_NAMES:
                c = self.counts.get(table)
                if c is not None:
                    lines.append(f"  {table:<13} {c.read:>10,} {c.skipped:>9,} {c.added:>8,} {c.written:>10,}")
        used = {t: ", ".join(f"{c} {n:,}" for c, n in cols.items() if n) for t, cols in self.defaults_used.items()}
        if any(used.values()):
            lines += ["", "defaults used (column rows):"]
            for t, text in used.items():
                if text:
                    lines += textwrap.wrap(text, 110, initial_indent=f"  {t:<13} ", subsequent_indent=" " * 16)
        ignored = [(t, cols) for t, cols in self.ignored_columns.items() if cols]
        if ignored:
            lines += ["", "ignored columns:"]
            lines += [f"  {t}: {', '.join(cols)}" for t, cols in ignored]
        if self.bad_rows:
            lines += [
                "",
                f"skipped rows by reason ({self.skipped_total:,} in all; row = data row, CSV line = row + 1):",
            ]
            lines.append(f"  {'table':<13} {'reason':<26} {'column':<18} {'rows':>8}  examples")
            for b in self.bad_rows:
                first, *rest = [_format_example(e) for e in b.examples] or [""]
                lines.append(f"  {b.table:<13} {b.reason:<26} {b.column or '-':<18} {b.count:>8,}  {first}")
                lines += [f"  {'':<13} {'':<26} {'':<18} {'':>8}  {e}" for e in rest]
        lines.append("")
        if self.status == "committed":
            lines.append(f"result: committed, lake {self.lake_version} is live ({self.elapsed_s:.1f}s)")
        elif self.status == "unchanged":
            lines.append(f"result: content identical, lake {self.lake_version} stays live ({self.elapsed_s:.1f}s)")
        elif self.status == "validated":
            lines.append(f"result: validated only (dry run), lake not touched ({self.elapsed_s:.1f}s)")
        else:
            lines.append(f"result: {self.status}, lake not touched: {self.error}")
        return "\n".join(lines)


def _format_example(example: Mapping[str, Any], width: int = 40) -> str:
    parts = []
    for key, value in example.items():
        if key == "row":
            continue
        text = repr(value)
        parts.append(f"{key}={text if len(text) <= width else text[: width - 3] + '...'}")
    return f"row {example.get('row')}: " + " ".join(parts)


# ---- reading -----------------------------------------------------------------


@dataclass(slots=True)
class CanonicalInput:
    """The canonical tables before validation; ``names`` says where each came from (for messages)."""

    videos: pl.DataFrame
    interactions: pl.DataFrame
    users: pl.DataFrame | None = None
    follows: pl.DataFrame | None = None
    names: dict[str, str] = field(default_factory=dict)

    def table(self, name: str) -> pl.DataFrame | None:
        return getattr(self, name)


def read_table_file(path: Path, what: str = "input") -> pl.DataFrame:
    """Read one CSV (every column as text, so the validator sees the raw values) or Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file {path} does not exist")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
    try:
        if suffix in (".csv", ".csv.gz"):
            df = pl.read_csv(path, infer_schema=False)
        elif suffix in (".parquet", ".pq"):
            df = pl.read_parquet(path)
        else:
            raise InputError(f"{what} file {path}: unsupported extension {suffix or '(none)'}; use .csv or .parquet")
    except InputError:
        raise
    except pl.exceptions.NoDataError:
        raise InputError(f"{what} file {path} is empty (not even a header row)") from None
    except Exception as exc:  # polars/arrow raise many types for a corrupt or non-UTF-8 file
        raise InputError(f"{what} file {path} cannot be read: {type(exc).__name__}: {exc}") from None
    # Header cells like " video_id" are a common spreadsheet export artefact.
    return df.rename({c: c.strip() for c in df.columns if c != c.strip()})


def read_canonical(
    videos: Path, interactions: Path, users: Path | None = None, follows: Path | None = None
) -> CanonicalInput:
    """Read the canonical files (a required-column check follows in :func:`build_tables`)."""
    paths = {"videos": videos, "interactions": interactions, "users": users, "follows": follows}
    frames: dict[str, pl.DataFrame | None] = {}
    for table, path in paths.items():
        if path is None:
            frames[table] = None
            continue
        frames[table] = read_table_file(Path(path), what=table)
        log.info("read %s: %d rows from %s", table, frames[table].height, path)
    names = {t: str(p) for t, p in paths.items() if p is not None}
    return CanonicalInput(names=names, **frames)


def check_columns(df: pl.DataFrame, required: tuple[str, ...], where: str) -> None:
    """Raise :class:`InputError` naming ``where`` and the first missing column."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(
            f"{where}: missing required column {missing[0]!r}"
            + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else "")
            + f"; columns present: {', '.join(df.columns) or '(none)'}"
        )


# ---- value parsing (Series in, Series out; null where absent or unparseable) ----


def _is_text(s: pl.Series) -> bool:
    return s.dtype == pl.String


def _text(s: pl.Series) -> pl.Series:
    """Stripped text with empty strings as null; non-text columns are cast to text."""
    if s.dtype == pl.Null:
        return s.cast(pl.String)
    if s.dtype.is_float():
        s = s.fill_nan(None)
        # 12.0 from a float id column should read as "12", not "12.0".
        integral = s.is_finite() & (s == s.floor()) & (s.abs() < _EXACT_FLOAT_INT)
        as_int = pl.select(pl.when(integral).then(s.cast(pl.Int64, strict=False)).otherwise(None)).to_series()
        s = pl.select(pl.coalesce(as_int.cast(pl.String), s.cast(pl.String))).to_series()
    elif not _is_text(s):
        s = s.cast(pl.String, strict=False)
    s = s.str.strip_chars()
    return pl.select(pl.when(s.str.len_chars() > 0).then(s)).to_series()


def _present(s: pl.Series) -> pl.Series:
    if _is_text(s):
        return s.str.strip_chars().str.len_chars().fill_null(0) > 0
    if s.dtype.is_float():
        # pandas writes a missing number as NaN; it means "absent" (default), not "bad".
        return s.fill_nan(None).is_not_null()
    return s.is_not_null()


def _float(s: pl.Series) -> pl.Series:
    """Float64; null where absent, unparseable or not finite."""
    if s.dtype == pl.Boolean or not (s.dtype.is_numeric() or _is_text(s) or s.dtype == pl.Null):
        return pl.repeat(None, s.len(), dtype=pl.Float64, eager=True)
    f = _text(s).cast(pl.Float64, strict=False) if _is_text(s) else s.cast(pl.Float64)
    return pl.select(pl.when(f.is_finite()).then(f)).to_series()


def _integer(s: pl.Series) -> pl.Series:
    """Integral values as Float64 (range-checked before the final cast); null where not an integer."""
    if s.dtype.is_integer():
        return s.cast(pl.Float64)
    f = _float(s)
    return pl.select(pl.when((f == f.floor()) & (f.abs() < _EXACT_FLOAT_INT)).then(f)).to_series()


_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _bool(s: pl.Series) -> pl.Series:
    if s.dtype == pl.Boolean:
        return s
    if s.dtype.is_numeric():
        return s.cast(pl.Float64).replace_strict({1.0: True, 0.0: False}, default=None, return_dtype=pl.Boolean)
    return _text(s).str.to_lowercase().replace_strict(_BOOL_WORDS, default=None, return_dtype=pl.Boolean)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


def _iso_to_ms(text: str) -> float | None:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    try:
        return float((value - _EPOCH) // _MS)
    except OverflowError:
        return None


def _ts_ms(s: pl.Series) -> pl.Series:
    """Epoch milliseconds as Float64 (exact below 2**53); null where absent or unparseable."""
    if isinstance(s.dtype, pl.Datetime):
        s = s.dt.replace_time_zone("UTC") if s.dtype.time_zone is None else s.dt.convert_time_zone("UTC")
        return s.dt.epoch("ms").cast(pl.Float64)
    if s.dtype == pl.Date:
        return s.cast(pl.Int64).cast(pl.Float64) * 86_400_000.0
    if s.dtype.is_numeric() and s.dtype != pl.Boolean:
        f = s.cast(pl.Float64)
        return pl.select(pl.when(f.is_finite()).then((f * 1000.0).round(0))).to_series()
    if not _is_text(s):
        return pl.repeat(None, s.len(), dtype=pl.Float64, eager=True)
    text = _text(s)
    seconds = text.cast(pl.Float64, strict=False)
    numeric = pl.select(pl.when(seconds.is_finite()).then((seconds * 1000.0).round(0))).to_series()
    rest = seconds.is_null() & text.is_not_null()
    if not rest.any():
        return numeric
    # The usual ISO shapes parse vectorised (several times faster than the stdlib on a million
    # distinct values); the stdlib parser then takes whatever is left (date only, week dates, ...), once per
    # distinct string.
    parsed = numeric
    for fmt, aware in _ISO_FORMATS:
        todo = parsed.is_null() & text.is_not_null()
        if not todo.any():
            return parsed
        # Only the rows still unparsed are tried: a failed attempt costs as much as a success.
        sub = text.filter(todo)
        stamps = sub.str.to_datetime(fmt, strict=False, time_unit="ms", time_zone="UTC" if aware else None)
        stamps = stamps if aware else stamps.dt.replace_time_zone("UTC")
        parsed = parsed.scatter(todo.arg_true(), stamps.dt.epoch("ms").cast(pl.Float64))
    left = text.filter(parsed.is_null() & text.is_not_null()).unique()
    if left.len() == 0:
        return parsed
    mapping = {t: _iso_to_ms(t) for t in left.to_list()}
    slow = text.replace_strict(mapping, default=None, return_dtype=pl.Float64)
    return pl.select(pl.coalesce(parsed, slow)).to_series()


# (format, has an offset); the most common shapes first.
_ISO_FORMATS = (
    ("%Y-%m-%dT%H:%M:%S%.f%#z", True),
    ("%Y-%m-%dT%H:%M:%S%.f", False),
    ("%Y-%m-%d %H:%M:%S%.f", False),
    ("%Y-%m-%d %H:%M:%S%.f%#z", True),
)


def _hashtags(s: pl.Series | None, n: int) -> pl.Series:
    if s is None or s.dtype == pl.Null:
        return pl.Series([[] for _ in range(n)], dtype=pl.List(pl.String))
    if isinstance(s.dtype, pl.List | pl.Array):
        tags = s.cast(pl.List(pl.String)).list.eval(pl.element().str.to_lowercase().str.strip_chars())
    else:
        text = _text(s).str.to_lowercase().str.replace_all(r"[\s,|]+", " ").str.strip_chars()
        tags = text.str.split(" ")
    tags = tags.list.eval(pl.element().str.strip_chars_start("#").str.strip_chars())
    tags = tags.list.eval(pl.element().filter(pl.element().str.len_chars() > 0)).list.unique(maintain_order=True)
    return tags.fill_null(pl.lit([], dtype=pl.List(pl.String)))


# ---- row validation ------------------------------------------------------------

_ROW = "__ingest_row"
_P = "__ingest_"  # prefix of parsed columns, kept beside the raw ones until the end


class _Rows:
    """One input table under validation: raw columns, parsed columns beside them, bad rows dropped by reason."""

    def __init__(self, table: str, df: pl.DataFrame, report: ImportReport) -> None:
        known = set(REQUIRED[table]) | set(OPTIONAL[table])
        self.table = table
        self.report = report
        self.example_columns = [c for c in df.columns if c in known]
        report.ignored_columns[table] = [c for c in df.columns if c not in known]
        df = df.select(self.example_columns)
        # Parquet dictionary columns come back categorical; the parsers want plain text.
        categorical = [c for c, t in df.schema.items() if t == pl.Categorical or isinstance(t, pl.Enum)]
        df = df.with_columns(pl.col(c).cast(pl.String) for c in categorical)
        self.df = df.with_row_index(_ROW, offset=1)
        report.counts[table] = TableCounts(read=df.height)

    def raw(self, column: str) -> pl.Series | None:
        return self.df[column] if column in self.example_columns else None

    def parsed(self, column: str) -> pl.Series:
        return self.df[_P + column]

    def put(self, column: str, values: pl.Series) -> None:
        self.df = self.df.with_columns(values.alias(_P + column))

    def drop(self, mask: pl.Series, reason: str, column: str | None) -> None:
        mask = mask.fill_null(False)
        count = int(mask.sum())
        if not count:
            return
        bad = self.df.filter(mask)
        examples = [
            {"row": r[_ROW], **{c: _jsonable(r[c]) for c in self.example_columns}}
            for r in bad.head(MAX_EXAMPLES).iter_rows(named=True)
        ]
        self.report.bad_rows.append(BadRows(self.table, reason, column, count, examples))
        self.report.counts[self.table].skipped += count
        self.df = self.df.filter(~mask)

    # Each check parses a column, stores the parsed value, and drops the rows it rejects.
    def check_id(self, column: str, *, optional: bool = False) -> None:
        raw = self.raw(column)
        if raw is None:
            self.put(column, pl.repeat(None, self.df.height, dtype=pl.String, eager=True))
            return
        self.put(column, _text(raw))
        if not optional:
            self.drop(self.parsed(column).is_null(), EMPTY_ID, column)
        # The API's rule, vectorised; stripping has already removed what it refuses at the ends.
        self.drop(id_problems(self.parsed(column)) == TOO_LONG, ID_TOO_LONG, column)
        self.drop(id_problems(self.parsed(column)).is_not_null(), ID_CONTROL, column)

    def check_ts(self, column: str, *, required: bool = False) -> None:
        raw = self.raw(column)
        if raw is None:
            self.put(column, pl.repeat(None, self.df.height, dtype=pl.Float64, eager=True))
            return
        self.put(column, _ts_ms(raw))
        if required:
            self.drop(~_present(self.raw(column)), MISSING_TS, column)
        self.drop(_present(self.raw(column)) & self.parsed(column).is_null(), BAD_TS, column)
        ms = self.parsed(column)
        self.drop((ms < TS_MIN_MS) | (ms >= TS_MAX_MS), TS_RANGE, column)

    def check_number(
        self, column: str, *, integer: bool, lo: float, lo_inclusive: bool = True, hi: float = math.inf
    ) -> None:
        raw = self.raw(column)
        if raw is None:
            self.put(column, pl.repeat(None, self.df.height, dtype=pl.Float64, eager=True))
            return
        self.put(column, _integer(raw) if integer else _float(raw))
        self.drop(_present(self.raw(column)) & self.parsed(column).is_null(), BAD_NUMBER, column)
        v = self.parsed(column)
        reason = COMPLETION_RANGE if column == "completion" else NUMBER_RANGE
        self.drop(((v < lo) if lo_inclusive else (v <= lo)) | (v > hi), reason, column)

    def check_bool(self, column: str) -> None:
        raw = self.raw(column)
        if raw is None:
            self.put(column, pl.repeat(None, self.df.height, dtype=pl.Boolean, eager=True))
            return
        self.put(column, _bool(raw))
        self.drop(_present(self.raw(column)) & self.parsed(column).is_null(), BAD_BOOL, column)

    def check_text(self, column: str) -> None:
        raw = self.raw(column)
        self.put(column, pl.repeat(None, self.df.height, dtype=pl.String, eager=True) if raw is None else _text(raw))

    def check_unique(self, columns: list[str], reason: str) -> None:
        keys = self.df.select([_P + c for c in columns])
        first = keys.select(pl.struct(pl.all()).is_first_distinct()).to_series()
        self.drop(~first, reason, ",".join(columns))

    def defaulted(self, columns: tuple[str, ...]) -> None:
        # Rows left with a bad present value were dropped, so "not present" is exactly "defaulted".
        used = self.report.defaults_used.setdefault(self.table, {})
        for c in columns:
            raw = self.raw(c)
            used[c] = self.df.height if raw is None else int((~_present(raw)).sum())


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


# ---- building the four tables ---------------------------------------------------


def build_tables(
    raw: CanonicalInput, *, strict: bool = False, source: str = "import"
) -> tuple[dict[str, pa.Table], ImportReport]:
    """Validate ``raw`` and return the four lake tables (with the lake schemas) and the report.

    Raises :class:`InputError` for a missing required column. Bad rows are
    skipped and reported; ``strict`` only marks the report (``run_import`` acts on it).
    """
    report = ImportReport(source=source, strict=strict)
    report.inputs = {t: raw.names.get(t) if raw.table(t) is not None else None for t in TABLE_NAMES}
    for table in TABLE_NAMES:
        df = raw.table(table)
        if df is not None:
            check_columns(df, REQUIRED[table], f"{table} file {raw.names.get(table, '(in memory)')}")

    videos = _Rows("videos", raw.videos, report)
    videos.check_id("video_id")
    videos.check_id("creator_id", optional=True)
    videos.check_text("caption")
    videos.put("hashtags", _hashtags(videos.raw("hashtags"), videos.df.height))
    videos.check_ts("created_at")
    videos.check_number("duration_s", integer=False, lo=0.0, lo_inclusive=False)
    videos.check_number("width", integer=True, lo=1, hi=_INT32_MAX)
    videos.check_number("height", integer=True, lo=1, hi=_INT32_MAX)
    for c in ("creator_followers", "creator_likes", "views", "likes", "comments", "shares"):
        videos.check_number(c, integer=True, lo=0)
    videos.check_unique(["video_id"], DUPLICATE_VIDEO)
    videos.defaulted(OPTIONAL["videos"])
    vdf = videos.df

    inter = _Rows("interactions", raw.interactions, report)
    inter.check_id("user_id")
    inter.check_id("video_id")
    inter.check_ts("ts", required=True)
    inter.check_number("watch_time_s", integer=False, lo=0.0)
    inter.check_number("completion", integer=False, lo=0.0, hi=1.0)
    for c in ("liked", "shared", "commented"):
        inter.check_bool(c)
    inter.drop(~inter.parsed("video_id").is_in(vdf[_P + "video_id"].implode()), UNKNOWN_VIDEO, "video_id")
    inter.check_unique(["user_id", "video_id", "ts"], DUPLICATE_INTERACTION)
    inter.defaulted(OPTIONAL["interactions"])

    # Parsed columns under their lake names from here on.
    v = vdf.select([pl.col(_P + c).alias(c) for c in ("video_id", *OPTIONAL["videos"], "caption")])
    i = inter.df.select([pl.col(_P + c).alias(c) for c in ("user_id", "video_id", "ts", *OPTIONAL["interactions"])])
    i = i.with_columns(
        pl.col("ts").cast(pl.Int64),
        pl.col("completion").fill_null(DEFAULT_COMPLETION),
        *(pl.col(c).fill_null(False) for c in ("liked", "shared", "commented")),
    )
    earliest = int(i["ts"].min()) if i.height else TS_MIN_MS

    v = v.with_columns(pl.col("duration_s").fill_null(DEFAULT_DURATION_S))
    stats = i.group_by("video_id").agg(
        pl.col("ts").min().alias("_first_ts"),
        pl.len().cast(pl.Int64).alias("_views"),
        pl.col("liked").sum().cast(pl.Int64).alias("_likes"),
        pl.col("commented").sum().cast(pl.Int64).alias("_comments"),
        pl.col("shared").sum().cast(pl.Int64).alias("_shares"),
    )
    v = v.join(stats, on="video_id", how="left", maintain_order="left")
    videos_out = v.select(
        pl.col("video_id"),
        pl.coalesce("creator_id", "video_id").alias("creator_id"),
        pl.col("caption").fill_null(""),
        pl.col("hashtags"),
        pl.col("duration_s").cast(pl.Float32),
        pl.col("width").fill_null(DEFAULT_WIDTH).cast(pl.Int32),
        pl.col("height").fill_null(DEFAULT_HEIGHT).cast(pl.Int32),
        pl.coalesce(pl.col("created_at").cast(pl.Int64), "_first_ts", pl.lit(earliest)).alias("created_at"),
        pl.col("creator_followers").fill_null(0).cast(pl.Int64),
        pl.col("creator_likes").fill_null(0).cast(pl.Int64),
        *(
            pl.coalesce(pl.col(c).cast(pl.Int64), pl.col(f"_{c}"), pl.lit(0)).alias(c)
            for c in ("views", "likes", "comments", "shares")
        ),
    )

    i = i.join(v.select("video_id", "duration_s"), on="video_id", how="left", maintain_order="left")
    interactions_out = i.select(
        "user_id",
        "video_id",
        "ts",
        pl.coalesce("watch_time_s", pl.col("completion") * pl.col("duration_s")).cast(pl.Float32).alias("watch_time_s"),
        pl.col("completion").cast(pl.Float32),
        "liked",
        "shared",
        "commented",
    )

    users_out = _build_users(raw.users, i, earliest, report)
    follows_out = _build_follows(raw.follows, users_out, videos_out, earliest, report)

    frames = {"videos": videos_out, "interactions": interactions_out, "users": users_out, "follows": follows_out}
    tables = {name: _to_lake(name, df) for name, df in frames.items()}
    for name, table in tables.items():
        report.counts[name].written = table.num_rows
    for name in TABLE_NAMES:
        c = report.counts[name]
        log.info("%s: %d read, %d skipped, %d added, %d to write", name, c.read, c.skipped, c.added, c.written)
    return tables, report


def _build_users(users: pl.DataFrame | None, i: pl.DataFrame, earliest: int, report: ImportReport) -> pl.DataFrame:
    schema = {
        "user_id": pl.String,
        "created_at": pl.Float64,
        "country": pl.String,
        "language": pl.String,
        "age_group": pl.String,
    }
    rows = _Rows("users", users if users is not None else pl.DataFrame(schema={"user_id": pl.String}), report)
    rows.check_id("user_id")
    rows.check_ts("created_at")
    for c in ("country", "language", "age_group"):
        rows.check_text(c)
    rows.check_unique(["user_id"], DUPLICATE_USER)
    rows.defaulted(OPTIONAL["users"])
    u = rows.df.select([pl.col(_P + c).alias(c).cast(t) for c, t in schema.items()])
    missing = i.select("user_id").unique().join(u.select("user_id"), on="user_id", how="anti")
    report.counts["users"].added = missing.height
    for c in OPTIONAL["users"]:
        report.defaults_used["users"][c] += missing.height
    u = pl.concat(
        [u, missing.with_columns(*(pl.lit(None, dtype=t).alias(c) for c, t in schema.items() if c != "user_id"))]
    )
    first = i.group_by("user_id").agg(pl.col("ts").min().alias("_first_ts"))
    u = u.join(first, on="user_id", how="left", maintain_order="left")
    return u.select(
        "user_id",
        pl.coalesce(pl.col("created_at").cast(pl.Int64), "_first_ts", pl.lit(earliest)).alias("created_at"),
        "country",
        "language",
        "age_group",
    )


def _build_follows(
    follows: pl.DataFrame | None, users: pl.DataFrame, videos: pl.DataFrame, earliest: int, report: ImportReport
) -> pl.DataFrame:
    empty = pl.DataFrame(schema={"user_id": pl.String, "creator_id": pl.String})
    rows = _Rows("follows", follows if follows is not None else empty, report)
    rows.check_id("user_id")
    rows.check_id("creator_id")
    rows.check_ts("ts")
    rows.drop(~rows.parsed("user_id").is_in(users["user_id"].implode()), UNKNOWN_USER, "user_id")
    rows.drop(~rows.parsed("creator_id").is_in(videos["creator_id"].implode()), UNKNOWN_CREATOR, "creator_id")
    rows.check_unique(["user_id", "creator_id"], DUPLICATE_FOLLOW)
    rows.defaulted(OPTIONAL["follows"])
    return rows.df.select(
        pl.col(_P + "user_id").alias("user_id"),
        pl.col(_P + "creator_id").alias("creator_id"),
        pl.coalesce(pl.col(_P + "ts").cast(pl.Int64), pl.lit(earliest)).alias("ts"),
    )


def _to_lake(name: str, df: pl.DataFrame) -> pa.Table:
    # Only the types are set here; the full check (nulls, unique keys) is schemas.conform, which
    # Lake.commit runs anyway and run_import runs itself on a dry run - running it twice costs
    # about a second per million interactions.
    table = df.to_arrow()
    for f in TABLES[name].schema:
        if pa.types.is_timestamp(f.type):
            idx = table.schema.get_field_index(f.name)
            table = table.set_column(idx, f.name, table[f.name].cast(pa.int64()).cast(f.type))
    return table.cast(TABLES[name].schema)


# ---- committing ------------------------------------------------------------------


def run_import(raw: CanonicalInput, lake: Lake | None, *, strict: bool = False, source: str = "import") -> ImportReport:
    """Validate ``raw`` and replace the lake's four tables with it in one commit.

    ``lake=None`` validates only (dry run). Raises :class:`InputError` (missing
    column) or :class:`RejectedError` (bad rows under ``strict``, or no valid
    video); in both cases nothing was written. Rerunning on identical input
    leaves the lake version unchanged (``status == "unchanged"``).
    """
    started = time.perf_counter()
    try:
        tables, report = build_tables(raw, strict=strict, source=source)
    except InputError as exc:
        report = ImportReport(source=source, strict=strict, status="error", error=str(exc))
        report.inputs = {t: raw.names.get(t) for t in TABLE_NAMES}
        report.elapsed_s = time.perf_counter() - started
        exc.report = report
        raise
    problem = None
    if strict and report.skipped_total:
        problem = f"--strict and {report.skipped_total:,} bad row(s)"
    elif tables["videos"].num_rows == 0:
        problem = "no valid video in the input"
    if problem is not None:
        report.status, report.error = "rejected", problem
        report.elapsed_s = time.perf_counter() - started
        raise RejectedError(f"import rejected: {problem}", report)
    if lake is None:
        for name, table in tables.items():
            conform(name, table)  # what Lake.commit would check
        report.status = "validated"
    else:
        before = lake.current().name if lake.exists() else None
        version = lake.commit(tables, source=source)
        report.lake_version = version.name
        report.status = "unchanged" if version.name == before else "committed"
    report.elapsed_s = time.perf_counter() - started
    log.info("import %s: %s (lake %s) in %.1fs", source, report.status, report.lake_version, report.elapsed_s)
    return report
