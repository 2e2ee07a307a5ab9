"""The whole batch, end to end: inbox -> lake -> features -> model -> vectors -> feeds -> live snapshot.

Embedding and materialization are mapped over shards, so with several Airflow
workers (CeleryExecutor) the shards run in parallel on different machines.
Each step is idempotent and writes atomically; publishing is one pointer swap,
so a failure anywhere leaves the previous snapshot live.
"""

from __future__ import annotations

from airflow.sdk import Param, dag

from jobs.dag_defaults import DEFAULT_ARGS, START, shard_params
from jobs.dag_tasks import (
    begin_snapshot,
    build_features,
    embed_users,
    embed_videos,
    ingest_inbox,
    load_vectors,
    materialize,
    publish,
    rebuild_warehouse,
    shard_list,
    train_or_reuse,
    trending,
    validate,
)


@dag(
    dag_id="recsys_pipeline",
    description="Ingest the inbox, (re)train, embed into Milvus, materialize per-user feeds, validate and publish.",
    doc_md=__doc__,
    schedule=None,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["recsys", "pipeline"],
    params={
        "retrain": Param(
            True,
            type="boolean",
            description="Train a new model (it still has to pass the gate); false reuses the current model.",
        ),
        "epochs": Param(6, type="integer", minimum=1, maximum=200, description="Most training epochs."),
        **shard_params(),
    },
)
def recsys_pipeline() -> None:
    model = train_or_reuse(build_features(ingest_inbox()))
    snap = begin_snapshot(model)
    snapshot_id = snap["snapshot_id"]
    videos = embed_videos.partial(snapshot_id=snapshot_id).expand(shard=shard_list(snapshot_id, "video"))
    user_shards = shard_list(snapshot_id, "user")
    users = embed_users.partial(snapshot_id=snapshot_id).expand(shard=user_shards)
    loaded = load_vectors(snapshot_id)
    videos >> loaded
    top = trending(snapshot_id)
    feeds = materialize.partial(snapshot_id=snapshot_id).expand(shard=user_shards)
    [loaded, users] >> feeds
    loaded >> top
    checked = validate(snapshot_id)
    [feeds, top] >> checked
    rebuild_warehouse(publish(snapshot_id, checked))


recsys_pipeline()
