"""Start, change or stop an experiment, or write its report, from the Airflow UI (Trigger DAG w/ config).

An arm is `name=variant:share` (variant `model`: the current model; `most_pop`: the popular videos; or a model
version such as `m20261201T101500Z-0a1b2c3d`, listed by `python -m jobs.models list`), e.g.
`towers=model:0.5,pop=most_pop:0.5` or `new=model:0.5,old=m20261201T101500Z-0a1b2c3d:0.5`.
Start, change and stop take effect at the next snapshot (the
`recsys_pipeline` DAG); `report` writes `<data root>/reports/experiments/<name>/report.md` with a picture,
from what the last `ingest_inbox` took in. The same as `python -m jobs.experiments`.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, task
from rec_dags.defaults import DEFAULT_ARGS, START, refuse_unknown_conf


@dag(
    dag_id="experiments",
    description="Start, change or stop an experiment of feed variants, or write its report.",
    doc_md=__doc__,
    schedule=None,
    start_date=START,
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["recsys", "experiments"],
    params={
        # list by default: the one action that needs no name, so the form as it opens runs (report failed on "").
        "action": Param("list", enum=["start", "change", "stop", "list", "report"], description="What to do."),
        "name": Param("", type="string", description="The experiment (all actions but list)."),
        "arms": Param(
            "",
            type="string",
            description="start / change: name=variant:share,... (variant: model, most_pop or a model version)",
        ),
    },
)
def experiments_dag() -> None:
    @task
    def apply(params: dict | None = None, dag_run: Any = None, dag: Any = None) -> dict:
        from jobs.experiments import apply
        from rec_core.runtime import job_settings

        refuse_unknown_conf(dag_run, dag)
        assert params is not None
        return apply(job_settings(), params["action"], params["name"], params["arms"])

    apply()


experiments_dag()
