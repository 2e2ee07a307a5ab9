"""Shared fixtures. Airflow is pointed at a throwaway home before anything imports it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from rec_core.atomic import exclusive_lock
from rec_core.runtime import THREAD_VARIABLES

ROOT = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="rec-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
)
# The tests choose their own data roots; a developer's REC_* must not leak in.
for key in [k for k in os.environ if k.startswith("REC_")]:
    del os.environ[key]


def _threads_per_worker() -> int:
    """The CPUs each xdist worker may keep busy: torch, ONNX Runtime and OpenMP otherwise start a thread per core
    in every worker and in every job or server it spawns, and on a busy machine their spin-waits eat the cores.
    `make test` on a 2-core machine, runs alternated: 18 min 57 s and 15 min 42 s of tests without this cap, 13 min
    12 s and 13 min 39 s with it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, len(os.sched_getaffinity(0)) // workers)


# Read by torch (and so the text encoder's ONNX Runtime session) and numba when they are imported, which no test
# module has done yet; a developer's own setting wins. One process (TEST_WORKERS=0) keeps every core. numba's too:
# its parallel kernels share OpenMP with torch, and each launch set torch back to numba's count, one per core.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _threads = str(_threads_per_worker())
    for key in THREAD_VARIABLES:
        os.environ.setdefault(key, _threads)

# `make test` draws the same examples on every run, so CI passes or fails on the code and not on a lucky
# draw; `HYPOTHESIS_PROFILE=explore make test` searches fresh examples (and keeps what fails in .hypothesis/).
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

SHARED_DATASETS = ROOT.parent / "shared" / "datasets"

# Tests of orchestration (Airflow's DAGs, a pipeline killed or rerun, the Milvus server, experiment arms) run whole
# releases on the tiny world, whose validation window holds fewer users than REC_RANKER_MIN_USERS: with the default
# label windows each release trains two more tower models and fits LightGBM on three times the rows (9 s -> 40 s a
# release on two cores, most of it LightGBM). What they test does not depend on the ranker's examples, which
# tests/test_ranker_windows.py, tests/test_ranker_release.py and the API world (default settings: its live-likes
# test is what the windows once broke) cover; so their releases learn from one window.
ONE_LABEL_WINDOW = {"REC_RANKER_WINDOWS": "1"}


@pytest.fixture(autouse=True, scope="session")
def _compiled_feed_policy() -> None:
    """The feed policy's compiled pass, loaded once per worker before any test: as the API and the batch load it
    before their first feed, so a property test's deadline never measures numba's compiler or cache."""
    from rec_core.feed.policy import warm_up

    warm_up()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files that hold a slow test run first (in their usual order otherwise), so a long file does not come last.
    Under `make test` (``--dist loadfile``: whole files to each worker, so a module's fixtures are built once)
    xdist hands out the files with the most tests first instead, its default: keeping this order there
    (``--no-loadscope-reorder``) measured slower on two cores, 27 min against 24.5 (a9f2af8, reverted)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database, created once per test session."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    return _AIRFLOW_HOME


@pytest.fixture
def settings(tmp_path: Path) -> Iterator:
    from rec_core.settings import Settings

    yield Settings.load({}).override(data_dir=tmp_path / "data")


@pytest.fixture
def data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point REC_DATA_DIR at a fresh folder for code that loads settings itself (jobs, DAG tasks), whose releases
    learn from one label window (:data:`ONE_LABEL_WINDOW`)."""
    data = tmp_path / "data"
    monkeypatch.setenv("REC_DATA_DIR", str(data))
    for key, value in ONE_LABEL_WINDOW.items():
        monkeypatch.setenv(key, value)
    return data


# ---- an S3-compatible server (moto's), for the lake on an object store ------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server as a child process on a free port: a real HTTP server that honours conditional writes."""
    import time

    import httpx

    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the S3 server did not start:\n{log.read_text()[-3000:]}")
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3_env(s3_endpoint: str, tmp_path: Path) -> dict[str, str]:
    """The REC_* variables that put a fresh bucket's lake under ``tmp_path/data`` (its cache)."""
    import uuid

    import boto3

    bucket = f"rec-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    ).create_bucket(Bucket=bucket)
    return {
        "REC_DATA_DIR": str(tmp_path / "data"),
        "REC_DATA_URI": f"s3://{bucket}/team-a",
        "REC_S3_ENDPOINT": s3_endpoint,
        "REC_S3_ACCESS_KEY_ID": "test",
        "REC_S3_SECRET_ACCESS_KEY": "test",
    }


# ---- the feed API over real HTTP --------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    """``python -m feed_api`` as a child process on a free port, as `make serve` runs it."""

    def __init__(self, data_dir: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("REC_")},
            "PYTHONPATH": str(ROOT),
            "REC_DATA_DIR": str(data_dir),
            "REC_API_PORT": str(self.port),
            "REC_API_RELOAD_MS": "200",
            **{f"REC_{k.upper()}": v for k, v in settings.items()},
        }
        self.log = data_dir.parent / f"api-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, *, ready: bool = True, timeout: float = 120.0) -> ApiServer:
        import time

        import httpx

        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "feed_api"],
            env=self.env,
            cwd=ROOT,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        path = "/ready" if ready else "/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"feed API exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"feed API not {path} in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown hooks, as in a crash."""
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def api_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with a tiny world and one published snapshot, built by the real pipeline stages.

    Built once per test run, not once per xdist worker (it is a minute and a half of CPU on two cores): the first
    worker builds it under a lock in the run's shared temp folder, and every worker serves its own copy (a Milvus
    Lite file opens in one process, and servers write their inbox into the data root)."""
    shared = _run_temp(tmp_path_factory) / "api-world"
    with exclusive_lock(shared.with_suffix(".lock")):
        if not (shared / "built").is_file():
            shutil.rmtree(shared, ignore_errors=True)
            _build_api_world(shared / "data")
            (shared / "built").touch()
    data = tmp_path_factory.mktemp("api") / "data"
    shutil.copytree(shared / "data", data)
    # Untouched by any server: tests that publish, prune or kill start from a copy of this.
    shutil.copytree(data, data.parent / "pristine")
    return data


def _build_api_world(data: Path) -> None:
    from rec_core.settings import Settings
    from rec_core.stages import run_all
    from rec_core.synthetic.commit import generate_data

    settings = Settings.load({"REC_DATA_DIR": str(data), "REC_FEED_LENGTH": "200", "REC_SNAPSHOTS_KEEP": "2"})
    generate_data(settings, "tiny", seed=7)
    run_all(settings, epochs=2, video_shards=1, user_shards=2)


def _run_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This run's temp root, shared by its xdist workers (each worker's base temp is a folder in it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def api(api_world: Path) -> Iterator[ApiServer]:
    server = ApiServer(api_world, feed_length="200", snapshots_keep="2").start()
    try:
        yield server
    finally:
        server.stop()
