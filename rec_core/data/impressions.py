"""Impressions: what the API served, from its log segments into the lake's ``impressions`` table.

The API writes one line per page under ``<data root>/impressions/`` (the inbox's
durable segment format, :mod:`rec_core.data.inbox`, kind ``impression``; written by
:mod:`feed_api.impression_log`)::

    {"kind": "impression", "at": ..., "data": {"request_id": "<32 hex>", "user_id", "snapshot_id",
     "model_version", "arm": null, "ts_ms": 1764720000000, "first_position": 20,
     "video_ids": [...], "reasons": [...], "scores": [...], "sources": [...]}}

:func:`impression_rows` turns those into one row per item (position = first_position
+ index on the page). A line that breaks a rule (an id, a request id that is not
32 hex digits, lists of different lengths, an unknown source) is skipped and
counted: it was written by something other than our API, and must not fail every
later ingest. Ingestion is idempotent: rows are unique on (request_id, position),
so a segment read twice after a crash adds nothing. The lake keeps
``REC_IMPRESSIONS_KEEP_DAYS`` days, counted back from the newest impression.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any

import polars as pl

from rec_core.data.inbox import InboxRecord
from rec_core.ids import id_problem

KIND = "impression"
SOURCES = frozenset({"precomputed", "live", "trending"})
# "(?![\s\S])": the end of the text in Python and in JSON Schema alike ("$" also matches before a final newline).
REQUEST_ID_PATTERN = r"^[0-9a-f]{32}(?![\s\S])"
REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
LISTS = ("video_ids", "reasons", "scores", "sources")


def request_id_problem(value: Any) -> str | None:
    """Why ``value`` is not a request id the API issues (32 lowercase hex digits), or None."""
    if not isinstance(value, str) or REQUEST_ID.match(value) is None:
        return "must be the request_id of a page: 32 lowercase hex digits"
    return None


def page_problem(data: dict[str, Any]) -> str | None:
    """The first rule an impression line breaks, as "field: reason", or None."""
    if (problem := request_id_problem(data.get("request_id"))) is not None:
        return f"request_id: {problem}"
    for name in ("user_id", "snapshot_id", "model_version"):
        if (problem := id_problem(data.get(name))) is not None:
            return f"{name}: {problem}"
    if data.get("arm") is not None and (problem := id_problem(data["arm"])) is not None:
        return f"arm: {problem}"
    for name in ("ts_ms", "first_position"):
        value = data.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{name}: must be a non-negative integer"
    lists = [data.get(name) for name in LISTS]
    if not all(isinstance(v, list) for v in lists) or len({len(v) for v in lists}) != 1:  # type: ignore[arg-type]
        return f"{', '.join(LISTS)}: must be lists of one length"
    for i, video_id in enumerate(data["video_ids"]):
        if (problem := id_problem(video_id)) is not None:
            return f"video_ids[{i}]: {problem}"
    if not SOURCES.issuperset(data["sources"]):
        return f"sources: each must be one of {', '.join(sorted(SOURCES))}"
    if not all(isinstance(r, str) for r in data["reasons"]):
        return "reasons: must be strings"
    if not all(isinstance(s, int | float) and not isinstance(s, bool) for s in data["scores"]):
        return "scores: must be numbers"
    return None


def impression_rows(records: Iterable[InboxRecord]) -> tuple[pl.DataFrame, int]:
    """One row per item shown (the lake's ``impressions`` columns) and how many lines were skipped as invalid."""
    columns: dict[str, list[Any]] = {name: [] for name in _SCHEMA}
    skipped = 0
    for record in records:
        if record.kind != KIND:
            continue
        data = record.data
        if page_problem(data) is not None:
            skipped += 1
            continue
        n = len(data["video_ids"])
        ts = dt.datetime.fromtimestamp(data["ts_ms"] / 1000, dt.UTC)
        for name in ("request_id", "user_id", "snapshot_id", "model_version", "arm"):
            columns[name] += [data.get(name)] * n
        columns["ts"] += [ts] * n
        columns["position"] += range(data["first_position"], data["first_position"] + n)
        columns["video_id"] += data["video_ids"]
        columns["source"] += data["sources"]
        columns["reason"] += data["reasons"]
        columns["score"] += [float(s) for s in data["scores"]]
    return pl.DataFrame(columns, schema=_SCHEMA), skipped


def merged_impressions(lake_rows: pl.DataFrame, new_rows: pl.DataFrame, keep_days: int) -> pl.DataFrame:
    """The lake's impressions with ``new_rows`` added once each, trimmed to ``keep_days`` before the newest."""
    rows = pl.concat([lake_rows.select(list(_SCHEMA)), new_rows.select(list(_SCHEMA))]).unique(
        ["request_id", "position"], keep="first", maintain_order=True
    )
    if rows.is_empty():
        return rows
    newest = rows["ts"].max()
    assert isinstance(newest, dt.datetime)
    return rows.filter(pl.col("ts") >= newest - dt.timedelta(days=keep_days))


_SCHEMA: dict[str, Any] = {
    "request_id": pl.String,
    "position": pl.Int32,
    "ts": pl.Datetime("ms", "UTC"),
    "user_id": pl.String,
    "video_id": pl.String,
    "snapshot_id": pl.String,
    "model_version": pl.String,
    "arm": pl.String,
    "source": pl.String,
    "reason": pl.String,
    "score": pl.Float32,
}
