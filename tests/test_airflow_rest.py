"""The Airflow UI path for real: `airflow standalone` (what `make airflow` runs) in a throwaway AIRFLOW_HOME,
then `recsys_pipeline` triggered at tiny scale through the Airflow 3 REST API (v2), authenticated as the UI is
(the simple auth manager's generated admin password, exchanged for a JWT at /auth/token).

The helpers here (process groups that are always killed, the REST client) are shared with the Celery
scale-out test. This module must stay light and must not import ``tests.conftest``: a Celery worker of that
test imports its sibling module for the hostname callable, and conftest rewrites the environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Tiny world, tiny model, two shards of each kind: enough to exercise mapping, fast enough for CI.
# These runs test the orchestration (the UI's trigger, Celery's mapped shards); the ranker's training has its own
# DAG test (tests/test_dags.py) and the default pipeline trains it in tests/test_pipeline.py.
TINY_CONF = {"retrain": True, "epochs": 2, "video_shards": 2, "user_shards": 2, "ranker": "off"}
PIPELINE_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def airflow_env(home: Path, data_dir: Path, api_port: int, **extra: str) -> dict[str, str]:
    """A clean environment for Airflow processes: nothing of the caller's AIRFLOW_* or REC_* leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "REC_"))}
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # `airflow standalone` runs `airflow` from PATH
            "PYTHONPATH": str(ROOT),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            # Every component must agree on these; fixed here rather than each generating its own.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            # Ports of this run only: other people's Airflow may hold the defaults (8793/8794).
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "REC_DATA_DIR": str(data_dir),
            # Two cores, several task processes at once: one torch thread each.
            "REC_TORCH_THREADS": "1",
        }
    )
    env.update(extra)
    return env


class Processes:
    """Long-running processes, each in its own process group with its output in a log file; `stop` kills
    every one of them and everything they started (task processes make their own groups, so the tree
    is walked too)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            args,
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def tails(self) -> str:
        return "\n".join(f"----- {name} -----\n{self.tail(name)}" for name in self.procs)

    def stop(self) -> None:
        tree: list[psutil.Process] = []
        for proc in self.procs.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(proc.pid)
                tree += [root, *root.children(recursive=True)]
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(tree, timeout=20)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def wait_for(what: str, check, timeout: float, procs: Processes, interval: float = 1.0):
    """Poll ``check`` until it returns something truthy; fail with the processes' logs on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            result = check()
            if result:
                return result
        except (httpx.TransportError, OSError, KeyError, ValueError) as exc:  # not yet up; a 4xx/5xx is a failure
            last_error = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error!r})\n{procs.tails()}"
    )


class AirflowApi:
    """The Airflow 3 REST API as the UI uses it: a JWT from the auth manager's /auth/token, then /api/v2."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.client = httpx.Client(base_url=base_url, timeout=30)

    def healthy(self) -> bool:
        return self.client.get("/api/v2/monitor/health").status_code == 200

    def login(self, username: str, password: str) -> None:
        resp = self.client.post("/auth/token", json={"username": username, "password": password})
        assert resp.status_code == 201, resp.text
        self.client.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def get(self, path: str) -> dict:
        resp = self.client.get(f"/api/v2{path}")
        resp.raise_for_status()
        return resp.json()

    def dag_parsed(self, dag_id: str) -> bool:
        return self.client.get(f"/api/v2/dags/{dag_id}").status_code == 200

    def trigger(self, dag_id: str, conf: dict) -> str:
        resp = self.client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        assert resp.status_code == 200, resp.text
        resp = self.client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        assert resp.status_code == 200, resp.text
        return resp.json()["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")["task_instances"]

    def failure_report(self, dag_id: str, run_id: str) -> str:
        """The state of every task, and the log of each one that did not succeed, for an assertion message."""
        lines = []
        for ti in self.task_instances(dag_id, run_id):
            lines.append(f"{ti['task_id']}[{ti['map_index']}]: {ti['state']}")
            if ti["state"] not in ("success", "skipped") and ti["try_number"]:
                path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{ti['try_number']}"
                resp = self.client.get(path, params={"map_index": ti["map_index"]}, headers={"Accept": "text/plain"})
                lines.append(resp.text[-3000:])
        return "\n".join(lines)

    def wait_for_run(self, dag_id: str, run_id: str, procs: Processes, timeout: float = PIPELINE_TIMEOUT_S) -> str:
        state = wait_for(
            f"{dag_id} run {run_id} to finish",
            lambda: (s := self.run_state(dag_id, run_id)) in ("success", "failed") and s,
            timeout,
            procs,
            interval=3,
        )
        assert state == "success", f"{dag_id} ended {state}:\n{self.failure_report(dag_id, run_id)}"
        return state


def generate_world(data_dir: Path, extra: dict[str, str] | None = None, scale: str = "tiny") -> None:
    """A synthetic lake, written by the job's own CLI the way a user would (`make data SCALE=tiny`); the tiny world
    with the tests' seed, a larger one with the generator's default seed (the world `make profile-stages` uses)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REC_")}
    env.update({"PYTHONPATH": str(ROOT), "REC_DATA_DIR": str(data_dir), **(extra or {})})
    seed = ["--seed", "3"] if scale == "tiny" else []
    subprocess.run(
        [sys.executable, "-m", "jobs.generate_data", "--scale", scale, *seed],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )


def check_published(data_dir: Path, api: AirflowApi, dag_id: str, run_id: str, conf: dict = TINY_CONF) -> list[dict]:
    """The run really did the work: every task succeeded, the mapped shards of ``conf`` ran, a snapshot is live."""
    tis = api.task_instances(dag_id, run_id)
    # An announcement is skipped when there is nothing new to announce (the lake, with an empty inbox).
    done = [
        ti["state"] == "success" or (ti["state"] == "skipped" and ti["task_id"].startswith("announce_")) for ti in tis
    ]
    assert tis and all(done), [(t["task_id"], t["state"]) for t in tis]
    for task_id, count in (
        ("embed_videos", "video_shards"),
        ("embed_users", "user_shards"),
        ("materialize", "user_shards"),
    ):
        shards = sorted(ti["map_index"] for ti in tis if ti["task_id"] == task_id)
        assert shards == list(range(conf[count])), (task_id, shards)
    live = (data_dir / "snapshots" / "LIVE").read_text().strip()
    manifest = json.loads((data_dir / "snapshots" / live / "manifest.json").read_text())
    assert manifest["counts"]["feed_users"] == manifest["counts"]["lake_users"] > 0
    return tis


@dataclasses.dataclass
class Airflow:
    api: AirflowApi
    procs: Processes
    home: Path
    data_dir: Path


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Airflow]:
    home, data_dir = tmp_path / "airflow", tmp_path / "data"
    port = free_port()
    env = airflow_env(home, data_dir, port)
    procs = Processes(tmp_path / "logs")
    try:
        procs.start("standalone", [str(VENV_BIN / "airflow"), "standalone"], env)
        api = AirflowApi(f"http://127.0.0.1:{port}")
        wait_for("the API server", api.healthy, 240, procs, interval=2)
        yield Airflow(api, procs, home, data_dir)
    finally:
        procs.stop()


@pytest.mark.slow
def test_ui_style_trigger_of_the_pipeline_completes_on_embedded_defaults(standalone: Airflow) -> None:
    api, procs = standalone.api, standalone.procs
    generate_world(standalone.data_dir)
    # The password `make airflow` tells the user where to find: generated once for the admin user.
    password_file = standalone.home / "simple_auth_manager_passwords.json.generated"
    passwords = wait_for("the generated admin password", lambda: json.loads(password_file.read_text()), 60, procs)
    api.login("admin", passwords["admin"])
    # A wrong password is refused: the API is not open to anyone.
    assert api.client.post("/auth/token", json={"username": "admin", "password": "wrong"}).status_code == 401

    wait_for("the DAG processor to parse recsys_pipeline", lambda: api.dag_parsed("recsys_pipeline"), 120, procs)
    dag = api.get("/dags/recsys_pipeline/details")
    assert dag["owners"] == ["recsys"] and "pipeline" in {t["name"] for t in dag["tags"]} and dag["description"]
    assert dag["params"]["epochs"]["description"]

    run_id = api.trigger("recsys_pipeline", TINY_CONF)
    api.wait_for_run("recsys_pipeline", run_id, procs)
    check_published(standalone.data_dir, api, "recsys_pipeline", run_id)
