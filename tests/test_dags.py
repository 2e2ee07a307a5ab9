"""The DAGs parse cleanly, import nothing heavy, and run for real on SQLite."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

HEAVY = ("torch", "transformers", "pymilvus", "polars", "duckdb", "pyarrow", "rec_core", "litestar", "numpy")
# Of rec_core, DAG files import only the stage declarations (standard library only) at parse time.
LIGHT_REC_CORE = ["rec_core", "rec_core.stages"]
DAGS = ROOT / "dags"


def _bag() -> Any:
    """The DAG folder as the DAG processor and the workers read it: a bundle, whose folder is on sys.path, so
    the DAG files import their helpers (``rec_dags``) by name."""
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=DAGS, bundle_path=DAGS, bundle_name="dags-folder")


def test_dagbag_has_no_import_errors_and_nothing_heavy_at_parse_time() -> None:
    # A fresh interpreter, so that modules other tests imported do not hide a heavy import.
    script = f"""
import json, sys
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag
from airflow.sdk.definitions._internal.types import NOTSET
dags = Path({str(DAGS)!r})
bag = BundleDagBag(dag_folder=dags, bundle_path=dags, bundle_name="dags-folder")
rec_core = sorted(m for m in sys.modules if m.split(".")[0] == "rec_core")
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}) - {{"rec_core"}})
def param_doc(d):
    return {{k: [d.params.get_param(k).description, d.params.get_param(k).value is not NOTSET] for k in d.params}}
meta = {{d.dag_id: [d.description, sorted(d.tags), d.owner, param_doc(d)] for d in bag.dags.values()}}
errors = {{k: v[-300:] for k, v in bag.import_errors.items()}}
tasks = {{d.dag_id: {{t.task_id: sorted(t.upstream_task_ids) for t in d.tasks}} for d in bag.dags.values()}}
print(json.dumps({{"errors": errors, "dags": sorted(bag.dags), "heavy": heavy, "rec_core": rec_core, "meta": meta,
                  "tasks": tasks}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The helper package is imported by the DAG files, not parsed as one (.airflowignore): no broken DAG.
    assert result["errors"] == {}
    assert {"generate_data", "import_dataset"} <= set(result["dags"])
    assert result["heavy"] == [], f"DAG files import heavy modules at parse time: {result['heavy']}"
    assert result["rec_core"] == LIGHT_REC_CORE, f"DAG files import rec_core beyond the stages: {result['rec_core']}"
    assert set(result["dags"]) == set(result["meta"]) and len(result["dags"]) == len(list(DAGS.glob("*.py")))
    for dag_id, (description, tags, owner, params) in result["meta"].items():
        assert description and "recsys" in tags and len(tags) >= 2 and owner == "recsys", dag_id
        # Every param the UI's trigger form shows is documented and has a default.
        for name, (doc, has_default) in params.items():
            assert doc and has_default, (dag_id, name)
    assert result["meta"]["recsys_pipeline"][3].keys() >= {
        "retrain",
        "epochs",
        "ranker",
        "warm_start",
        "video_shards",
        "user_shards",
    }
    assert result["meta"]["train_towers"][3].keys() >= {"epochs", "embedding_dim", "promote", "ranker", "warm_start"}
    # The ranker is trained after the towers and before anything evaluates or gates the version.
    assert result["tasks"]["train_towers"]["train_ranker"] == ["train"]
    assert "train_ranker" in result["tasks"]["train_towers"]["evaluate"]
    _check_dags_follow_the_declared_stages(result["tasks"])


def _check_dags_follow_the_declared_stages(tasks: dict[str, dict[str, list[str]]]) -> None:
    """Each stage DAG runs the declared stages (rec_core.stages), one task each, and no task waits for a stage
    declared after it, while each waits for what its stage declares it waits for. The other tasks are glue: the
    shard lists to map over, and the model announcement after the stage that may promote one."""
    from rec_core.stages import MODEL_RELEASE, PIPELINE, RESUME_SNAPSHOT, between

    glue = {"video_shard_list", "user_shard_list", "caption_shard_list", "announce_model", "announce_lake"}
    declared = {
        "recsys_pipeline": PIPELINE,
        "refresh_embeddings": between("begin_snapshot", "load_vectors"),
        "materialize_feeds": (RESUME_SNAPSHOT, *between("trending", "rebuild_warehouse")),
        "train_towers": MODEL_RELEASE,
    }
    for dag_id, stages in declared.items():
        names = [stage.name for stage in stages]
        upstream = tasks[dag_id]
        assert set(upstream) - glue == set(names), dag_id
        for position, stage in enumerate(stages):
            waits_for = set(upstream[stage.name]) - glue
            assert waits_for <= set(names[:position]), (dag_id, stage.name, waits_for)
            assert waits_for >= set(stage.after) & set(names), (dag_id, stage.name, waits_for)
        for task_id in glue & set(upstream):
            assert set(upstream[task_id]) <= set(names), (dag_id, task_id)  # glue waits on stages only
    # The model is announced after, and only by, the stage that may promote one.
    assert tasks["recsys_pipeline"]["announce_model"] == ["train_or_reuse"]
    assert tasks["train_towers"]["announce_model"] == ["quality_gate"]
    # The lake, only after an ingest that committed a new version (one with nothing new started a training).
    assert tasks["recsys_pipeline"]["announce_lake"] == ["ingest_inbox"]


def test_stage_declarations_resolve_to_functions_that_take_what_they_are_given(settings: Any) -> None:
    """Every declared stage names an importable function that accepts the settings, the values the stage needs
    and, for a sharded stage, the shard, as keywords: what both the DAG tasks and run_all call it with."""
    import inspect

    from rec_core.stages import MODEL_RELEASE, PIPELINE, RESUME_SNAPSHOT

    for stage in {*PIPELINE, *MODEL_RELEASE, RESUME_SNAPSHOT}:
        function = stage.function()
        assert callable(function), stage.call
        given = {name: None for name in stage.needs} | ({"shard": 0} if stage.shards else {})
        inspect.signature(function).bind(settings, **given)  # raises TypeError on a mismatch
    assert len({stage.name for stage in PIPELINE}) == len(PIPELINE)


def test_stage_order_is_checked_where_it_is_declared() -> None:
    from rec_core.stages import MODEL_RELEASE, PIPELINE, Stage, between, check_order

    # The declared lists themselves, with the params their DAGs (and run_all) give.
    check_order(PIPELINE, ("retrain", "epochs", "video_shards", "user_shards", "caption_shards"))
    check_order(MODEL_RELEASE, ("epochs", "embedding_dim", "promote", "caption_shards"))
    # A stage needing a value no earlier stage provides, or declared before a stage it waits for, is refused.
    with pytest.raises(ValueError, match="needs"):
        check_order(between("embed_videos", "publish"), ("retrain",))
    swapped = (PIPELINE[1], PIPELINE[0])
    with pytest.raises(ValueError, match="declared before"):
        check_order(swapped, ("caption_shards",))
    # Stages a slice waits for outside the slice ran before it (the trigger's announcement).
    check_order(between("trending", "rebuild_warehouse"), ("snapshot_id",))
    check_order((Stage("a", "m:f"), Stage("b", "m:g", after=("a", "elsewhere"))))


def _ranker_setting(settings: Any) -> dict[str, str]:
    """A stage function for the test below: what the stage saw of REC_RANKER."""
    return {"ranker": settings.model.ranker}


def test_a_ranker_param_stands_for_rec_ranker_in_every_stage_of_the_run(settings: Any) -> None:
    from rec_core.stages import FROM_SETTINGS, Stage, run_stages

    probe = Stage("probe", "tests.test_dags:_ranker_setting", provides=("ranker",))
    assert settings.model.ranker == "on"
    assert run_stages(settings, (probe,), {"ranker": "off"})["ranker"] == "off"
    assert run_stages(settings.override(ranker="off"), (probe,), {"ranker": "on"})["ranker"] == "on"
    for kept in (FROM_SETTINGS, None):
        assert run_stages(settings.override(ranker="off"), (probe,), {"ranker": kept})["ranker"] == "off"
    assert run_stages(settings, (probe,), {})["ranker"] == "on"


def _shard_counts(settings: Any, video_shards: int, user_shards: int) -> dict:
    return {"counts": (video_shards, user_shards)}


def test_a_whole_float_count_from_the_trigger_form_reaches_a_stage_as_an_int(settings: Any) -> None:
    """JSON Schema's "integer" admits 2.0: the Trigger form passed {"video_shards": 2.0}, and begin_snapshot wrote
    a build of 2.0 shards before range() refused it, leaving a snapshot that broke the next materialize run."""
    from rec_core.stages import Stage, run_stages, shard_numbers

    probe = Stage("probe", "tests.test_dags:_shard_counts", needs=("video_shards", "user_shards"), provides=("counts",))
    counts = run_stages(settings, (probe,), {"video_shards": 2.0, "user_shards": 3})["counts"]
    assert counts == (2, 3) and all(type(c) is int for c in counts)
    with pytest.raises(ValueError, match=r"video_shards must be a whole number, got 2\.5"):
        run_stages(settings, (probe,), {"video_shards": 2.5, "user_shards": 3})
    assert shard_numbers(settings.paths, {"caption_shards": 2.0}, "caption") == [0, 1]


def test_rec_core_stages_imports_only_the_standard_library() -> None:
    script = """
import sys
before = set(sys.modules)
import rec_core.stages
added = set(sys.modules) - before
print(sorted({m.split(".")[0] for m in added} - set(sys.stdlib_module_names)), sorted(m for m in added if "rec_" in m))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    assert proc.stdout.strip() == f"['rec_core'] {LIGHT_REC_CORE}"


# A parallel numba kernel of the product's (the pipeline's exact top-k), launched once; then both pools' sizes.
_LAUNCH_A_KERNEL = """
import numpy as np, numba, torch
from rec_core.feed.top_k_kernel import top_k_rows
top_k_rows(np.random.default_rng(0).random((64, 2048), dtype=np.float32), 5)
counts = [torch.get_num_threads(), numba.get_num_threads()]
"""


def test_task_settings_cap_torch_threads(tmp_path: Path) -> None:
    """REC_TORCH_THREADS caps torch in task code, whether torch is imported before or after the settings, and numba
    with it: a parallel numba kernel sets torch's OpenMP pool to numba's size at each launch (one per core
    uncapped), so capping torch alone held only until the first one."""
    script = f"""
import json, sys
from rec_core.runtime import job_settings
first = job_settings().model.torch_threads
import torch
after_import = torch.get_num_threads()
torch.set_num_threads(2)
job_settings()
set_again = torch.get_num_threads()
{_LAUNCH_A_KERNEL}
print(json.dumps([first, after_import, set_again, *counts]))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REC_", "OMP_", "MKL_", "NUMBA_"))}
    env.update(PYTHONPATH=str(ROOT), REC_DATA_DIR=str(tmp_path), REC_TORCH_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [1, 1, 1, 1, 1]
    # numba imported (its pool sized, one thread per core) before the job's settings apply: capped all the same.
    late = f"import numba\nfrom rec_core.runtime import job_settings\njob_settings()\n{_LAUNCH_A_KERNEL}\nprint(counts)"
    proc = subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, env=env, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[1, 1]"
    # 0 (the default) leaves torch alone.
    env["REC_TORCH_THREADS"] = "0"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from rec_core.runtime import job_settings; job_settings(); import os; "
            "print(os.environ.get('OMP_NUM_THREADS'))",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert proc.stdout.strip() == "None"


@pytest.mark.slow
def test_generate_data_dag_runs_end_to_end(airflow_db: Path, data_env: Path) -> None:
    from rec_core.data.lake import Lake

    dag = _bag().get_dag("generate_data")
    run = dag.test(run_conf={"scale": "tiny", "seed": 7})
    assert run.state == "success"
    lake = Lake(data_env / "lake")
    assert lake.read("interactions").num_rows > 1000
    assert lake.current().manifest["source"].startswith("generate_data")
    assert (data_env / "warehouse.duckdb").is_file()


@pytest.mark.slow
def test_import_dataset_dag_imports_files(airflow_db: Path, data_env: Path, tmp_path: Path) -> None:
    from rec_core.data.lake import Lake

    incoming = data_env / "import"  # the DAG reads only inside the import folder
    incoming.mkdir(parents=True)
    videos = incoming / "videos.csv"
    videos.write_text("video_id,caption,hashtags\nv1,sourdough bread at home,baking|bread\nv2,cat zoomies,cats pets\n")
    interactions = incoming / "interactions.csv"
    interactions.write_text("user_id,video_id,ts\nu1,v1,2026-01-02T10:00:00Z\nu1,v2,1767350000\nu2,v9,1767350000\n")
    dag = _bag().get_dag("import_dataset")
    # One absolute path inside the folder, one relative to it.
    run = dag.test(run_conf={"videos": str(videos), "interactions": "interactions.csv"})
    assert run.state == "success"
    lake = Lake(data_env / "lake")
    assert lake.read("interactions").num_rows == 2  # the row naming unknown video v9 is skipped
    assert sorted(lake.read("videos")["video_id"].to_pylist()) == ["v1", "v2"]


@pytest.mark.slow
def test_import_dataset_dag_fails_strict_and_keeps_the_lake(airflow_db: Path, data_env: Path, tmp_path: Path) -> None:
    incoming = data_env / "import"
    incoming.mkdir(parents=True)
    videos = incoming / "videos.csv"
    videos.write_text("video_id,caption\nv1,hello\n")
    interactions = incoming / "interactions.csv"
    interactions.write_text("user_id,video_id,ts\nu1,v9,1767350000\n")
    dag = _bag().get_dag("import_dataset")
    run = dag.test(run_conf={"videos": str(videos), "interactions": str(interactions), "strict": True})
    assert run.state == "failed"
    assert not (data_env / "lake" / "CURRENT").exists()


@pytest.mark.slow
def test_experiments_dag_starts_changes_and_stops_an_experiment(airflow_db: Path, data_env: Path) -> None:
    from rec_core.experiments.registry import read_experiments

    dag = _bag().get_dag("experiments")
    assert dag.test().state == "success"  # the Trigger form as it opens (it used to fail: a report of no name)
    # A typo in the conf: Airflow takes any key, so it ran the defaults. Refused, and not retried.
    typo = dag.test(run_conf={"action": "start", "nmae": "pop-check", "arms": "towers=model:0.5"})
    (apply,) = typo.get_task_instances()
    assert typo.state == "failed" and apply.try_number == 1, (typo.state, apply.try_number)
    assert not (data_env / "experiments.json").exists()
    start = {"action": "start", "name": "pop-check", "arms": "towers=model:0.5,pop=most_pop:0.5"}
    assert dag.test(run_conf=start).state == "success"
    assert dag.test(run_conf={**start, "action": "change", "arms": "towers=model:0.4,pop=most_pop:0.4"}).state == (
        "success"
    )
    assert dag.test(run_conf={**start, "arms": "towers=model:0.7,pop=most_pop:0.7"}).state == "failed"  # sum > 1
    assert dag.test(run_conf={"action": "stop", "name": "pop-check", "arms": ""}).state == "success"
    (experiment,) = read_experiments(data_env / "experiments.json")
    assert [a.share for a in experiment.arms] == [0.4, 0.4] and not experiment.active


# ---- the quality gate and the Asset chain, on the real metadata DB ------------------------------------------------


def _sync_dags_to_db() -> None:
    """Write every DAG of the folder to the metadata DB, as the DAG processor (and dag.test()) does, so that a
    consumer exists there, and can be unpaused, before its producer runs."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        sync_bag_to_db(bag, bundle.name, bundle.version)


@contextlib.contextmanager
def _unpaused(*dag_ids: str) -> Iterator[None]:
    """Airflow creates DAGs paused and queues an asset-triggered run only for an unpaused consumer, as an operator
    turns the chain on. The shared metadata DB is left as found: paused again, nothing left queued."""
    from airflow.models.asset import AssetDagRunQueue
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import delete, update

    def set_paused(paused: bool) -> int:
        with create_session() as session:
            session.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id.in_(dag_ids)))
            done = session.execute(update(DagModel).where(DagModel.dag_id.in_(dag_ids)).values(is_paused=paused))
            return done.rowcount

    _sync_dags_to_db()
    assert set_paused(False) == len(dag_ids), f"not every DAG of {dag_ids} is in the metadata DB"
    try:
        yield
    finally:
        set_paused(True)


def _asset_events(uri: str, run_id: str) -> list[tuple[str | None, str | None]]:
    """(source DAG, source task) of every event of the asset ``uri`` that the run ``run_id`` recorded."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent.source_dag_id, AssetEvent.source_task_id)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == uri, AssetEvent.source_run_id == run_id)
        )
        return [tuple(row) for row in rows]


def _queued_for(dag_id: str) -> list[str]:
    """The assets whose events wait (AssetDagRunQueue) to start a run of ``dag_id``."""
    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return sorted(
            session.scalars(
                select(AssetModel.uri)
                .join(AssetDagRunQueue, AssetDagRunQueue.asset_id == AssetModel.id)
                .where(AssetDagRunQueue.target_dag_id == dag_id)
            )
        )


def _task_state(dag_id: str, run_id: str, task_id: str) -> str | None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalars(
            select(TaskInstance.state).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id
            )
        ).one()


def _returned(dag_id: str, run_id: str, task_id: str) -> Any:
    """What a task of a run returned (its XCom)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run_id, dag_ids=dag_id, task_ids=task_id, key="return_value")
        ).one()
        return XComModel.deserialize_value(row)


def _returned_all(dag_id: str, run_id: str, task_id: str) -> list[Any]:
    """What every mapped instance of a task returned, in map order."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(run_id=run_id, dag_ids=dag_id, task_ids=task_id, key="return_value")
        ).all()
        return [XComModel.deserialize_value(row) for row in sorted(rows, key=lambda row: row.map_index)]


def _gate_must_promote(metrics: dict[str, Any], stack: str = "two_tower", most_pop: str = "most_pop") -> bool:
    """The quality gate's documented rule (README "The model"), written out independently of rec_core.model.gate:
    the served stack's test recall@50 at least 1.1x MostPop's (of the same instant) and above it beyond noise (the
    paired interval's low end above 0), and, with a current model re-evaluated on the same users, not more than 5%
    below it and not below it beyond noise (the interval's high end not under 0)."""
    models, evidence = metrics["models"], metrics["gate_evidence"]
    ours = models[stack]["recall@50"]
    current = models.get("current_model")
    beats_pop = ours >= 1.1 * models[most_pop]["recall@50"] and evidence["vs_most_pop"]["low"] > 0
    if current is None:
        return beats_pop
    return beats_pop and ours >= 0.95 * current["recall@50"] and evidence["vs_current"]["high"] >= 0


def test_train_towers_dag_trains_evaluates_and_gates(
    airflow_db: Path, data_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs whose gate outcome is known in advance: the first (no current model, 3 epochs, its ranker: the
    default) must be promoted, the second (1 epoch, 4-d towers, param ranker=off) must be refused and leave the
    first current. The promotion, and only the promotion, is announced on the model asset, which queues
    refresh_embeddings: a refused model is no new model to re-embed with."""
    from rec_core.model import ranking
    from rec_core.model.store import ModelStore
    from rec_core.rank.ranker import Ranker, RankerConfig
    from rec_core.settings import Settings
    from rec_core.synthetic.commit import generate_data

    # dag.test() runs the tasks in this process: a small ranker config keeps the test quick, the steps the same.
    fast = RankerConfig(max_rounds=60, early_stopping=15, min_data_in_leaf=20, folds=3, cv_groups=0)
    monkeypatch.setattr(ranking, "RELEASE_RANKER", fast)
    generate_data(Settings.load(), "tiny", seed=5)
    dag = _bag().get_dag("train_towers")
    from rec_dags.defaults import MODEL_URI  # importable once the bag has put the DAG folder on sys.path

    store = ModelStore(data_env / "models")
    with _unpaused("refresh_embeddings"):
        run = dag.test(run_conf={"epochs": 3, "embedding_dim": 32, "promote": True, "caption_shards": 2})
        run_id, state = run.run_id, run.state
        assert state == "success"
        # The captions were encoded by two mapped tasks, each its own part of the distinct texts, once each.
        parts = _returned_all("train_towers", run_id, "build_features")
        assert sorted(p["shard"] for p in parts) == [0, 1] and {p["shards"] for p in parts} == {2}
        assert all(p["encoded"] > 0 for p in parts)
        assert all(p["cache_dropped"] == 0 for p in parts)  # each part checked the cache's bound: a new one is within
        assert all(p["caches_removed"] == [] for p in parts)  # and the caches of other text models: none here
        (first,) = store.versions()
        assert not list(store.root.glob(".pending-*")), "the ranker step wrote the version whole"
        # The version carries its ranker, trained by its own task after the towers.
        assert _returned("train_towers", run_id, "train_ranker") == {"version": first, "has_ranker": True}
        assert Ranker.load_if_present(store.root / first) is not None
        assert store.read_json(first, "config.json")["ranker"]["has_ranker"] is True
        metrics = store.read_json(first, "metrics.json")
        models = metrics["models"]
        assert {"two_tower", "most_pop", ranking.RETRIEVAL, ranking.RANKED} <= set(models)
        assert not {"item_knn", "ease"} & set(models)  # REC_RELEASE_BASELINES=most_pop: the gate's bar alone
        assert "current_model" not in models and "current_model_version" not in metrics  # nothing to compare with
        assert store.read_json(first, "config.json")["tower"]["embedding_dim"] == 32
        # Known in advance: 3 epochs clear MostPop by far on this world (measured 0.187 vs 0.062 recall@50), and
        # the ranked stack more so against MostPop of its own instant.
        assert _gate_must_promote(metrics, ranking.RANKED, ranking.MOST_POP_AT_TEST), metrics
        assert store.current() == first
        decision = _returned("train_towers", run_id, "quality_gate")
        assert decision["passed"] and decision["promoted"] and decision["current"] == first, decision
        assert decision["stack"] == ranking.RANKED and metrics["gate"]["stack"] == ranking.RANKED
        # The promotion's announcement: one model-asset event, and refresh_embeddings is queued by it.
        assert _task_state("train_towers", run_id, "announce_model") == "success"
        assert _asset_events(MODEL_URI, run_id) == [("train_towers", "announce_model")]
        assert _queued_for("refresh_embeddings") == [MODEL_URI]

        # A deliberately crippled candidate on the same lake: 1 epoch, 4-d towers (measured 0.070 recall@50), and
        # the run's ranker param off: no ranker, and the towers as trained are what is gated.
        run = dag.test(run_conf={"epochs": 1, "embedding_dim": 4, "promote": True, "ranker": "off"})
        run_id, state = run.run_id, run.state
        assert state == "success"  # a refusal is the gate's answer, not a failed run
        (second,) = set(store.versions()) - {first}
        assert _returned("train_towers", run_id, "train_ranker") == {"version": second, "has_ranker": False}
        assert Ranker.load_if_present(store.root / second) is None
        metrics = store.read_json(second, "metrics.json")
        models = metrics["models"]
        assert ranking.RANKED not in models and metrics["gate"]["stack"] == ranking.RETRIEVAL
        # The current model was re-evaluated on the same split, and scores there what it scored when trained.
        assert metrics["current_model_version"] == first
        first_recall = store.read_json(first, "metrics.json")["models"]["two_tower"]["recall@50"]
        assert models["current_model"]["recall@50"] == pytest.approx(first_recall, abs=1e-6)
        assert not _gate_must_promote(metrics), metrics
        assert store.current() == first, "a refused version must not replace the current model"
        decision = _returned("train_towers", run_id, "quality_gate")
        assert decision["version"] == second and decision["current"] == first, decision
        assert not decision["passed"] and not decision["promoted"]
        assert any("below the current model" in reason for reason in decision["reasons"]), decision["reasons"]
        # Nothing announced: no model-asset event from this run, so nothing re-embeds an unchanged model.
        assert _task_state("train_towers", run_id, "announce_model") == "skipped"
        assert _asset_events(MODEL_URI, run_id) == []


@pytest.mark.slow
def test_asset_chain_schedules_each_stage_dag_from_the_one_before(airflow_db: Path, data_env: Path) -> None:
    """generate_data/import_dataset -> lake -> train_towers -> model -> refresh_embeddings -> embeddings ->
    materialize_feeds: the consumers' schedules name exactly the producers' outlets, and a real run of
    generate_data records a lake event from which the scheduler's own code creates a train_towers run."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import delete, select

    bag = _bag()
    from rec_dags.defaults import EMBEDDINGS_URI, LAKE_URI, MODEL_URI, SNAPSHOT_URI

    stages = ("generate_data", "import_dataset", "train_towers", "refresh_embeddings", "materialize_feeds")
    # Parse level: which stage task updates which asset, and which DAG each asset schedules.
    outlets = {
        (dag_id, task.task_id): sorted(asset.uri for asset in task.outlets)
        for dag_id in stages
        for task in bag.get_dag(dag_id).tasks
        if task.outlets
    }
    assert outlets == {
        ("generate_data", "generate"): [LAKE_URI],
        ("import_dataset", "run_import"): [LAKE_URI],
        ("train_towers", "announce_model"): [MODEL_URI],
        ("refresh_embeddings", "load_vectors"): [EMBEDDINGS_URI],
        ("materialize_feeds", "publish"): [SNAPSHOT_URI],
    }
    schedules = {
        dag.dag_id: sorted(asset.uri for asset in dag.schedule)
        for dag in bag.dags.values()
        if isinstance(dag.schedule, list)
    }
    assert schedules == {
        "train_towers": [LAKE_URI],
        "refresh_embeddings": [MODEL_URI],
        "materialize_feeds": [EMBEDDINGS_URI],
    }
    assert all(bag.get_dag(d).schedule is None for d in ("generate_data", "import_dataset", "recsys_pipeline"))

    # Run level: the producer's event, the consumer's queue entry, and the run the scheduler makes of them.
    with _unpaused("train_towers"):
        run = bag.get_dag("generate_data").test(run_conf={"scale": "tiny", "seed": 7})
        run_id, state = run.run_id, run.state
        assert state == "success"
        assert _asset_events(LAKE_URI, run_id) == [("generate_data", "generate")]
        assert _queued_for("train_towers") == [LAKE_URI]
        with create_session() as session:
            needing, triggered = DagModel.dags_needing_dagruns(session)  # the scheduler's own question
            due = [d for d in needing.all() if d.dag_id in triggered]
            assert [d.dag_id for d in due] == ["train_towers"]
            # The scheduler loop's own step for asset-triggered DAGs (no executor is started; the run stays queued).
            SchedulerJobRunner(job=Job(), num_runs=1)._create_dag_runs_asset_triggered(dag_models=due, session=session)
            session.flush()
            created = session.scalars(
                select(DagRun).where(DagRun.dag_id == "train_towers", DagRun.run_type == "asset_triggered")
            ).all()
            try:
                assert len(created) == 1 and created[0].state == "queued"
                consumed = [(e.uri, e.source_dag_id, e.source_run_id) for e in created[0].consumed_asset_events]
                assert (LAKE_URI, "generate_data", run_id) in consumed
                assert {uri for uri, _, _ in consumed} == {LAKE_URI}
            finally:
                # Nothing runs it here: leave the shared metadata DB without a queued run.
                session.execute(delete(DagRun).where(DagRun.id.in_([r.id for r in created])))
        assert _queued_for("train_towers") == [], "the scheduler consumed the queue entry"
