"""The whole batch, end to end: inbox -> lake -> features -> model -> vectors -> feeds -> live snapshot.

The stages and their order are declared once, in `rec_core.stages` (`python -m jobs.pipeline run`
runs the same list without Airflow). Embedding and materialization are mapped over shards, so
with several Airflow workers (CeleryExecutor) the shards run in parallel on different machines.
Each step is idempotent and writes atomically; publishing is one pointer swap, so a failure
anywhere leaves the previous snapshot live.
"""

from __future__ import annotations

from airflow.sdk import Param, dag
from rec_dags.defaults import DEFAULT_ARGS, START, caption_shards_param, ranker_param, shard_params, warm_start_param
from rec_dags.stage_tasks import wire

from rec_core.stages import PIPELINE


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
        "ranker": ranker_param(),
        "warm_start": warm_start_param(),
        **shard_params(),
        "caption_shards": caption_shards_param(),
    },
)
def recsys_pipeline() -> None:
    wire(PIPELINE)


recsys_pipeline()
