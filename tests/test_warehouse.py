"""The DuckDB warehouse over the lake, the live snapshot and model metrics; the README's analysis queries."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from rec_core.data.summary import summarize
from rec_core.data.warehouse import ANALYSIS_QUERIES, build_warehouse
from rec_core.settings import Settings
from rec_core.snapshot.manifest import read_manifest
from rec_core.snapshot.publish import publish, rollback
from rec_core.synthetic.commit import generate_data
from tests.test_snapshot import FEED, MODEL, fresh_settings, valid_snapshot


@pytest.fixture(scope="module")
def lake_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings.load({}).override(data_dir=tmp_path_factory.mktemp("whlake") / "data", feed_length=FEED)
    generate_data(settings, "tiny", seed=2)
    return settings


@pytest.fixture
def settings(lake_settings: Settings, tmp_path: Path) -> Settings:
    return fresh_settings(lake_settings, tmp_path)


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def _write_model(settings: Settings, version: str, recall: float, *, current: bool) -> None:
    folder = settings.paths.models_dir / version
    folder.mkdir(parents=True)
    metrics = {
        "dataset": "generate_data scale=tiny",
        "split": {"users": 300},
        "models": {
            "two_tower": {"recall@50": recall, "ndcg@50": recall / 2, "cold_recall@50": 0.1, "coverage@50": 0.4},
            "most_pop": {"recall@50": 0.05, "ndcg@50": 0.02, "note": "not a number"},
        },
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if current:
        (settings.paths.models_dir / "CURRENT").write_text(f"{version}\n")


def test_lake_only_warehouse_has_empty_snapshot_and_model_tables(settings: Settings) -> None:
    path = build_warehouse(settings.paths, settings.batch)
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = _tables(con)
        assert {"videos", "users", "follows", "interactions", "lake_info"} <= tables
        assert {"snapshots", "snapshot_history", "model_metrics"} <= tables
        assert not {"feeds", "trending", "video_vectors", "user_vectors", "snapshot_info"} & tables
        for name in ("snapshots", "snapshot_history", "model_metrics"):
            assert con.execute(f"SELECT count(*) FROM {name}").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM videos").fetchone()[0] == 1500
    finally:
        con.close()
    # The summary job works before the first publish, and leaves out the queries that need feeds.
    results = summarize(settings)
    assert "Tables" in results and not set(ANALYSIS_QUERIES) & set(results)


def test_analysis_queries_answer_on_a_published_snapshot(settings: Settings) -> None:
    _write_model(settings, "m20260101T000000Z-aaaa1111", 0.20, current=False)
    _write_model(settings, "m20260102T000000Z-bbbb2222", 0.25, current=True)
    (settings.paths.models_dir / ".staging-m20260103T000000Z-cccc3333").mkdir()  # a half-written save is ignored
    first = valid_snapshot(settings, 1)
    publish(settings.paths, first.snapshot_id, keep=settings.batch.snapshots_keep)
    second = valid_snapshot(settings, 2)
    publish(settings.paths, second.snapshot_id, keep=settings.batch.snapshots_keep)
    manifest = read_manifest(second)
    path = build_warehouse(settings.paths, settings.batch)

    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM feeds").fetchone()[0] == manifest.counts["feed_rows"]
        assert con.execute("SELECT count(*) FROM trending").fetchone()[0] == FEED
        assert con.execute("SELECT count(*) FROM video_vectors").fetchone()[0] == manifest.counts["video_vectors"]
        assert con.execute("SELECT count(*) FROM user_vectors").fetchone()[0] == manifest.counts["user_vectors"]
        assert con.execute("SELECT snapshot_id, model_version FROM snapshot_info").fetchone() == (
            second.snapshot_id,
            MODEL,
        )
        assert con.execute("SELECT snapshot_id, live, kept FROM snapshots ORDER BY first_seq").fetchall() == [
            (first.snapshot_id, False, True),
            (second.snapshot_id, True, True),
        ]
        metrics = con.execute(
            "SELECT model_version, current, model, metric, value FROM model_metrics "
            "WHERE metric = 'recall@50' ORDER BY ALL"
        ).fetchall()
        assert metrics == [
            ("m20260101T000000Z-aaaa1111", False, "most_pop", "recall@50", 0.05),
            ("m20260101T000000Z-aaaa1111", False, "two_tower", "recall@50", 0.20),
            ("m20260102T000000Z-bbbb2222", True, "most_pop", "recall@50", 0.05),
            ("m20260102T000000Z-bbbb2222", True, "two_tower", "recall@50", 0.25),
        ]
        # Views name absolute paths of exactly the live snapshot's shards (the online metrics are views of views).
        views = (
            "SELECT sql FROM duckdb_views() WHERE NOT internal "
            "AND view_name NOT LIKE 'online_%' AND view_name != 'impression_outcomes'"
        )
        for (sql,) in con.execute(views).fetchall():
            assert re.search(r"read_parquet\((list_value\(|\[)?'/", sql), sql
            assert first.snapshot_id not in sql
        feeds_sql = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'feeds'").fetchone()[0]
        assert feeds_sql.count(str(second.feeds_dir.resolve())) == 2 and "*" not in feeds_sql.split("FROM")[1]
        results = {}
        for title, sql in ANALYSIS_QUERIES.items():
            rows = con.execute(sql).fetchall()
            assert rows, f"no rows from {title!r}"
            results[title] = rows
    finally:
        con.close()

    share = results["Feed share per creator (top 10 by feed slots)"]
    assert len(share) == 10 and share[0][1] >= share[-1][1] > 0
    catalogue, in_feeds, pct = results["Catalogue coverage of the feeds"][0][:3]
    assert catalogue == 1500 and 0 < in_feeds <= catalogue and 0 < pct <= 100
    slots, pct_fresh, pct_unwatched = results[
        "Cold-video exposure (posted within 3 days of as-of, or never watched before it)"
    ][0][:3]
    assert slots == manifest.counts["feed_rows"] and 0 <= pct_fresh <= 100 and 0 <= pct_unwatched <= 100
    kinds = {r[0] for r in results["Why videos are shown (reason mix)"]}
    assert kinds == {"because you liked a video", "from @creator you follow", "popular right now", "trending in #tag"}
    later = results["Average feed rank of videos users watched or liked after as-of"]
    assert [r[0] for r in later] == [False, True] and sum(r[1] for r in later) > 0  # as-of is mid-history
    assert any(r[2] > 0 and 0 <= r[4] < FEED for r in later)  # some later interactions were in the feed
    models = results["Model metrics over versions (test split)"]
    assert [(r[0], r[2], r[3]) for r in models][-2:] == [
        ("m20260102T000000Z-bbbb2222", "two_tower", 0.25),
        ("m20260102T000000Z-bbbb2222", "most_pop", 0.05),
    ]
    assert len(results["Published snapshots"]) == 2


def test_warehouse_follows_a_rollback_and_opens_from_anywhere(settings: Settings, tmp_path: Path) -> None:
    first, second = valid_snapshot(settings, 1), valid_snapshot(settings, 2)
    publish(settings.paths, first.snapshot_id, keep=settings.batch.snapshots_keep)
    publish(settings.paths, second.snapshot_id, keep=settings.batch.snapshots_keep)
    build_warehouse(settings.paths, settings.batch)
    rollback(settings.paths)
    path = build_warehouse(settings.paths, settings.batch)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A fresh process in another working directory: the views must not depend on the cwd.
    code = (
        "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
        "print(con.execute('SELECT snapshot_id FROM snapshot_info').fetchone()[0], "
        "con.execute('SELECT count(*) FROM feeds').fetchone()[0], "
        "con.execute('SELECT count(*) FROM snapshot_history').fetchone()[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], cwd=elsewhere, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [first.snapshot_id, str(read_manifest(first).counts["feed_rows"]), "3"]
    assert not list(settings.paths.data_dir.glob(".warehouse.duckdb.*"))  # no temp file left beside it
    assert os.access(path, os.R_OK)


def test_a_rebuild_is_not_paired_with_the_wal_of_a_crashed_read_write_session(settings: Settings) -> None:
    """DuckDB names a database's write-ahead log after its path: an analyst's read-write session that made a
    table and died left ``warehouse.duckdb.wal``, every rebuilt warehouse renamed under that path was paired with
    it, and every open failed ("WAL does not match database file") until someone deleted it by hand."""
    path = build_warehouse(settings.paths, settings.batch)
    crashed = (
        "import duckdb, os, sys\n"
        "con = duckdb.connect(sys.argv[1])\n"  # read-write: the duckdb CLI's default
        "con.execute('CREATE TABLE my_scratch AS SELECT * FROM interactions LIMIT 1000')\n"
        "os._exit(0)\n"  # no close, no checkpoint: as a killed notebook leaves it
    )
    subprocess.run([sys.executable, "-c", crashed, str(path)], check=True, timeout=60)
    assert path.with_name(path.name + ".wal").is_file(), "the session left no WAL: the test proves nothing"
    build_warehouse(settings.paths, settings.batch)
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM videos").fetchone()[0] == 1500
    finally:
        con.close()


def test_two_rebuilds_at_once_leave_the_warehouse_over_what_is_live(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow rebuild (a summary job) that read the live snapshot before a rollback, and renamed its file after the
    rollback's own rebuild, left the warehouse describing a snapshot no longer live until the next rebuild."""
    import threading

    import rec_core.data.warehouse as warehouse

    first, second = valid_snapshot(settings, 1), valid_snapshot(settings, 2)
    publish(settings.paths, first.snapshot_id, keep=settings.batch.snapshots_keep)
    publish(settings.paths, second.snapshot_id, keep=settings.batch.snapshots_keep)
    has_read_live, may_finish = threading.Event(), threading.Event()
    original = warehouse._model_metrics

    def slow(con: duckdb.DuckDBPyConnection, paths: object) -> None:  # after the live snapshot was read
        if threading.current_thread().name == "slow":
            has_read_live.set()
            may_finish.wait(30)
        original(con, paths)

    monkeypatch.setattr(warehouse, "_model_metrics", slow)
    summary = threading.Thread(target=build_warehouse, args=(settings.paths, settings.batch), name="slow")
    summary.start()
    assert has_read_live.wait(30)
    rollback(settings.paths)  # the first snapshot is live again
    rebuild = threading.Thread(target=build_warehouse, args=(settings.paths, settings.batch))
    rebuild.start()
    rebuild.join(1.0)  # under the lock it waits for the slow one; without it, it is done by now
    may_finish.set()
    summary.join(60)
    rebuild.join(60)
    con = duckdb.connect(str(settings.paths.warehouse_path), read_only=True)
    try:
        assert con.execute("SELECT snapshot_id FROM snapshot_info").fetchone()[0] == first.snapshot_id
    finally:
        con.close()
