"""Train the two towers on the live lake, evaluate against the baselines, and promote through the gate.

Tasks: embed captions (cached) -> train a new model version -> evaluate it, the
baselines and the current model on the same held-out split -> gate. A refused
gate leaves the current model in place and says why in the task log; the new
version stays on disk for inspection (`python -m jobs.models show VERSION`).
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task

from jobs.dag_defaults import DEFAULT_ARGS, LAKE_URI, MODEL_URI, START, job_settings


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
    @task
    def embed_text() -> dict:
        from jobs.build_features import build_features

        return build_features(job_settings())

    @task
    def train(_features: dict, params: dict | None = None) -> str:
        from jobs.train_towers import train_version
        from rec_core.model.training import TrainConfig

        assert params is not None
        settings = job_settings()
        config = TrainConfig(
            epochs=int(params["epochs"]), embedding_dim=int(params["embedding_dim"]), seed=settings.seed
        )
        return train_version(settings, config)

    @task
    def evaluate(version: str) -> str:
        from jobs.train_towers import evaluate_version

        evaluate_version(job_settings(), version)
        return version

    @task(outlets=[Asset(MODEL_URI)])
    def quality_gate(version: str, params: dict | None = None) -> dict:
        from jobs.train_towers import gate_version

        assert params is not None
        return gate_version(job_settings(), version, promote=bool(params["promote"]))

    quality_gate(evaluate(train(embed_text())))


train_towers_dag()
