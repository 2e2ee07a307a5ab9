"""The DuckDB warehouse: a small database file of views for analysts' ad hoc SQL.

It holds no data of its own, only views over the live lake version (and, as the
pipeline grows, over snapshots and model metrics), so it is cheap to rebuild and
is rebuilt atomically after every lake commit: a new file is written beside the
old one and renamed over it, so an analyst never opens a half-built warehouse.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb

from rec_core.atomic import atomic_path
from rec_core.lake import Lake
from rec_core.schemas import TABLES
from rec_core.settings import Settings

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
            con.execute("CHECKPOINT")
        finally:
            con.close()
    log.info("warehouse %s rebuilt over lake %s", target, version.name)
    return target
