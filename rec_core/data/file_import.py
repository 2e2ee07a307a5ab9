"""Canonical input files -> the four lake tables, validated, committed to the lake in one commit.

The columns, defaults and bad-row reasons are :mod:`rec_core.data.import_spec`. Nothing here
writes to the lake except :func:`run_import`, which commits all four tables in one
all-or-nothing commit (or, on a dry run, only validates them). The import commands
(``jobs.import_dataset``, ``jobs.import_movielens``) print its report (``jobs.cli.run_import_command``).
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from rec_core.data.import_checks import InputRows
from rec_core.data.import_report import ImportReport, InputError, RejectedError
from rec_core.data.import_spec import (
    DEFAULT_COMPLETION,
    DEFAULT_DURATION_S,
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    DUPLICATE_FOLLOW,
    DUPLICATE_INTERACTION,
    DUPLICATE_USER,
    DUPLICATE_VIDEO,
    OPTIONAL,
    REQUIRED,
    TABLE_NAMES,
    TS_MIN_MS,
    UNKNOWN_CREATOR,
    UNKNOWN_USER,
    UNKNOWN_VIDEO,
)
from rec_core.data.lake import Lake, lake_for
from rec_core.data.tables import TABLES, conform, with_added_columns
from rec_core.settings import Settings

log = logging.getLogger(__name__)

_INT32_MAX = 2**31 - 1
# The lake keeps durations and watch times as float32 and counts as int64, through float64 checks: past these a
# value became inf (1e39), 0 (1e-50 s, against "> 0"), a rounded count (2**62 + 1) or a crash (2**63 - 1).
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)
_COUNT_MAX = 2**53  # float64's exact integers


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
    if path.is_dir():
        raise InputError(f"{what} file {path} is a folder: name the file in it")
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
        if suffix in (".csv", ".csv.gz") and (row := _first_ragged_row(path)) is not None:
            line, fields, header = row
            raise InputError(
                f"{what} file {path}: CSV line {line} has {fields} fields, the header {header} "
                "(a comma in an unquoted field? quote it)"
            ) from None
        raise InputError(f"{what} file {path} cannot be read: {type(exc).__name__}: {exc}") from None
    _check_shape(df, f"{what} file {path}")
    # Header cells like " video_id" are a common spreadsheet export artefact.
    return df.rename({c: c.strip() for c in df.columns if c != c.strip()})


def _first_ragged_row(path: Path) -> tuple[int, int, int] | None:
    """(line, its fields, the header's) of the first CSV row with more fields than the header: polars
    says only "found more fields than defined in 'Schema'", and suggests an option the operator cannot set."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = len(next(reader, []))
            for row in reader:
                if len(row) > header:
                    return reader.line_num, len(row), header
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


# polars renames a repeated CSV header cell "x" to "x_duplicated_0", "x_duplicated_1", ...
_POLARS_DUPLICATE = re.compile(r"(.+)_duplicated_[0-9]+")


def _check_shape(df: pl.DataFrame, where: str) -> None:
    """Refuse what the row checks cannot read, naming the column: a header given twice (the first copy won,
    and " video_id" beside "video_id" crashed the rename), a nested column (a list id crashed a cast, a struct
    was stored as its text) other than a list of hashtags, bytes that are not UTF-8 text (a crash)."""
    stripped = [c.strip() for c in df.columns]
    repeated = {c for c in stripped if stripped.count(c) > 1}
    repeated |= {m.group(1).strip() for c in df.columns if (m := _POLARS_DUPLICATE.fullmatch(c))} & set(stripped)
    if repeated:
        raise InputError(f"{where} has the column {sorted(repeated)[0]!r} more than once")
    for name, dtype in df.schema.items():
        tags = name.strip() == "hashtags" and isinstance(dtype, pl.List) and dtype.inner in (pl.String, pl.Null)
        if dtype.is_nested() and not tags:
            raise InputError(f"{where}: column {name!r} is {dtype}, not a single value per row")
        if dtype == pl.Binary:
            try:
                df[name].cast(pl.String)
            except pl.exceptions.ComputeError:
                raise InputError(f"{where}: column {name!r} holds bytes that are not UTF-8 text") from None


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

    videos = InputRows("videos", raw.videos, report)
    videos.check_id("video_id")
    videos.check_id("creator_id", optional=True)
    videos.check_text("caption")
    videos.check_hashtags("hashtags")
    videos.check_ts("created_at")
    videos.check_number("duration_s", integer=False, lo=_FLOAT32_TINY, hi=_FLOAT32_MAX)
    videos.check_number("width", integer=True, lo=1, hi=_INT32_MAX)
    videos.check_number("height", integer=True, lo=1, hi=_INT32_MAX)
    for c in ("creator_followers", "creator_likes", "views", "likes", "comments", "shares"):
        videos.check_number(c, integer=True, lo=0, hi=_COUNT_MAX)
    videos.check_unique(["video_id"], DUPLICATE_VIDEO)
    videos.defaulted(OPTIONAL["videos"])

    inter = InputRows("interactions", raw.interactions, report)
    inter.check_id("user_id")
    inter.check_id("video_id")
    inter.check_ts("ts", required=True)
    inter.check_number("watch_time_s", integer=False, lo=0.0, hi=_FLOAT32_MAX)
    inter.check_number("completion", integer=False, lo=0.0, hi=1.0)
    for c in ("liked", "shared", "commented"):
        inter.check_bool(c)
    inter.drop(~inter.parsed("video_id").is_in(videos.parsed("video_id").implode()), UNKNOWN_VIDEO, "video_id")
    inter.check_unique(["user_id", "video_id", "ts"], DUPLICATE_INTERACTION)
    inter.defaulted(OPTIONAL["interactions"])

    # Parsed columns under their lake names from here on.
    v = videos.parsed_frame(("video_id", *OPTIONAL["videos"], "caption"))
    i = inter.parsed_frame(("user_id", "video_id", "ts", *OPTIONAL["interactions"]))
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
    rows = InputRows("users", users if users is not None else pl.DataFrame(schema={"user_id": pl.String}), report)
    rows.check_id("user_id")
    rows.check_ts("created_at")
    for c in ("country", "language", "age_group"):
        rows.check_text(c)
    rows.check_unique(["user_id"], DUPLICATE_USER)
    rows.defaulted(OPTIONAL["users"])
    u = rows.parsed_frame(list(schema)).select([pl.col(c).cast(t) for c, t in schema.items()])
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
    rows = InputRows("follows", follows if follows is not None else empty, report)
    rows.check_id("user_id")
    rows.check_id("creator_id")
    rows.check_ts("ts")
    rows.drop(~rows.parsed("user_id").is_in(users["user_id"].implode()), UNKNOWN_USER, "user_id")
    rows.drop(~rows.parsed("creator_id").is_in(videos["creator_id"].implode()), UNKNOWN_CREATOR, "creator_id")
    rows.check_unique(["user_id", "creator_id"], DUPLICATE_FOLLOW)
    rows.defaulted(OPTIONAL["follows"])
    return rows.parsed_frame(("user_id", "creator_id", "ts")).select(
        "user_id",
        "creator_id",
        pl.coalesce(pl.col("ts").cast(pl.Int64), pl.lit(earliest)).alias("ts"),
    )


def _to_lake(name: str, df: pl.DataFrame) -> pa.Table:
    # Only the types are set here; the full check (nulls, unique keys) is schemas.conform, which
    # Lake.commit runs anyway and run_import runs itself on a dry run - running it twice costs
    # about a second per million interactions.
    table = with_added_columns(name, df.to_arrow())
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
    elif tables["interactions"].num_rows == 0 and (read := report.counts["interactions"].read):
        # Every row refused (unix milliseconds given as seconds, say): committing would replace the live
        # interactions with none. A header-only file is a catalogue without history, and imports.
        problem = f"no valid interaction in the input: all {read:,} were skipped (the reasons are above)"
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
        kept = _impressions_of(lake, tables) if before is not None else None
        if kept is not None:
            tables = {**tables, "impressions": kept}
            report.impressions_dropped = lake.current().manifest["tables"]["impressions"]["rows"] - kept.num_rows
        # expect: the impressions were read from ``before``; an ingest committing meanwhile is a conflict, not lost.
        version = lake.commit(tables, source=source, expect=before)
        report.lake_version = version.name
        report.status = "unchanged" if version.name == before else "committed"
    report.elapsed_s = time.perf_counter() - started
    log.info("import %s: %s (lake %s) in %.1fs", source, report.status, report.lake_version, report.elapsed_s)
    return report


def _impressions_of(lake: Lake, tables: Mapping[str, pa.Table]) -> pa.Table | None:
    """The lake's impressions of videos the import keeps, or None when that is all of them. An import replaces the
    four tables: the impressions of a replaced world named videos no longer in the catalogue, so the online views
    and every experiment report read them as never viewed. (Their users stay: a user the API served who never
    acted is in no imported table, and their pages count.)"""
    if not lake.has("impressions"):
        return None
    shown = lake.read("impressions")
    keep = pc.is_in(shown["video_id"], value_set=tables["videos"]["video_id"])
    if pc.all(keep).as_py() is not False:
        return None
    return shown.filter(keep)


def import_dataset(
    videos: Path,
    interactions: Path,
    users: Path | None = None,
    follows: Path | None = None,
    *,
    strict: bool = False,
    dry_run: bool = False,
    settings: Settings | None = None,
) -> ImportReport:
    """Validate the files and make them the lake's content; raises ``IngestError`` if nothing was imported."""
    settings = settings or Settings.load()
    raw = read_canonical(videos, interactions, users, follows)
    lake = None if dry_run else lake_for(settings.paths, settings.batch)
    source = "import_dataset " + " ".join(f"{t}={p}" for t, p in raw.names.items())
    return run_import(raw, lake, strict=strict, source=source)
