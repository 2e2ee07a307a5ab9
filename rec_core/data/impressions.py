"""Impressions: what the API served, from its log segments into the lake's ``impressions`` table.

The API writes one line per page under ``<data root>/impressions/`` (the inbox's
durable segment format, :mod:`rec_core.data.inbox`, kind ``impression``; written by
:mod:`feed_api.impression_log`)::

    {"kind": "impression", "at": ..., "data": {"request_id": "<32 hex>", "user_id", "snapshot_id",
     "model_version", "experiment": null, "arm": null, "ts_ms": 1764720000000, "first_position": 20,
     "items": [{"video_id", "score", "reason"}, ...], "from_list": 8, "list_source": "precomputed"}}

:func:`impression_rows` turns those into one row per item (position = first_position
+ index on the page; source = list_source for the first from_list items, "live"
after). A line that breaks a rule (an id, a request id that is not 32 hex digits,
a from_list past the page, an unknown source) is skipped and counted: it was
written by something other than our API, and must not fail every later ingest.
Ingestion is idempotent: rows are unique on (request_id, position), so a segment
read twice after a crash adds nothing. The lake keeps ``REC_IMPRESSIONS_KEEP_DAYS``
days, counted back from the newest impression.
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
# "(?![\s\S])": the end of the text in Python and in JSON Schema alike ("$" also matches before a final newline).
REQUEST_ID_PATTERN = r"^[0-9a-f]{32}(?![\s\S])"
REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
LIST_SOURCES = frozenset({"precomputed", "trending"})
SOURCES = frozenset({*LIST_SOURCES, "live"})


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
    for name in ("experiment", "arm"):
        if data.get(name) is not None and (problem := id_problem(data[name])) is not None:
            return f"{name}: {problem}"
    items = data.get("items")
    if not isinstance(items, list):
        return "items: must be a list"
    for name, top in (("ts_ms", None), ("first_position", None), ("from_list", len(items))):
        value = data.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (top is not None and value > top):
            return f"{name}: must be an integer from 0" + (f" to {top}" if top is not None else "")
    if data.get("list_source") not in LIST_SOURCES:
        return f"list_source: must be one of {', '.join(sorted(LIST_SOURCES))}"
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            return f"items[{i}]: must be an object"
        if (problem := id_problem(item.get("video_id"))) is not None:
            return f"items[{i}].video_id: {problem}"
        if not isinstance(item.get("reason"), str):
            return f"items[{i}].reason: must be a string"
        score = item.get("score")
        if not isinstance(score, int | float) or isinstance(score, bool):
            return f"items[{i}].score: must be a number"
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
        items = data["items"]
        n, first = len(items), data["first_position"]
        for name in ("request_id", "user_id", "snapshot_id", "model_version", "experiment", "arm"):
            columns[name] += [data.get(name)] * n
        columns["ts"] += [dt.datetime.fromtimestamp(data["ts_ms"] / 1000, dt.UTC)] * n
        columns["position"] += range(first, first + n)
        columns["video_id"] += [i["video_id"] for i in items]
        columns["source"] += [data["list_source"]] * data["from_list"] + ["live"] * (n - data["from_list"])
        columns["reason"] += [i["reason"] for i in items]
        columns["score"] += [float(i["score"]) for i in items]
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
    "experiment": pl.String,
    "arm": pl.String,
    "source": pl.String,
    "reason": pl.String,
    "score": pl.Float32,
}
