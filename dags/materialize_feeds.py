"""Materialize every user's ranked feed for the newest embedded snapshot, validate it, and publish it.

Runs when `refresh_embeddings` has loaded a snapshot's vectors (the embeddings
asset), or by hand with an explicit `snapshot_id`. A snapshot that fails
validation is never published; the previous one stays live. Its stages are the
pipeline's (`rec_core.stages`) from `trending` to the end.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag
from rec_dags.defaults import DEFAULT_ARGS, EMBEDDINGS_URI, START
from rec_dags.stage_tasks import wire

from rec_core.stages import PIPELINE, RESUME_SNAPSHOT, between


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
    wire((RESUME_SNAPSHOT, *between("trending", PIPELINE[-1].name)))


materialize_feeds()
