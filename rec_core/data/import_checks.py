"""Parsing and checking one input table's raw values; a bad row is dropped under the first reason it fails.

Parsers take a Series and return one, null where a value is absent or does not parse. :class:`InputRows`
keeps the parsed columns beside the raw ones, so a dropped row's report shows the raw values.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

import polars as pl

from rec_core.data.import_report import BadRows, ImportReport, TableCounts
from rec_core.data.import_spec import (
    BAD_BOOL,
    BAD_NUMBER,
    BAD_TS,
    COMPLETION_RANGE,
    EMPTY_ID,
    ID_APOSTROPHE,
    ID_CONTROL,
    ID_TOO_LONG,
    MAX_EXAMPLES,
    MISSING_TS,
    NUMBER_RANGE,
    OPTIONAL,
    REQUIRED,
    TS_MAX_MS,
    TS_MIN_MS,
    TS_RANGE,
)
from rec_core.ids import APOSTROPHE, TOO_LONG, id_problems

_EXACT_FLOAT_INT = 2**53


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


class InputRows:
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

    def parsed_frame(self, columns: Sequence[str]) -> pl.DataFrame:
        """The parsed ``columns`` of the rows still kept, under their own names."""
        return self.df.select([pl.col(_P + c).alias(c) for c in columns])

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
        # The API's rule, vectorised once (a row has one problem at most, so the order only names the reasons);
        # stripping has already removed what it refuses at the ends.
        problems = id_problems(self.parsed(column))
        for problem, reason in ((TOO_LONG, ID_TOO_LONG), (APOSTROPHE, ID_APOSTROPHE), (None, ID_CONTROL)):
            mask = problems.is_not_null() if problem is None else (problems == problem).fill_null(False)
            self.drop(mask, reason, column)
            problems = problems.filter(~mask)

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

    def check_hashtags(self, column: str) -> None:
        self.put(column, _hashtags(self.raw(column), self.df.height))

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
