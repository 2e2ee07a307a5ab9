"""Impressions: every page served is logged off the request path, survives a kill, reaches the lake once, and
joins the events that name its request_id."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import duckdb
import httpx
import msgspec
import polars as pl
import pytest

from feed_api.impression_log import ImpressionLog, PageShown
from feed_api.pager import Item
from feed_api.telemetry import Metrics
from rec_core.data.impressions import impression_rows, merged_impressions
from rec_core.data.inbox import CONSUMED, InboxRecord, InboxWriteError, iter_kind, read_new
from rec_core.data.inbox_merge import ingest_inbox
from rec_core.data.lake import Lake
from rec_core.data.warehouse import build_warehouse
from rec_core.settings import Settings
from tests.conftest import ApiServer
from tests.test_feed_api import error, live_id, page
from tests.test_feed_api_lifecycle import world_copy  # noqa: F401  (a fixture)

USER = "u0000010"


def shown(request_id: str, first_position: int = 0, n: int = 3, ts_ms: int = 1_764_720_000_000) -> PageShown:
    items = [Item(f"v{first_position + i}", 1.0 - i / 10, "for you") for i in range(n)]
    return PageShown(request_id, "u1", "s1", "m1", None, None, ts_ms, first_position, items, 2, "precomputed")


def line(page: PageShown, **changes: object) -> dict:
    return {**msgspec.to_builtins(page), **changes}


def as_record(page: PageShown) -> InboxRecord:
    return InboxRecord("impression", dt.datetime.now(dt.UTC), line(page))


# ---- the rows of a page (pure) ---------------------------------------------------------------------------------------


def test_a_page_becomes_one_row_per_item_once_and_a_bad_line_is_skipped() -> None:
    good = shown("a" * 32, first_position=20)
    bad = [
        line(good, request_id="not-a-request-id"),
        line(good, from_list=4),  # more items from the list than the page holds
        line(good, user_id=" u1"),  # the id rule
        line(good, list_source="elsewhere"),
        line(good, items=[{"video_id": "v1", "score": "high", "reason": "for you"}]),
    ]
    records = [as_record(good), *(InboxRecord("impression", dt.datetime.now(dt.UTC), b) for b in bad)]
    rows, skipped = impression_rows(records)
    assert skipped == len(bad)
    assert rows["position"].to_list() == [20, 21, 22]
    assert rows["video_id"].to_list() == ["v20", "v21", "v22"]
    assert rows["source"].to_list() == ["precomputed", "precomputed", "live"]  # from_list=2
    assert set(rows["request_id"]) == {"a" * 32} and rows["arm"].null_count() == rows["experiment"].null_count() == 3

    # Read twice (a crash between the lake commit and the consumed mark): nothing is added twice.
    once = merged_impressions(rows.clear(), rows, keep_days=30)
    assert merged_impressions(once, rows, keep_days=30).equals(once)
    # Older than keep_days before the newest: trimmed.
    old, _ = impression_rows([as_record(shown("b" * 32, ts_ms=1_764_720_000_000 - 31 * 86_400_000))])
    assert merged_impressions(once, old, keep_days=30).equals(once)


def test_a_failing_disk_keeps_pages_up_to_the_bound_and_counts_the_rest(tmp_path: Path) -> None:
    metrics = Metrics()
    log = ImpressionLog(tmp_path / "impressions", flush_s=60, pending_max=3, metrics=metrics)
    writes: list[int] = []

    def failing(payload: bytes, count: int) -> None:
        raise InboxWriteError(28, "No space left on device")

    real = log._writer.append_lines
    log._writer.append_lines = failing  # type: ignore[method-assign]  # the disk, not the logic, is faked
    for i in range(5):
        log.record(shown(f"{i:032x}"))
    assert log.pending == 3 and metrics.counters["impressions_dropped"] == 2  # served, not logged, counted
    assert log.flush() == 0 and log.pending == 3  # kept for the next try

    def counting(payload: bytes, count: int) -> None:
        writes.append(count)
        real(payload, count)

    log._writer.append_lines = counting  # type: ignore[method-assign]
    log.record(shown(f"{9:032x}"))  # over the bound again: dropped
    assert log.flush() == 3 and writes == [3] and log.pending == 0
    assert metrics.counters["impressions_dropped"] == 3
    log.close()
    ids = [r.data["request_id"] for r in read_new(tmp_path / "impressions").records]
    assert ids == [f"{i:032x}" for i in range(3)]


# ---- through the API -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_walk_is_logged_ingested_once_and_joined_to_the_events_it_caused(world_copy: Path) -> None:  # noqa: F811
    server = ApiServer(world_copy, api_impression_flush_ms="100").start()
    try:
        pages, cursor = [], None
        for _ in range(3):
            body = page(server, USER, limit=10, cursor=cursor)
            pages.append(body)
            cursor = body["next_cursor"]
        request_ids = [p["request_id"] for p in pages]
        assert len(set(request_ids)) == 3 and all(len(r) == 32 and int(r, 16) >= 0 for r in request_ids)
        liked = pages[1]["items"][3]["video_id"]
        watched = pages[0]["items"][0]["video_id"]
        events = [
            {"user_id": USER, "video_id": liked, "type": "like", "request_id": request_ids[1]},
            {"user_id": USER, "video_id": watched, "type": "watch", "completion": 0.5},  # names no page
        ]
        assert httpx.post(f"{server.url}/events", json={"events": events}).status_code == 200
        bad = {"user_id": USER, "video_id": liked, "type": "like", "request_id": request_ids[1].upper()}
        error(httpx.post(f"{server.url}/events", json=bad), 400, field="request_id")
    finally:
        server.stop()  # a clean stop writes every page

    settings = Settings.load({"REC_DATA_DIR": str(world_copy)})
    taken = ingest_inbox(settings)
    assert taken["impression_pages"] == 3 and taken["impressions_shown"] == 30, taken
    lake = Lake(world_copy / "lake")
    rows = pl.from_arrow(lake.read("impressions")).filter(pl.col("user_id") == USER).sort("position")
    assert rows["position"].to_list() == list(range(30))
    assert rows["video_id"].to_list() == [i["video_id"] for p in pages for i in p["items"]]
    assert rows["request_id"].to_list() == [r for r in request_ids for _ in range(10)]
    assert rows["reason"].to_list() == [i["reason"] for p in pages for i in p["items"]]
    build = json.loads((world_copy / "snapshots" / live_id(world_copy) / "build.json").read_text())
    assert set(rows["snapshot_id"]) == {live_id(world_copy)} and set(rows["model_version"]) == {build["model_version"]}
    assert set(rows["source"]) == {"precomputed"}  # the tiny world's feeds are 200 long

    # The batch crashed after the lake commit, before marking the log consumed: reading it again adds nothing.
    (world_copy / "impressions" / CONSUMED).unlink()
    again = ingest_inbox(settings)
    assert again["impression_pages"] == 3 and lake.read("impressions").num_rows == 30

    con = duckdb.connect(str(build_warehouse(settings.paths, settings.batch)), read_only=True)
    try:
        engaged = con.execute(
            "SELECT request_id, position, video_id, liked FROM impression_outcomes WHERE viewed ORDER BY position"
        ).fetchall()
    finally:
        con.close()
    # The like joins the impression it named; the watch named no page, so it joins none.
    assert engaged == [(request_ids[1], 13, liked, True)]


@pytest.mark.slow
def test_pages_served_before_a_kill_are_on_disk(world_copy: Path) -> None:  # noqa: F811
    """The log is written every flush interval (200 ms): a kill loses at most the pages of the last one."""
    server = ApiServer(world_copy, api_impression_flush_ms="200").start()
    try:
        served = [page(server, f"u{n:07d}", limit=5)["request_id"] for n in range(20)]
        time.sleep(1.0)  # five intervals
        server.kill()
    finally:
        server.stop()
    logged = {r.data["request_id"] for r in iter_kind(read_new(world_copy / "impressions"), "impression")}
    assert set(served) <= logged
