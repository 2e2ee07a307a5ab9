"""What every DAG of this project shares: owner, retries, start date, shard params, and the assets that
chain the stage DAGs. Imported at parse time, so it imports nothing heavy."""

from __future__ import annotations

import datetime as dt
from typing import Any

OWNER = "recsys"

DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 1,
    "retry_delay": dt.timedelta(seconds=30),
}

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

# The lake is the asset that connects the stage DAGs: a new lake version
# (generated, imported or ingested) is what training consumes.
LAKE_URI = "file://rec/lake"
# A newly promoted model is what re-embedding consumes.
MODEL_URI = "file://rec/model"
# Vectors of a new snapshot are loaded: materialization can start.
EMBEDDINGS_URI = "file://rec/embeddings"
# A new snapshot is live: the API picks it up, analysts' warehouse is rebuilt.
SNAPSHOT_URI = "file://rec/snapshot"

# The asset behind each announcement a stage declares (rec_core.stages.Announcement).
ASSET_URIS = {"lake": LAKE_URI, "model": MODEL_URI, "embeddings": EMBEDDINGS_URI, "snapshot": SNAPSHOT_URI}


def refuse_unknown_conf(dag_run: Any, dag: Any) -> None:
    """Fail the task, without a retry, when the run's conf names a param the DAG does not have. Airflow takes any
    key (apache/airflow#29018), so a typo such as {"epoch": 1} ran the defaults without a word. Called first by
    every task that reads the params."""
    from airflow.sdk.exceptions import AirflowFailException

    conf = getattr(dag_run, "conf", None) or {}
    unknown = sorted(set(conf) - set(dag.params)) if dag is not None else []
    if unknown:
        raise AirflowFailException(
            f"unknown param(s) {unknown} in the run's conf; {dag.dag_id} takes {sorted(dag.params)}"
        )


def shard_params() -> dict[str, Any]:
    """The shard-count params of every DAG that embeds (``recsys_pipeline``, ``refresh_embeddings``)."""
    from airflow.sdk import Param

    return {
        "video_shards": Param(
            4,
            type="integer",
            minimum=1,
            maximum=256,
            description="Video embedding shards: mapped tasks that run in parallel (on several workers with Celery).",
        ),
        "user_shards": Param(
            4,
            type="integer",
            minimum=1,
            maximum=256,
            description="User shards for embedding and feed materialization: mapped tasks that run in parallel.",
        ),
    }


def caption_shards_param() -> Any:
    """The ``caption_shards`` param of every DAG that encodes captions (``recsys_pipeline``, ``train_towers``)."""
    from airflow.sdk import Param

    return Param(
        1,
        type="integer",
        minimum=1,
        maximum=256,
        description="Caption encoding shards: mapped tasks that share a cold encoding (on several workers with "
        "Celery; on one machine 1 is fastest, the encoder already uses every core).",
    )


def ranker_param() -> Any:
    """The ``ranker`` param of every DAG that trains a model: the ranking stage for this run only."""
    return _run_setting_param(
        "The ranking stage after retrieval: on (trained with the model, gated and served with it), off (retrieval "
        "alone: the ablation)",
        "REC_RANKER",
    )


def warm_start_param() -> Any:
    """The ``warm_start`` param of every DAG that trains a model."""
    return _run_setting_param(
        "Start from the current model's weights when the lake has only grown (on), or from random weights (off)",
        "REC_WARM_START",
    )


def _run_setting_param(what: str, env: str) -> Any:
    """A param that stands for the setting ``env`` in every task of the run (``rec_core.stages.RUN_SETTINGS``)."""
    from airflow.sdk import Param

    from rec_core.stages import FROM_SETTINGS

    return Param(
        FROM_SETTINGS,
        type="string",
        enum=[FROM_SETTINGS, "on", "off"],
        description=f"{what}, or {FROM_SETTINGS} (as {env} says; on unless set).",
    )


def summarize_lake(_upstream: object = None) -> None:
    """Task body shared by the data DAGs: rebuild the warehouse and log the lake summary."""
    from rec_core.data.summary import format_results, summarize
    from rec_core.runtime import job_settings

    print(format_results(summarize(job_settings())))
