"""Airflow tasks made from the declared stages (``rec_core.stages``): the DAG files only say which stages.

One task per stage, named after it; a sharded stage is mapped over the shards its snapshot was begun
with, so with several workers (CeleryExecutor) the shards run in parallel on different machines. A stage
that announces something updates its asset when it succeeds, or, when the announcement depends on its
result (a model the gate refused is no new model), a small task after it does so only when there is
something to announce, and is skipped otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Asset, task
from airflow.sdk.exceptions import AirflowSkipException

from rec_core.stages import Stage

from .defaults import ASSET_URIS, refuse_unknown_conf


def wire(stages: Sequence[Stage]) -> dict[str, Any]:
    """Add a task for each stage, in their declared order, to the DAG being defined; returns them by stage name.

    A stage waits for the stages it names in ``after`` that are in this DAG (the others ran before this DAG
    was triggered) and for the stages whose values it needs; the rest of what it needs is the run's params.
    """
    tasks: dict[str, Any] = {}
    values: dict[str, Any] = {}  # provided value name -> the XCom that carries it
    shard_lists: dict[str, Any] = {}
    for stage in stages:
        inputs = {name: values[name] for name in stage.needs if name in values}
        if stage.shards is None:
            out = _stage_task(stage)(inputs=inputs)
        else:
            if stage.shards not in shard_lists:
                snapshot = values.get("snapshot_id")  # None for captions: their count is a run param
                shard_lists[stage.shards] = shard_list.override(task_id=f"{stage.shards}_shard_list")(
                    snapshot, stage.shards
                )
            out = _stage_task(stage).partial(inputs=inputs).expand(shard=shard_lists[stage.shards])
        for name in stage.after:
            if name in tasks:
                tasks[name] >> out
        values.update({name: out[name] for name in stage.provides})
        if stage.announce_if is not None:
            _announce_task(stage)(out)
        tasks[stage.name] = out
    return tasks


def _stage_task(stage: Stage) -> Any:
    unconditional = stage.announces is not None and stage.announce_if is None
    outlets = [Asset(ASSET_URIS[stage.announces])] if unconditional else []

    @task(task_id=stage.name, outlets=outlets, multiple_outputs=bool(stage.provides), doc_md=stage.call)
    def run(
        inputs: dict[str, Any],
        shard: int | None = None,
        params: dict | None = None,
        dag_run: Any = None,
        dag: Any = None,
    ) -> Any:
        from rec_core.runtime import job_settings

        refuse_unknown_conf(dag_run, dag)
        assert params is not None
        return stage.run(job_settings(), {**params, **inputs}, shard)

    return run


def _announce_task(stage: Stage) -> Any:
    assert stage.announces is not None and stage.announce_if is not None
    key = stage.announce_if

    @task(task_id=f"announce_{stage.announces}", outlets=[Asset(ASSET_URIS[stage.announces])])
    def announce(result: dict[str, Any]) -> None:
        # A skipped task updates no asset: nothing downstream is scheduled for what did not change.
        if not result.get(key):
            raise AirflowSkipException(f"{stage.name}: not {key}, so no new {stage.announces} to announce")

    return announce


@task
def shard_list(snapshot_id: str | None, kind: str, params: dict | None = None) -> list[int]:
    """The shard numbers of ``kind`` to map over: those the snapshot was begun with ("video", "user"), or the
    run's ``caption_shards`` ("caption")."""
    from rec_core.runtime import job_settings
    from rec_core.stages import shard_numbers

    values = {**(params or {}), "snapshot_id": snapshot_id}
    return shard_numbers(job_settings().paths, values, kind)  # type: ignore[arg-type]
