"""What every DAG of this project shares. Imports nothing heavy: DAG files are parsed often,
and this module is imported at parse time (it lives in `jobs` so that it is importable
wherever the DAGs are, without relying on the DAG folder being on sys.path)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rec_core.settings import Settings

OWNER = "recsys"

DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 1,
    "retry_delay": dt.timedelta(seconds=30),
}

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


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


# The lake is the asset that connects the stage DAGs: a new lake version
# (generated, imported or ingested) is what training consumes.
LAKE_URI = "file://rec/lake"


def job_settings() -> Settings:
    """The settings a task runs with: ``REC_*`` from the worker's environment, torch threads capped
    (``REC_TORCH_THREADS``) so that several workers on one machine don't oversubscribe it."""
    from jobs.cli import apply_torch_threads
    from rec_core.settings import Settings

    settings = Settings.load()
    apply_torch_threads(settings)
    return settings


def summarize_lake(_upstream: object = None) -> None:
    """Task body shared by the data DAGs: rebuild the warehouse and log the lake summary."""
    from jobs.summarize import format_results, summarize

    print(format_results(summarize(job_settings())))


# A new promoted model is what re-embedding consumes (issue #4 wires the consumer).
MODEL_URI = "file://rec/model"
# Vectors of a new snapshot are loaded: materialization can start.
EMBEDDINGS_URI = "file://rec/embeddings"
# A new snapshot is live: the API picks it up, analysts' warehouse is rebuilt.
SNAPSHOT_URI = "file://rec/snapshot"
