"""Import a real data set (canonical CSV or Parquet files) into the lake, then rebuild the warehouse.

Paths are on the machine that runs the task. Bad rows are reported by reason in the
task log; with ``strict`` any bad row fails the run and the lake is left unchanged.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task

from jobs.dag_defaults import DEFAULT_ARGS, LAKE_URI, START, summarize_lake


@dag(
    dag_id="import_dataset",
    description="Import videos, interactions (and optionally users, follows) from CSV/Parquet into the lake.",
    doc_md=__doc__,
    schedule=None,
    start_date=START,
    catchup=False,
    default_args={**DEFAULT_ARGS, "retries": 0},
    tags=["recsys", "data"],
    params={
        "videos": Param("", type="string", minLength=1, description="Videos file: video_id, caption, ..."),
        "interactions": Param("", type="string", minLength=1, description="Interactions file: user_id, video_id, ts"),
        "users": Param(None, type=["null", "string"], description="Optional users file."),
        "follows": Param(None, type=["null", "string"], description="Optional follows file."),
        "strict": Param(False, type="boolean", description="Fail the import on any bad row."),
    },
)
def import_dataset_dag() -> None:
    @task(outlets=[Asset(LAKE_URI)])
    def run_import(params: dict | None = None) -> dict:
        from pathlib import Path

        from jobs.import_dataset import import_dataset

        assert params is not None

        def optional(key: str) -> Path | None:
            return Path(params[key]) if params.get(key) else None

        report = import_dataset(
            Path(params["videos"]),
            Path(params["interactions"]),
            optional("users"),
            optional("follows"),
            strict=bool(params["strict"]),
        )
        print(report.format_text())
        return report.to_dict()

    task(summarize_lake, task_id="summarize")(run_import())


import_dataset_dag()
