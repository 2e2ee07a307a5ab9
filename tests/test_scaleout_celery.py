"""Scale-out on existing engines: Airflow on PostgreSQL with the CeleryExecutor and Redis as the broker,
two Celery workers, `recsys_pipeline` at tiny scale; the metadata DB must show the mapped embedding and
materialization shards ran on more than one worker.

The workers share no filesystem: each has its own data root, and the lake, the models and the snapshots live on
an S3-compatible store (moto's server, started by the tests; ``REC_DATA_URI``), as on separate machines.

Needs the PostgreSQL and Redis services of this machine (or those named by AIRFLOW_TEST_PG_URL /
AIRFLOW_TEST_REDIS_URL) and the Celery provider; it skips, saying which is missing, where they are absent.
A database of its own is created for the run and dropped after it; the Celery queue is unique to the run.

``SCALEOUT_SCALE=large`` (``make scaleout-large``) runs the same test on the large world (100,000 users, 500,000
videos), cold, and prints each task's host and time: the two-worker measurement of docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from rec_core.settings import Settings
from rec_core.snapshot.remote import sync_live
from tests.test_airflow_rest import (
    PIPELINE_TIMEOUT_S,
    TINY_CONF,
    VENV_BIN,
    AirflowApi,
    Processes,
    airflow_env,
    check_published,
    free_port,
    generate_world,
    wait_for,
)

PG_URL = os.environ.get("AIRFLOW_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("AIRFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
WORKER_NAME_ENV = "AIRFLOW_TEST_WORKER_HOSTNAME"
SHARDED = ("embed_videos", "embed_users", "materialize")
# The world and the run's conf (the DAG's params) at each scale, and how long the run may take on two cores.
SCALE = os.environ.get("SCALEOUT_SCALE", "tiny")
RUNS = {
    "tiny": (TINY_CONF, PIPELINE_TIMEOUT_S),
    # Both workers encode captions (two caption shards) and take the embedding and feed shards two at a time.
    "large": ({"retrain": True, "video_shards": 4, "user_shards": 4, "caption_shards": 2}, 3 * 3600),
}


def worker_hostname() -> str:
    """``[core] hostname_callable`` of this test's workers: two workers share one machine here, so each
    reports the name it was given (on separate machines or containers the real hostname does this)."""
    return os.environ.get(WORKER_NAME_ENV) or socket.getfqdn()


def _services_or_skip() -> None:
    try:
        import psycopg2
    except ImportError:
        pytest.skip("psycopg2 is not installed: `make setup` installs it from the lock")
    try:
        import airflow.providers.celery  # noqa: F401
        import redis
    except ImportError as exc:
        pytest.skip(f"the Celery provider is not installed ({exc}): `make setup` installs it from the lock")
    try:
        psycopg2.connect(PG_URL, connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {PG_URL} ({str(exc).strip()}); set AIRFLOW_TEST_PG_URL to run this test")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL} ({exc}); set AIRFLOW_TEST_REDIS_URL to run this test")


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A PostgreSQL database for this run only; dropped afterwards (with any connection left to it)."""
    import psycopg2

    name = f"rec_airflow_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(PG_URL)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(PG_URL)
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _as_driver_url(url: str, scheme: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme=scheme))


@pytest.mark.slow
def test_mapped_shards_spread_over_two_celery_workers(tmp_path: Path, s3_env: dict[str, str]) -> None:
    _services_or_skip()
    conf, timeout_s = RUNS[SCALE]
    import psycopg2
    import redis

    run_tag = uuid.uuid4().hex[:8]
    queue = f"rec-test-{run_tag}"
    home, data_dir = tmp_path / "airflow", tmp_path / "data"
    store = {key: value for key, value in s3_env.items() if key != "REC_DATA_DIR"}
    port = free_port()
    procs = Processes(tmp_path / "logs")
    with scratch_database() as db_url:
        env = airflow_env(
            home,
            data_dir,
            port,
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=_as_driver_url(db_url, "postgresql+psycopg2"),
            AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
            AIRFLOW__CELERY__BROKER_URL=REDIS_URL,
            AIRFLOW__CELERY__RESULT_BACKEND=_as_driver_url(db_url, "db+postgresql+psycopg2"),
            AIRFLOW__CELERY__WORKER_CONCURRENCY="1",
            AIRFLOW__OPERATORS__DEFAULT_QUEUE=queue,
            **store,
        )
        try:
            migrate = subprocess.run(
                [str(VENV_BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300
            )
            assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
            procs.start("api-server", [str(VENV_BIN / "airflow"), "api-server", "--port", str(port)], env)
            procs.start("scheduler", [str(VENV_BIN / "airflow"), "scheduler"], env)
            procs.start("dag-processor", [str(VENV_BIN / "airflow"), "dag-processor"], env)
            workers = {f"w{i}-{run_tag}": free_port() for i in (1, 2)}
            for name in workers:
                worker_env = {
                    **env,
                    WORKER_NAME_ENV: name,
                    "REC_DATA_DIR": str(tmp_path / name),  # its own disk: it meets the other only on the store
                    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.test_scaleout_celery.worker_hostname",
                }
                procs.start(
                    name,
                    [
                        *(str(VENV_BIN / "airflow"), "celery", "worker"),
                        *("--celery-hostname", f"{name}@%h", "--queues", queue, "--concurrency", "1"),
                        *("--pid", str(tmp_path / f"{name}.pid"), "--skip-serve-logs"),
                    ],
                    worker_env,
                )
            api = AirflowApi(f"http://127.0.0.1:{port}")
            wait_for("the API server", api.healthy, 180, procs, interval=2)
            for name in workers:  # both consuming before anything is queued, so neither can take every shard
                wait_for(
                    f"Celery worker {name}",
                    lambda n=name: f"{n}@" in (t := procs.tail(n, 10**6)) and " ready." in t,
                    180,
                    procs,
                )
            generate_world(data_dir, store, SCALE)
            passwords = wait_for(
                "the generated admin password",
                lambda: json.loads((home / "simple_auth_manager_passwords.json.generated").read_text()),
                60,
                procs,
            )
            api.login("admin", passwords["admin"])
            wait_for(
                "the DAG processor to parse recsys_pipeline", lambda: api.dag_parsed("recsys_pipeline"), 120, procs
            )
            run_id = api.trigger("recsys_pipeline", conf)
            api.wait_for_run("recsys_pipeline", run_id, procs, timeout=timeout_s)
            reader = tmp_path / "reader"  # a machine that ran nothing: it sees the run's snapshot on the store
            sync_live(Settings.load({**store, "REC_DATA_DIR": str(reader)}).paths)
            check_published(reader, api, "recsys_pipeline", run_id, conf)

            with contextlib.closing(psycopg2.connect(db_url)) as con, con.cursor() as cur:
                cur.execute(
                    "SELECT task_id, map_index, hostname, queue, external_executor_id FROM task_instance"
                    " WHERE dag_id = 'recsys_pipeline' AND run_id = %s",
                    (run_id,),
                )
                rows = cur.fetchall()
                cur.execute(
                    "SELECT task_id, map_index, hostname, start_date, end_date FROM task_instance"
                    " WHERE dag_id = 'recsys_pipeline' AND run_id = %s ORDER BY start_date",
                    (run_id,),
                )
                timed = cur.fetchall()
        finally:
            procs.stop()
            with contextlib.suppress(redis.RedisError):
                redis.Redis.from_url(REDIS_URL).delete(queue, f"_kombu.binding.{queue}")

    # Every task went through Celery on our queue and ran on one of our two workers ...
    assert rows and all(queue_ == queue and celery_id for _, _, _, queue_, celery_id in rows), rows
    assert {host for _, _, host, _, _ in rows} <= set(workers), rows
    # ... and the mapped shards did not all land on one of them.
    shard_hosts = {host for task_id, map_index, host, _, _ in rows if task_id in SHARDED and map_index >= 0}
    assert len(shard_hosts) >= 2, f"all shards ran on {shard_hosts}: {rows}"
    for name in shard_hosts:  # each worker worked on its own copy of the snapshot
        assert any((tmp_path / name / "snapshots").glob("s*/build.json")), name
    print(_timings(SCALE, timed))
    print("shards per worker:", {h: sorted(f"{t}[{m}]" for t, m, host, _, _ in rows if host == h) for h in shard_hosts})


def _timings(scale: str, timed: list[tuple]) -> str:
    """Each task's worker and wall time, and the run's first start to last end, as a markdown table."""
    timed = [row for row in timed if row[3] is not None and row[4] is not None]
    first, last = min(row[3] for row in timed), max(row[4] for row in timed)
    lines = [
        f"recsys_pipeline on two Celery workers, {scale} world, lake on the object store: "
        f"{(last - first).total_seconds():.0f} s from the first task's start to the last one's end",
        "",
        "| task | worker | starts at s | wall s |",
        "| --- | --- | ---: | ---: |",
    ]
    for task_id, map_index, host, start, end in timed:
        name = task_id if map_index < 0 else f"{task_id}[{map_index}]"
        offset, wall = (start - first).total_seconds(), (end - start).total_seconds()
        lines.append(f"| {name} | {host.split('-')[0]} | {offset:.0f} | {wall:.1f} |")
    return "\n".join(lines)
