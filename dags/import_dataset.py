"""Import a real data set (canonical CSV or Parquet files) into the lake, then rebuild the warehouse.

Paths are on the machine that runs the task and must lie inside the import folder
(``REC_IMPORT_DIR``, default ``<data root>/import``); relative paths are taken from
there, and a path (or a symlink) leading outside it fails the run before anything is
read. Bad rows are reported by reason in the task log; with ``strict`` any bad row
fails the run and the lake is left unchanged.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, Param, dag, task
from rec_dags.defaults import DEFAULT_ARGS, LAKE_URI, START, refuse_unknown_conf, summarize_lake


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
        "videos": Param(
            "", type="string", minLength=1, description="Videos file in the import folder: video_id, caption, ..."
        ),
        "interactions": Param(
            "", type="string", minLength=1, description="Interactions file in the import folder: user_id, video_id, ts"
        ),
        "users": Param(None, type=["null", "string"], description="Optional users file in the import folder."),
        "follows": Param(None, type=["null", "string"], description="Optional follows file in the import folder."),
        "strict": Param(False, type="boolean", description="Fail the import on any bad row."),
    },
)
def import_dataset_dag() -> None:
    @task(outlets=[Asset(LAKE_URI)])
    def run_import(params: dict | None = None, dag_run: Any = None, dag: Any = None) -> dict:
        from pathlib import Path

        from rec_core.data.file_import import import_dataset
        from rec_core.data.import_paths import resolve_import_path
        from rec_core.runtime import job_settings

        refuse_unknown_conf(dag_run, dag)
        assert params is not None
        settings = job_settings()

        # Whoever can trigger a run chooses these paths: each must resolve inside the import folder.
        def confined(key: str) -> Path | None:
            return resolve_import_path(settings.paths, params[key], key) if params.get(key) else None

        videos, interactions = confined("videos"), confined("interactions")
        assert videos is not None and interactions is not None  # minLength=1 params
        report = import_dataset(
            videos,
            interactions,
            confined("users"),
            confined("follows"),
            strict=bool(params["strict"]),
            settings=settings,
        )
        print(report.format_text())
        return report.to_dict()

    task(summarize_lake, task_id="summarize")(run_import())


import_dataset_dag()
