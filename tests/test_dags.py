"""The DAGs parse cleanly, import nothing heavy, and run for real on SQLite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

HEAVY = ("torch", "transformers", "pymilvus", "polars", "duckdb", "pyarrow", "rec_core", "litestar", "numpy")


def test_dagbag_has_no_import_errors_and_nothing_heavy_at_parse_time() -> None:
    # A fresh interpreter, so that modules other tests imported do not hide a heavy import.
    script = f"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag({str(ROOT / "dags")!r})
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
meta = {{d.dag_id: [d.description, sorted(d.tags), d.owner] for d in bag.dags.values()}}
errors = {{k: v[-300:] for k, v in bag.import_errors.items()}}
print(json.dumps({{"errors": errors, "dags": sorted(bag.dags), "heavy": heavy, "meta": meta}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert {"generate_data", "import_dataset"} <= set(result["dags"])
    assert result["heavy"] == [], f"DAG files import heavy modules at parse time: {result['heavy']}"
    for dag_id, (description, tags, owner) in result["meta"].items():
        assert description and "recsys" in tags and owner == "recsys", dag_id


@pytest.mark.slow
def test_generate_data_dag_runs_end_to_end(airflow_db: Path, data_env: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from rec_core.lake import Lake

    dag = DagBag(str(ROOT / "dags")).get_dag("generate_data")
    run = dag.test(run_conf={"scale": "tiny", "seed": 7})
    assert run.state == "success"
    lake = Lake(data_env / "lake")
    assert lake.read("interactions").num_rows > 1000
    assert lake.current().manifest["source"].startswith("generate_data")
    assert (data_env / "warehouse.duckdb").is_file()
