"""`make airflow-clean`: Airflow's run history and task logs past AIRFLOW_KEEP_DAYS go, newer ones stay (Airflow
keeps both forever otherwise). Run against an Airflow home of the test's own, through the Makefile as an operator
(or cron) runs it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.conftest import ROOT


def test_old_task_logs_go_new_ones_stay_and_airflows_own_database_clean_runs(tmp_path: Path) -> None:
    home = tmp_path / "airflow"
    old = home / "logs" / "dag_id=recsys_pipeline" / "run_id=old" / "task_id=publish" / "attempt=1.log"
    new = home / "logs" / "dag_id=recsys_pipeline" / "run_id=new" / "task_id=publish" / "attempt=1.log"
    for log in (old, new):
        log.parent.mkdir(parents=True)
        log.write_text("a task's log\n")
    forty_days_ago = time.time() - 40 * 86_400
    os.utime(old, (forty_days_ago, forty_days_ago))
    env = {**os.environ, "AIRFLOW_HOME": str(home), "REC_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run(["make", "-s", "airflow-clean"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "older than 30 days removed" in proc.stdout
    assert new.is_file() and not old.exists() and not old.parent.parent.exists(), "emptied run folders go too"
    assert (home / "airflow.db").is_file(), "migrated, then `airflow db clean` ran on it (rc 0 above)"
