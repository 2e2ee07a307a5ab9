"""Train the two towers on the live lake, evaluate against the baselines, and promote through the gate.

Tasks: embed captions (cached) -> train a new model version -> evaluate it, the
baselines and the current model on the same held-out split -> gate. A refused
gate leaves the current model in place and says why in the task log; the new
version stays on disk for inspection (`python -m jobs.models show VERSION`).
Only a promotion updates the model asset (`announce_model`, skipped otherwise),
so `refresh_embeddings` re-embeds only for a new current model.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag
from rec_dags.defaults import DEFAULT_ARGS, LAKE_URI, START
from rec_dags.stage_tasks import wire

from rec_core.stages import MODEL_RELEASE


@dag(
    dag_id="train_towers",
    description="Train the two-tower model, evaluate it against MostPop/ItemKNN/EASE, promote if it passes the gate.",
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
    },
)
def train_towers_dag() -> None:
    wire(MODEL_RELEASE)


train_towers_dag()
