"""Re-embed every video and user with the current model into a new snapshot's Milvus collection.

Runs when a new model is promoted (the model asset), or by hand. The snapshot it
begins is finished by `materialize_feeds`, which the embeddings asset triggers.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag

from jobs.dag_defaults import DEFAULT_ARGS, MODEL_URI, START, shard_params
from jobs.dag_tasks import begin_snapshot, embed_users, embed_videos, load_vectors, shard_list


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
    snap = begin_snapshot({})
    snapshot_id = snap["snapshot_id"]
    videos = embed_videos.partial(snapshot_id=snapshot_id).expand(shard=shard_list(snapshot_id, "video"))
    user_shards = shard_list(snapshot_id, "user")
    users = embed_users.partial(snapshot_id=snapshot_id).expand(shard=user_shards)
    loaded = load_vectors(snapshot_id)
    [videos, users] >> loaded


refresh_embeddings()
