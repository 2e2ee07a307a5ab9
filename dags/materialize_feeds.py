"""Materialize every user's ranked feed for the newest embedded snapshot, validate it, and publish it.

Runs when `refresh_embeddings` has loaded a snapshot's vectors (the embeddings
asset), or by hand with an explicit `snapshot_id`. A snapshot that fails
validation is never published; the previous one stays live.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag

from jobs.dag_defaults import DEFAULT_ARGS, EMBEDDINGS_URI, START
from jobs.dag_tasks import latest_snapshot, materialize, publish, rebuild_warehouse, shard_list, trending, validate


@dag(
    dag_id="materialize_feeds",
    description="Rank each user's feed from the snapshot's vectors under the feed policy; validate; publish.",
    doc_md=__doc__,
    schedule=[Asset(EMBEDDINGS_URI)],
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["recsys", "feeds"],
    params={
        "snapshot_id": Param(
            None, type=["null", "string"], description="Snapshot to finish; default: the newest unpublished one."
        ),
    },
)
def materialize_feeds() -> None:
    snapshot_id = latest_snapshot()
    feeds = materialize.partial(snapshot_id=snapshot_id).expand(shard=shard_list(snapshot_id, "user"))
    top = trending(snapshot_id)
    checked = validate(snapshot_id)
    [feeds, top] >> checked
    rebuild_warehouse(publish(snapshot_id, checked))


materialize_feeds()
