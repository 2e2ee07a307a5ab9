"""The TaskFlow tasks of the batch DAGs, defined once and composed by the files in ``dags/``.

Imported at DAG-parse time, so nothing heavy at module level: every task body
imports its job when it runs. Each task is a thin call into a ``jobs`` function.
"""

from __future__ import annotations

from airflow.sdk import Asset, task

from jobs.dag_defaults import EMBEDDINGS_URI, LAKE_URI, MODEL_URI, SNAPSHOT_URI, job_settings


@task(outlets=[Asset(LAKE_URI)])
def ingest_inbox() -> dict:
    from jobs.ingest_inbox import ingest_inbox as run

    return run(job_settings())


@task
def build_features(_: dict) -> dict:
    from jobs.build_features import build_features as run

    return run(job_settings())


@task(outlets=[Asset(MODEL_URI)])
def train_or_reuse(_: dict, params: dict | None = None) -> dict:
    from jobs.pipeline import choose_model

    assert params is not None
    return choose_model(job_settings(), retrain=bool(params["retrain"]), epochs=int(params["epochs"]))


@task
def begin_snapshot(_: dict, params: dict | None = None) -> dict:
    from jobs.pipeline import begin

    assert params is not None
    return begin(job_settings(), video_shards=int(params["video_shards"]), user_shards=int(params["user_shards"]))


@task
def embed_videos(snapshot_id: str, shard: int) -> dict:
    from jobs.embed_videos import embed_videos as run

    return run(job_settings(), snapshot_id, shard)


@task
def embed_users(snapshot_id: str, shard: int) -> dict:
    from jobs.embed_users import embed_users as run

    return run(job_settings(), snapshot_id, shard)


@task(outlets=[Asset(EMBEDDINGS_URI)])
def load_vectors(snapshot_id: str) -> dict:
    from jobs.load_vectors import load_vectors as run

    return run(job_settings(), snapshot_id)


@task
def trending(snapshot_id: str) -> dict:
    from jobs.materialize_feeds import build_trending

    return build_trending(job_settings(), snapshot_id)


@task
def materialize(snapshot_id: str, shard: int) -> dict:
    from jobs.materialize_feeds import materialize_feeds

    return materialize_feeds(job_settings(), snapshot_id, shard)


@task
def validate(snapshot_id: str) -> dict:
    from jobs.publish import validate as run

    return run(job_settings(), snapshot_id)


@task(outlets=[Asset(SNAPSHOT_URI)])
def publish(snapshot_id: str, _validated: dict) -> dict:
    from jobs.publish import publish as run

    return run(job_settings(), snapshot_id)


@task
def latest_snapshot(params: dict | None = None) -> str:
    from jobs.pipeline import latest_unpublished

    assert params is not None
    return params.get("snapshot_id") or latest_unpublished(job_settings())


@task
def shard_list(snapshot_id: str, kind: str) -> list[int]:
    """The shard numbers of ``kind`` ("video" or "user") that the snapshot was begun with, to map over."""
    from rec_core.snapshot.layout import snapshot_paths

    build = snapshot_paths(job_settings(), snapshot_id).read_build()
    return list(range(build.video_shards if kind == "video" else build.user_shards))


@task
def rebuild_warehouse(_published: dict) -> str:
    from rec_core.data.warehouse import build_warehouse

    return str(build_warehouse(job_settings()))
