"""Shared fixtures. Airflow is pointed at a throwaway home before anything imports it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

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

SHARED_DATASETS = ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database, created once per test session."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    return _AIRFLOW_HOME


@pytest.fixture
def settings(tmp_path: Path) -> Iterator:
    from rec_core.settings import Settings

    yield dataclasses.replace(Settings.load({}), data_dir=tmp_path / "data")


@pytest.fixture
def data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point REC_DATA_DIR at a fresh folder for code that loads settings itself (jobs, DAG tasks)."""
    data = tmp_path / "data"
    monkeypatch.setenv("REC_DATA_DIR", str(data))
    return data
