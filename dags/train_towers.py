"""Train the two towers on the live lake, evaluate against the baselines, and promote through the gate.

Tasks: embed captions (cached) -> train the towers of a new model version -> train
their ranker (param `ranker`, default `REC_RANKER`; the version is written whole only
then) -> evaluate it, the baselines and the current model on the same held-out split
-> gate the stack the version serves (retrieval + ranker, or retrieval alone). A refused
gate leaves the current model in place and says why in the task log; the new
version stays on disk for inspection (`python -m jobs.models show VERSION`).
Only a promotion updates the model asset (`announce_model`, skipped otherwise),
so `refresh_embeddings` re-embeds only for a new current model.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag
from rec_dags.defaults import DEFAULT_ARGS, LAKE_URI, START, caption_shards_param, ranker_param, warm_start_param
from rec_dags.stage_tasks import wire

from rec_core.stages import MODEL_RELEASE


@dag(
    dag_id="train_towers",
    description="Train the towers and their ranker, evaluate against MostPop/ItemKNN/EASE, promote if the gate passes.",
    doc_md=__doc__,
    schedule=[Asset(LAKE_URI)],
    start_date=START,
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["recsys", "model"],
    params={
        "epochs": Param(6, type="integer", minimum=1, maximum=200, description="Most epochs (early stopping)."),
        "embedding_dim": Param(64, type="integer", minimum=4, maximum=2048, description="Tower output size."),
        "promote": Param(True, type="boolean", description="Promote the model if it passes the quality gate."),
        "ranker": ranker_param(),
        "warm_start": warm_start_param(),
        "caption_shards": caption_shards_param(),
    },
)
def train_towers_dag() -> None:
    wire(MODEL_RELEASE)


train_towers_dag()
