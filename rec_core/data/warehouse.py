"""The DuckDB warehouse: one small database file of views, for analysts' ad hoc SQL.

``duckdb -readonly data/warehouse.duckdb`` then ``SHOW TABLES`` lists what is there (read-only: every rebuild
replaces the file, and with it any table an analyst made in it; keep yours in a database of your own and
``ATTACH 'data/warehouse.duckdb' (READ_ONLY)``):

* always: views ``videos``, ``users``, ``follows``, ``interactions`` and ``impressions``
  (what the API served, one row per item; an empty table before the first ingest of
  any) over the live lake version, ``impression_outcomes`` (each impression with what
  the user did with it, joined by the page's ``request_id`` that the event named),
  and the table ``lake_info`` (lake version, source, commit time);
* always, possibly empty: ``snapshots`` (one row per published snapshot: its first place in the
  publish log, ``first_seq``, which orders publishes within one second; when it
  was first and last made live, its model, whether it is live, whether its folder
  is still kept), ``snapshot_history`` (one row per publish / rollback) and
  ``model_metrics`` (one row per model version, model and metric from
  ``models/*/metrics.json``; ``current`` marks ``models/CURRENT``);
* once a snapshot is live: views ``feeds``, ``trending``, ``video_vectors``,
  ``user_vectors`` over the live snapshot's files, and the one-row table
  ``snapshot_info`` (its id, model, lake version, as-of time). Before the first
  publish these are absent, so a query over ``feeds`` fails with "Table ... does
  not exist" rather than answering from nothing.

Views name absolute file paths (the exact shard list of the snapshot's
``build.json``, never a glob a stray file could join), so the warehouse opens
from any working directory. It holds no data of its own beyond the small tables,
and is rebuilt by every publish and rollback (``jobs.publish``, the pipeline's
``rebuild_warehouse`` stage), by the data DAGs after their lake commit, and by
``python -m jobs.summarize``; a lake commit made by a job CLI by hand
(``jobs.generate_data``, ``jobs.import_dataset``, ``jobs.ingest_inbox``) shows once
one of those runs. Each rebuild is written beside the
old file and renamed over it, so an analyst never opens a half-built warehouse.
A warehouse built before a publish keeps pointing at the snapshot that was live
then; that snapshot stays on disk for ``snapshots_keep`` more publishes.

``ANALYSIS_QUERIES`` are the README's example queries (a test runs each of them).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from rec_core.atomic import atomic_path, exclusive_lock
from rec_core.data.lake import LakeVersion, lake_for
from rec_core.data.tables import LAKE_TABLES
from rec_core.model.store import ModelStoreError, model_store
from rec_core.settings import BatchSettings, PathSettings
from rec_core.snapshot.layout import SnapshotError, SnapshotPaths, live_snapshot_id

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"  # rec_core.snapshot.publish.HISTORY_FILE (not imported: the warehouse only reads it)


def _sql_str(value: str | Path) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def build_warehouse(paths: PathSettings, batch: BatchSettings) -> Path:
    """(Re)build ``paths.warehouse_path`` atomically; needs a lake, works without a snapshot or a model.

    One rebuild at a time: two at once (a summary beside a publish) each read the live snapshot and the lake
    version, and the one renamed last won, though it may have read them first, leaving a warehouse over a
    snapshot no longer live. Under the lock the later one reads what the earlier left live."""
    target = paths.warehouse_path
    lake_for(paths, batch).current()  # no lake: say so before making the lock under a mistyped data root
    with exclusive_lock(target.with_name(target.name + ".lock")):
        return _build(paths, batch, target)


def _build(paths: PathSettings, batch: BatchSettings, target: Path) -> Path:
    lake = lake_for(paths, batch)
    version = lake.current()
    with atomic_path(target) as tmp:
        tmp.unlink()  # DuckDB wants to create the file itself
        con = duckdb.connect(str(tmp))
        try:
            _lake_tables(con, version)
            con.execute(
                "CREATE TABLE lake_info AS SELECT ? AS lake_version, ? AS source, ?::TIMESTAMPTZ AS committed_at",
                [version.name, version.manifest.get("source"), version.manifest.get("created_at")],
            )
            live = _snapshot_tables(con, paths)
            _model_metrics(con, paths)
            con.execute("CHECKPOINT")
        finally:
            con.close()
    # DuckDB names the write-ahead log after the path, not the file: a read-write session on the old file that
    # wrote and died (or is still open) left one that every open of the new file would replay and fail on. A
    # session still open keeps its own handles on the old file and log, and sees the old warehouse until it closes.
    stale_wal = target.with_name(target.name + ".wal")
    if stale_wal.exists():
        log.warning("warehouse %s: removing %s, left by a read-write session on the old file", target, stale_wal.name)
        stale_wal.unlink(missing_ok=True)
    log.info("warehouse %s rebuilt over lake %s, live snapshot %s", target, version.name, live or "none")
    return target


_DUCKDB_TYPES = {"string": "VARCHAR", "bool": "BOOLEAN"}  # of the lake's added columns (tables.TableSpec.added)
# A session is one walk of the feed from its top (the app opened or pulled to refresh: a page at position 0), cut
# also where a user's impressions are further apart than this.
SESSION_GAP = "30 minutes"


def _lake_tables(con: duckdb.DuckDBPyConnection, version: LakeVersion) -> None:
    """A view per lake table; a column added since the file was written reads as null, and a table the lake
    does not hold yet (impressions before the first ingest of them) is an empty table of its columns."""
    for name, spec in LAKE_TABLES.items():
        path = version.table_path(name).resolve()
        if not path.is_file():
            con.register("_empty", spec.schema.empty_table())
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM _empty")
            con.unregister("_empty")
            continue
        present = set(pq.read_schema(path).names)
        added = "".join(
            f", NULL::{_DUCKDB_TYPES[str(spec.schema.field(c).type)]} AS {c}" for c in spec.added if c not in present
        )
        con.execute(f"CREATE VIEW {name} AS SELECT *{added} FROM read_parquet({_sql_str(path)})")
    _online_views(con)


def _online_views(con: duckdb.DuckDBPyConnection) -> None:
    """What users did with what they were shown: the rates a short-video product watches, over impressions."""
    # Each item shown, with what the user did with it when their events named the page (request_id). An item
    # is viewed when an event of the user's named its page: a page's items under the fold may never be.
    con.execute(
        """CREATE VIEW impression_outcomes AS
        SELECT i.*, e.ts AS engaged_at, e.user_id IS NOT NULL AS viewed,
               coalesce(e.completion, 0) AS completion, coalesce(e.watch_time_s, 0) AS watch_time_s,
               coalesce(e.liked, false) AS liked, coalesce(e.shared, false) AS shared,
               coalesce(e.commented, false) AS commented, coalesce(e.skipped, false) AS skipped,
               sum(CASE WHEN gap THEN 1 ELSE 0 END) OVER (PARTITION BY i.user_id ORDER BY i.ts, i.position) AS session
        FROM (SELECT *, position = 0 OR coalesce(ts - lag(ts) OVER (PARTITION BY user_id ORDER BY ts, position)
                                                > INTERVAL '"""
        + SESSION_GAP
        + """', true) AS gap FROM impressions) i
        LEFT JOIN interactions e
          ON e.request_id = i.request_id AND e.user_id = i.user_id AND e.video_id = i.video_id"""
    )
    rates = """count(*) AS impressions, count(DISTINCT user_id) AS users,
        count(*) FILTER (WHERE viewed) AS viewed,
        round(avg(CASE WHEN completion >= 0.8 THEN 1.0 ELSE 0.0 END) FILTER (WHERE viewed), 4) AS watch_through_80,
        round(avg(CASE WHEN liked THEN 1.0 ELSE 0.0 END) FILTER (WHERE viewed), 4) AS like_rate,
        round(avg(CASE WHEN shared THEN 1.0 ELSE 0.0 END) FILTER (WHERE viewed), 4) AS share_rate,
        round(avg(CASE WHEN skipped THEN 1.0 ELSE 0.0 END) FILTER (WHERE viewed), 4) AS skip_rate,
        round(avg(completion) FILTER (WHERE viewed), 4) AS mean_completion"""
    for view, keys in {
        "online_daily": "CAST(ts AS DATE) AS day, arm, source",
        "online_by_position": "arm, position",
        "online_by_reason": "arm, reason",
    }.items():
        con.execute(f"CREATE VIEW {view} AS SELECT {keys}, {rates} FROM impression_outcomes GROUP BY ALL ORDER BY ALL")
    con.execute(
        """CREATE VIEW online_sessions AS
        SELECT arm, count(*) AS sessions, round(avg(viewed), 2) AS videos_per_session
        FROM (SELECT user_id, session, any_value(arm) AS arm, count(*) FILTER (WHERE viewed) AS viewed
              FROM impression_outcomes GROUP BY user_id, session)
        GROUP BY ALL ORDER BY ALL"""
    )


def _snapshot_tables(con: duckdb.DuckDBPyConnection, paths: PathSettings) -> str | None:
    history_file = paths.snapshots_dir / HISTORY_FILE
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    live = live_snapshot_id(paths)
    con.execute(
        "CREATE TABLE snapshot_history (seq INTEGER, snapshot_id VARCHAR, published_at TIMESTAMPTZ, "
        "model_version VARCHAR, action VARCHAR, previous VARCHAR)"
    )
    rows = [
        (
            i,
            e["snapshot_id"],
            e.get("published_at"),
            e.get("model_version"),
            e.get("action", "publish"),
            e.get("previous"),
        )
        for i, e in enumerate(history)
    ]
    if rows:
        con.executemany("INSERT INTO snapshot_history VALUES (?, ?, ?, ?, ?, ?)", rows)
    kept = sorted(p.name for p in paths.snapshots_dir.glob("s*") if p.is_dir()) if history else []
    con.execute(
        "CREATE TABLE snapshots AS SELECT snapshot_id, min(seq) AS first_seq, "
        "any_value(model_version) AS model_version, min(published_at) AS first_published_at, "
        "max(published_at) AS published_at, count(*) AS times_made_live, "
        "snapshot_id = ? AS live, list_contains(?::VARCHAR[], snapshot_id) AS kept "
        "FROM snapshot_history GROUP BY snapshot_id ORDER BY first_seq",
        [live or "", kept],
    )
    if live is None:
        return None
    snapshot = SnapshotPaths((paths.snapshots_dir / live).resolve())
    try:
        build = snapshot.read_build()
    except SnapshotError as exc:
        log.warning("live snapshot %s is unreadable, the warehouse has no feeds: %s", live, exc)
        return None
    views = {
        "feeds": [snapshot.feed_part(i, build.user_shards) for i in range(build.user_shards)],
        "trending": [snapshot.trending_file],
        "video_vectors": [snapshot.video_vectors(i, build.video_shards) for i in range(build.video_shards)],
        "user_vectors": [snapshot.user_vectors(i, build.user_shards) for i in range(build.user_shards)],
    }
    for name, files in views.items():
        if files and all(f.is_file() for f in files):
            listed = ", ".join(_sql_str(f) for f in files)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listed}])")
        else:
            log.warning("live snapshot %s lacks files of %s; no such view", live, name)
    published = next((e.get("published_at") for e in reversed(history) if e["snapshot_id"] == live), None)
    con.execute(
        "CREATE TABLE snapshot_info AS SELECT ? AS snapshot_id, ? AS model_version, ? AS lake_version, "
        "?::TIMESTAMPTZ AS as_of, ?::TIMESTAMPTZ AS created_at, ?::TIMESTAMPTZ AS published_at, ? AS feed_length",
        [live, build.model_version, build.lake_version, build.as_of, build.created_at, published, build.feed_length],
    )
    return live


def _model_metrics(con: duckdb.DuckDBPyConnection, paths: PathSettings) -> None:
    con.execute(
        "CREATE TABLE model_metrics (model_version VARCHAR, current BOOLEAN, dataset VARCHAR, model VARCHAR, "
        "metric VARCHAR, value DOUBLE)"
    )
    store = model_store(paths)  # on the object store too, where REC_DATA_URI puts the models
    current = store.current()
    rows = []
    for version in store.versions():
        try:
            metrics = store.read_json(version, "metrics.json")
        except (ValueError, ModelStoreError) as exc:
            log.warning("skipping the metrics of %s: %s", version, exc)
            continue
        for model, values in (metrics.get("models") or {}).items():
            rows += [
                (version, version == current, metrics.get("dataset"), model, metric, float(value))
                for metric, value in values.items()
                if isinstance(value, int | float) and not isinstance(value, bool)
            ]
    if rows:
        con.executemany("INSERT INTO model_metrics VALUES (?, ?, ?, ?, ?, ?)", rows)


# The README's example queries; tests/test_warehouse.py runs each of them on a published snapshot.
# "Later" means after the live snapshot's as-of: interactions the batch had not seen when it ranked the feeds.
ANALYSIS_QUERIES: dict[str, str] = {
    "Feed share per creator (top 10 by feed slots)": """
        SELECT v.creator_id, count(*) AS slots,
               round(100.0 * count(*) / sum(count(*)) OVER (), 2) AS pct_of_slots,
               count(*) FILTER (WHERE f.rank < 20) AS first_page_slots,
               count(DISTINCT f.user_id) AS users_reached
        FROM feeds f JOIN videos v USING (video_id)
        GROUP BY v.creator_id ORDER BY slots DESC, v.creator_id LIMIT 10""",
    "Catalogue coverage of the feeds": """
        SELECT (SELECT count(*) FROM videos) AS catalogue,
               count(DISTINCT video_id) AS videos_in_feeds,
               round(100.0 * count(DISTINCT video_id) / (SELECT count(*) FROM videos), 2) AS pct_covered,
               count(DISTINCT video_id) FILTER (WHERE rank < 20) AS videos_on_first_pages,
               round(100.0 * count(DISTINCT video_id) FILTER (WHERE rank < 20) / (SELECT count(*) FROM videos), 2)
                   AS pct_covered_first_page
        FROM feeds""",
    "Cold-video exposure (posted within 3 days of as-of, or never watched before it)": """
        WITH watched AS (
            SELECT DISTINCT video_id FROM interactions, snapshot_info s WHERE interactions.ts < s.as_of
        ), slots AS (
            SELECT f.rank, v.created_at >= s.as_of - INTERVAL 3 DAY AS fresh, w.video_id IS NULL AS unwatched
            FROM feeds f JOIN videos v USING (video_id) CROSS JOIN snapshot_info s
            LEFT JOIN watched w USING (video_id)
        )
        SELECT count(*) AS slots,
               round(100.0 * avg(fresh::INT), 2) AS pct_fresh,
               round(100.0 * avg(unwatched::INT), 2) AS pct_never_watched,
               round(100.0 * avg(fresh::INT) FILTER (WHERE rank < 20), 2) AS pct_fresh_first_page,
               round(100.0 * avg(unwatched::INT) FILTER (WHERE rank < 20), 2) AS pct_never_watched_first_page
        FROM slots""",
    "Why videos are shown (reason mix)": """
        SELECT regexp_replace(regexp_replace(regexp_replace(reason, '"[^"]*"', '"…"', 'g'), '@\\S+', '@creator', 'g'),
                              '#\\S+', '#tag', 'g') AS reason_kind,
               count(*) AS slots, round(100.0 * count(*) / sum(count(*)) OVER (), 2) AS pct_of_slots,
               round(avg(rank), 1) AS avg_rank
        FROM feeds GROUP BY reason_kind ORDER BY slots DESC""",
    "Average feed rank of videos users watched or liked after as-of": """
        WITH later AS (
            SELECT i.user_id, i.video_id, i.liked FROM interactions i, snapshot_info s WHERE i.ts >= s.as_of
        )
        SELECT k.liked, count(l.user_id) AS later_interactions, count(f.video_id) AS in_feed,
               round(100.0 * count(f.video_id) / nullif(count(l.user_id), 0), 2) AS pct_in_feed,
               round(avg(f.rank), 1) AS avg_rank_in_feed,
               round(100.0 * count(*) FILTER (WHERE f.rank < 20) / nullif(count(f.video_id), 0), 2)
                   AS pct_of_hits_on_first_page
        FROM (VALUES (false), (true)) k(liked)
        LEFT JOIN later l USING (liked)
        LEFT JOIN feeds f ON f.user_id = l.user_id AND f.video_id = l.video_id
        GROUP BY k.liked ORDER BY k.liked""",
    "Model metrics over versions (test split)": """
        SELECT model_version, current, model,
               round(max(value) FILTER (WHERE metric = 'recall@50'), 4) AS recall_at_50,
               round(max(value) FILTER (WHERE metric = 'ndcg@50'), 4) AS ndcg_at_50,
               round(max(value) FILTER (WHERE metric = 'cold_recall@50'), 4) AS cold_recall_at_50,
               round(max(value) FILTER (WHERE metric = 'coverage@50'), 4) AS coverage_at_50
        FROM model_metrics GROUP BY ALL ORDER BY model_version, recall_at_50 DESC NULLS LAST""",
    "Published snapshots": """
        SELECT snapshot_id, model_version, first_published_at, published_at, times_made_live, live, kept
        FROM snapshots ORDER BY first_seq""",
}
