"""The whole batch DAG end to end on embedded defaults, at tiny scale, with real Airflow and Milvus Lite."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
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


def test_killed_materialization_leaves_the_live_snapshot_alone(airflow_db: Path, data_env: Path) -> None:
    """SIGKILL in the middle of writing a feed shard: the live snapshot is untouched, the half-built one is
    refused by validation, and a rerun of the shard completes it."""
    from jobs.embed_users import embed_users
    from jobs.embed_videos import embed_videos
    from jobs.generate_data import generate_data
    from jobs.load_vectors import load_vectors
    from jobs.materialize_feeds import build_trending, materialize_feeds
    from jobs.pipeline import begin, choose_model
    from rec_core.settings import Settings
    from rec_core.snapshot import publish, validate_snapshot
    from rec_core.snapshot_layout import SnapshotError, live_snapshot_id

    settings = Settings.load()
    generate_data(settings, "tiny", seed=6)
    choose_model(settings, retrain=True, epochs=3)

    def build_upto_materialize() -> str:
        snapshot_id = begin(settings, video_shards=1, user_shards=2)["snapshot_id"]
        embed_videos(settings, snapshot_id, 0)
        for shard in range(2):
            embed_users(settings, snapshot_id, shard)
        load_vectors(settings, snapshot_id)
        build_trending(settings, snapshot_id)
        return snapshot_id

    live = build_upto_materialize()
    for shard in range(2):
        materialize_feeds(settings, live, shard)
    validate_snapshot(settings, live)
    publish(settings, live)
    before = {p.name: p.read_bytes() for p in (settings.snapshots_dir / live / "feeds").iterdir()}

    time.sleep(1.1)  # snapshot ids have one-second resolution
    new = build_upto_materialize()
    script = f"""
import os, signal
from pathlib import Path
import jobs.materialize_feeds as mf
from rec_core.settings import Settings
def dying(table, target):
    tmp = Path(target).with_name("." + Path(target).name + ".partial")
    tmp.write_bytes(b"PAR1 half a file")
    os.kill(os.getpid(), signal.SIGKILL)
mf._write_parquet = dying
mf.materialize_feeds(Settings.load(), {new!r}, 0)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env=dict(os.environ))
    assert proc.returncode == -9, proc.stderr.decode()[-500:]
    assert live_snapshot_id(settings) == live
    assert {p.name: p.read_bytes() for p in (settings.snapshots_dir / live / "feeds").iterdir()} == before
    with pytest.raises(SnapshotError, match="missing file"):
        validate_snapshot(settings, new)
    for shard in range(2):
        materialize_feeds(settings, new, shard)
    validate_snapshot(settings, new)
    publish(settings, new)
    assert live_snapshot_id(settings) == new
