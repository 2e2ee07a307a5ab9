"""Re-embed every video and user with the current model into a new snapshot's Milvus collection.

Runs when a new model is promoted (the model asset), or by hand. The snapshot it
begins is finished by `materialize_feeds`, which the embeddings asset triggers.
Its stages are the pipeline's (`rec_core.stages`) from `begin_snapshot` to `load_vectors`.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag
from rec_dags.defaults import DEFAULT_ARGS, MODEL_URI, START, shard_params
from rec_dags.stage_tasks import wire

from rec_core.stages import between


@dag(
    dag_id="refresh_embeddings",
    description="Embed all videos and users with the current model (sharded) and load a new Milvus collection.",
    doc_md=__doc__,
    schedule=[Asset(MODEL_URI)],
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["recsys", "embeddings"],
    params=shard_params(),
)
def refresh_embeddings() -> None:
    wire(between("begin_snapshot", "load_vectors"))


refresh_embeddings()
