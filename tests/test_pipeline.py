"""The whole batch DAG end to end on embedded defaults, at tiny scale, with real Airflow and Milvus Lite."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from rec_core.warehouse import ANALYSIS_QUERIES
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _feeds_hash(snapshot: Path) -> str:
    digest = hashlib.sha256()
    for part in sorted((snapshot / "feeds").glob("*.parquet")):
        table = pq.read_table(part, columns=["user_id", "rank", "video_id", "score", "reason"])
        digest.update(json.dumps(table.to_pydict(), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def test_recsys_pipeline_publishes_then_reruns_to_the_same_feeds(airflow_db: Path, data_env: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from jobs.generate_data import generate_data
    from rec_core.settings import Settings
    from rec_core.snapshot_layout import live_snapshot_id

    settings = Settings.load()
    generate_data(settings, "tiny", seed=4)
    dag = DagBag(str(ROOT / "dags")).get_dag("recsys_pipeline")
    conf = {"retrain": True, "epochs": 3, "video_shards": 2, "user_shards": 2}
    run = dag.test(run_conf=conf)
    assert run.state == "success"
    first = live_snapshot_id(settings)
    assert first is not None
    snapshot = settings.snapshots_dir / first
    manifest = json.loads((snapshot / "manifest.json").read_text())
    assert manifest["snapshot_id"] == first and manifest["counts"]["feed_users"] == manifest["counts"]["lake_users"]
    # The warehouse answers the README's analysis queries on the live snapshot.
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM feeds").fetchone()[0] == manifest["counts"]["feed_rows"]
        for title, sql in ANALYSIS_QUERIES.items():
            assert con.execute(sql).fetchall() is not None, title
        assert con.execute("SELECT count(*) FROM snapshots WHERE live").fetchone()[0] == 1
    finally:
        con.close()

    # Same lake, same model: reusing the current model must give the same feeds.
    run = dag.test(run_conf={**conf, "retrain": False})
    assert run.state == "success"
    second = live_snapshot_id(settings)
    assert second != first
    assert _feeds_hash(settings.snapshots_dir / second) == _feeds_hash(snapshot)
