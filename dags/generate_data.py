"""Generate the synthetic short-video world into the lake, then rebuild the warehouse."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, Param, dag, task
from rec_dags.defaults import DEFAULT_ARGS, LAKE_URI, START, refuse_unknown_conf, summarize_lake


@dag(
    dag_id="generate_data",
    description="Generate a synthetic short-video world (videos, users, follows, interactions) into the lake.",
    doc_md=__doc__,
    schedule=None,
    start_date=START,
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["recsys", "data"],
    params={
        "scale": Param(
            "default",
            enum=["tiny", "default", "large"],
            description="tiny: ~300 users (tests); default: 10k users, 50k videos, ~1M interactions; "
            "large: 100k users, 500k videos.",
        ),
        "seed": Param(42, type="integer", minimum=0, description="Random seed; the same seed gives the same lake."),
    },
)
def generate_data_dag() -> None:
    @task(outlets=[Asset(LAKE_URI)])
    def generate(params: dict | None = None, dag_run: Any = None, dag: Any = None) -> dict:
        from rec_core.runtime import job_settings
        from rec_core.synthetic.commit import generate_data

        refuse_unknown_conf(dag_run, dag)
        assert params is not None
        return generate_data(job_settings(), scale=params["scale"], seed=int(params["seed"]))

    task(summarize_lake, task_id="summarize")(generate())


generate_data_dag()
