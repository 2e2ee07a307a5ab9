"""The DuckDB warehouse: a small database file of views for analysts' ad hoc SQL.

Views over the live lake version (videos, users, follows, interactions), the
live snapshot (feeds, trending, video_vectors, user_vectors: present once a
snapshot is published), and two small tables: ``snapshots`` (publish history)
and ``model_metrics`` (one row per model version, model and metric). It is
rebuilt atomically after every lake commit and every publish: a new file is
written beside the old one and renamed over it, so an analyst never opens a
half-built warehouse. ``ANALYSIS_QUERIES`` are the README's example queries.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import duckdb

from rec_core.atomic import atomic_path
from rec_core.lake import Lake
from rec_core.schemas import TABLES
from rec_core.settings import Settings
from rec_core.snapshot_layout import live_snapshot_id

log = logging.getLogger(__name__)


def _sql_str(value: str | Path) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def build_warehouse(settings: Settings) -> Path:
    """(Re)build ``settings.warehouse_path`` with one view per lake table."""
    lake = Lake(settings.lake_dir, settings.lake_versions_keep)
    version = lake.current()
    target = settings.warehouse_path
    with atomic_path(target) as tmp:
        tmp.unlink()  # DuckDB wants to create the file itself
        con = duckdb.connect(str(tmp))
        try:
            for name in TABLES:
                path = version.table_path(name).resolve()
                if path.is_file():
                    con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_sql_str(path)})")
            con.execute(
                "CREATE TABLE lake_info AS SELECT ? AS lake_version, ? AS source, ? AS committed_at",
                [version.name, version.manifest.get("source"), version.manifest.get("created_at")],
            )
            _snapshot_views(con, settings)
            _model_metrics(con, settings)
            con.execute("CHECKPOINT")
        finally:
            con.close()
    log.info("warehouse %s rebuilt over lake %s", target, version.name)
    return target


def _snapshot_views(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    history_file = settings.snapshots_dir / "history.json"
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    live = live_snapshot_id(settings)
    con.execute(
        "CREATE TABLE snapshots (snapshot_id VARCHAR, published_at TIMESTAMPTZ, model_version VARCHAR, live BOOLEAN)"
    )
    for entry in history:
        con.execute(
            "INSERT INTO snapshots VALUES (?, ?, ?, ?)",
            [entry["snapshot_id"], entry["published_at"], entry["model_version"], entry["snapshot_id"] == live],
        )
    if live is None:
        return
    root = (settings.snapshots_dir / live).resolve()
    views = {
        "feeds": root / "feeds" / "part-*.parquet",
        "trending": root / "trending.parquet",
        "video_vectors": root / "vectors" / "videos-*.parquet",
        "user_vectors": root / "vectors" / "users-*.parquet",
    }
    for name, pattern in views.items():
        if list(pattern.parent.glob(pattern.name)):
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_sql_str(pattern)})")
    build = json.loads((root / "build.json").read_text())
    con.execute(
        "CREATE TABLE snapshot_info AS SELECT ? AS snapshot_id, ? AS model_version, ?::TIMESTAMPTZ AS as_of",
        [live, build["model_version"], build["as_of"]],
    )


def _model_metrics(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    con.execute(
        "CREATE TABLE model_metrics (model_version VARCHAR, current BOOLEAN, dataset VARCHAR, model VARCHAR, "
        "metric VARCHAR, value DOUBLE)"
    )
    pointer = settings.models_dir / "CURRENT"
    current = pointer.read_text().strip() if pointer.is_file() else None
    rows = []
    for path in sorted(settings.models_dir.glob("m*/metrics.json")) if settings.models_dir.is_dir() else []:
        metrics = json.loads(path.read_text())
        version = path.parent.name
        for model, values in metrics.get("models", {}).items():
            rows += [
                (version, version == current, metrics.get("dataset"), model, metric, float(value))
                for metric, value in values.items()
                if isinstance(value, int | float)
            ]
    if rows:
        con.executemany("INSERT INTO model_metrics VALUES (?, ?, ?, ?, ?, ?)", rows)


# The README's example queries; a test runs each of them on a published snapshot.
ANALYSIS_QUERIES: dict[str, str] = {
    "Feed share per creator (top 10)": """
        SELECT v.creator_id, count(*) AS slots, round(100.0 * count(*) / sum(count(*)) OVER (), 2) AS pct_of_slots
        FROM feeds f JOIN videos v USING (video_id)
        GROUP BY v.creator_id ORDER BY slots DESC LIMIT 10""",
    "Catalogue coverage of the feeds": """
        SELECT count(DISTINCT f.video_id) AS videos_in_feeds, (SELECT count(*) FROM videos) AS catalogue,
               round(100.0 * count(DISTINCT f.video_id) / (SELECT count(*) FROM videos), 2) AS pct_covered
        FROM feeds f""",
    "Fresh-video exposure (posted within 3 days of the snapshot)": """
        SELECT round(100.0 * avg((v.created_at >= s.as_of - INTERVAL 3 DAY)::INT), 2) AS pct_slots_fresh,
               round(100.0 * avg((v.created_at >= s.as_of - INTERVAL 3 DAY)::INT) FILTER (WHERE f.rank < 20), 2)
                   AS pct_first_page_fresh
        FROM feeds f JOIN videos v USING (video_id), snapshot_info s""",
    "Why videos are shown (reason mix)": """
        SELECT regexp_extract(
                   reason, '^(because you liked|from|popular with|trending in|new from|new in|popular|based on)', 1
               ) AS kind, count(*) AS slots, round(avg(rank), 1) AS avg_rank
        FROM feeds GROUP BY kind ORDER BY slots DESC""",
    "Average feed rank of videos users later watched or liked": """
        SELECT i.liked, count(*) AS interactions, round(avg(f.rank), 1) AS avg_rank_in_feed
        FROM interactions i JOIN feeds f USING (user_id, video_id), snapshot_info s
        WHERE i.ts >= s.as_of GROUP BY i.liked ORDER BY i.liked""",
    "Model quality over versions (test recall@50)": """
        SELECT model_version, current, model, round(value, 4) AS recall_at_50
        FROM model_metrics WHERE metric = 'recall@50' ORDER BY model_version, value DESC""",
}
