"""The batch pipeline's stages and their order, declared once.

The Airflow DAGs (``dags/``) and ``python -m jobs.pipeline run`` are both built
from these declarations, so a stage is added or moved in one place. DAG files
import this module at parse time, which Airflow does often: it imports nothing
but the standard library, and names each stage's function as
``"module:function"``, imported only when the stage runs.

A stage function takes the settings and, as keywords, the values the stage
``needs``: run parameters (``retrain``, ``video_shards``, ``caption_shards``, ...), values an earlier
stage ``provides`` (``snapshot_id``), and ``shard`` for a stage run once per
shard. It returns a JSON-friendly dict (Airflow keeps it as the task's XCom).

A few run parameters stand for a setting during one run (``RUN_SETTINGS``: a DAG's ``ranker`` param is
``REC_RANKER`` for every stage of that run, ``warm_start`` is ``REC_WARM_START``), so each stage of the run sees
the same settings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rec_core.settings import PathSettings, Settings

# Run parameters that override the setting of the same flat name for every stage of a run; FROM_SETTINGS (the
# trigger forms' default) or None keeps what the settings say.
RUN_SETTINGS: tuple[str, ...] = ("ranker", "warm_start")
FROM_SETTINGS = "default"

# What a stage's success changes, for whoever waits on it (Airflow's assets).
Announcement = Literal["lake", "model", "embeddings", "snapshot"]
# Which shards a sharded stage runs over: those its snapshot was begun with (video, user), or the run's
# ``caption_shards`` parameter (caption: the text encoding before training, when there is no snapshot yet).
ShardKind = Literal["video", "user", "caption"]


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of the batch: a function of the settings, run once, or once per shard of a snapshot."""

    name: str  # the Airflow task id too
    call: str  # "module:function"
    needs: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()  # keys of its result that later stages need
    after: tuple[str, ...] = ()  # stages that must have finished, beyond those whose values it needs
    shards: ShardKind | None = None
    announces: Announcement | None = None
    # The key of the result that says whether there is anything to announce; None: every success announces.
    announce_if: str | None = None

    def function(self) -> Callable[..., Any]:
        module, _, attribute = self.call.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def run(self, settings: Settings, values: Mapping[str, Any], shard: int | None = None) -> Any:
        """Call the stage's function with the values it needs (and ``shard`` for a sharded stage)."""
        values = whole_counts(values)
        kwargs = {name: values[name] for name in self.needs}
        if self.shards is not None:
            kwargs["shard"] = shard
        settings = run_settings(settings, values)
        if not settings.paths.object_store:
            return self.function()(settings, **kwargs)
        # Snapshots on the object store: the stage works on a local copy, pulled before and pushed after.
        from rec_core.snapshot.remote import run_synced

        begins = "snapshot_id" in self.provides and "snapshot_id" not in self.needs
        return run_synced(
            settings.paths, kwargs.get("snapshot_id"), lambda: self.function()(settings, **kwargs), begins=begins
        )


# A run's values that count something. JSON Schema's "integer" admits 2.0, so the Trigger form passes one; a float
# count failed deep in a stage (range() of a float), after begin_snapshot had written a build of 2.0 shards.
COUNTS: tuple[str, ...] = ("epochs", "embedding_dim", "video_shards", "user_shards", "caption_shards")


def whole_counts(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each count a Python int: a whole float (2.0) becomes 2; any other float is refused."""
    out = dict(values)
    for name in COUNTS:
        value = out.get(name)
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{name} must be a whole number, got {value}")
            out[name] = int(value)
    return out


def run_settings(settings: Settings, values: Mapping[str, Any]) -> Settings:
    """``settings`` with the run's ``RUN_SETTINGS`` parameters in force."""
    overrides = {name: values[name] for name in RUN_SETTINGS if values.get(name) not in (None, FROM_SETTINGS)}
    return settings.override(**overrides) if overrides else settings


BUILD_FEATURES = Stage(
    "build_features",
    "rec_core.model.release:build_features",
    needs=("caption_shards",),
    shards="caption",
    after=("ingest_inbox",),
)

# The whole batch, in order: inbox -> lake -> features -> model -> vectors -> feeds -> live snapshot.
PIPELINE: tuple[Stage, ...] = (
    Stage("ingest_inbox", "rec_core.data.inbox_merge:ingest_inbox", announces="lake", announce_if="committed"),
    BUILD_FEATURES,
    # The towers, their ranker (REC_RANKER=on), evaluation and gate in one call (MODEL_RELEASE below, step by step).
    # A new model version is announced only when the gate promoted it, not when the current one is reused.
    Stage(
        "train_or_reuse",
        "rec_core.model.release:choose_model",
        needs=("retrain", "epochs"),
        after=("build_features",),
        announces="model",
        announce_if="promoted",
    ),
    Stage(
        "begin_snapshot",
        "rec_core.snapshot.begin:begin",
        needs=("video_shards", "user_shards"),
        provides=("snapshot_id",),
        after=("train_or_reuse",),
    ),
    Stage("embed_videos", "rec_core.model.inference:embed_videos", needs=("snapshot_id",), shards="video"),
    Stage("embed_users", "rec_core.model.inference:embed_users", needs=("snapshot_id",), shards="user"),
    # The embeddings announcement starts materialization elsewhere, so it waits for the user vectors too.
    Stage(
        "load_vectors",
        "rec_core.snapshot.vector_load:load_vectors",
        needs=("snapshot_id",),
        after=("embed_videos", "embed_users"),
        announces="embeddings",
    ),
    Stage("trending", "rec_core.feed.batch:build_trending", needs=("snapshot_id",), after=("load_vectors",)),
    Stage(
        "materialize",
        "rec_core.feed.batch:materialize_feeds",
        needs=("snapshot_id",),
        shards="user",
        after=("load_vectors", "embed_users"),
    ),
    Stage(
        "validate",
        "rec_core.snapshot.validate:validate_stage",
        needs=("snapshot_id",),
        after=("materialize", "trending"),
    ),
    Stage(
        "publish",
        "rec_core.snapshot.publish:publish_stage",
        needs=("snapshot_id",),
        after=("validate",),
        announces="snapshot",
    ),
    Stage("rebuild_warehouse", "rec_core.data.summary:rebuild_warehouse", after=("publish",)),
)

# Where a run that starts mid-pipeline takes its snapshot from: the one named, or the newest unpublished one.
RESUME_SNAPSHOT = Stage(
    "latest_snapshot", "rec_core.snapshot.begin:resume", needs=("snapshot_id",), provides=("snapshot_id",)
)

# The model stage step by step, for a run that releases a model and stops there (the train_towers DAG);
# train_or_reuse above runs the same steps in one call (rec_core.model.release). The towers wait as a pending
# version until train_ranker writes it whole (with its ranker when REC_RANKER is on): nothing can evaluate or
# promote a version without its ranker.
MODEL_RELEASE: tuple[Stage, ...] = (
    BUILD_FEATURES,
    Stage(
        "train",
        "rec_core.model.release:train_candidate",
        needs=("epochs", "embedding_dim"),
        provides=("version",),
        after=("build_features",),
    ),
    Stage("train_ranker", "rec_core.model.release:train_candidate_ranker", needs=("version",)),
    Stage("evaluate", "rec_core.model.release:evaluate_version", needs=("version",), after=("train_ranker",)),
    Stage(
        "quality_gate",
        "rec_core.model.release:gate_version",
        needs=("version", "promote"),
        after=("evaluate",),
        announces="model",
        announce_if="promoted",
    ),
)


def between(first: str, last: str, stages: tuple[Stage, ...] = PIPELINE) -> tuple[Stage, ...]:
    """The stages from ``first`` to ``last``, both included, in their declared order."""
    names = [stage.name for stage in stages]
    return stages[names.index(first) : names.index(last) + 1]


def check_order(stages: tuple[Stage, ...], params: Iterable[str] = ()) -> None:
    """Raise ValueError unless every value a stage needs is a parameter or comes from an earlier stage, and no
    stage is declared before one it waits for. A stage it waits for that is not in ``stages`` at all is done
    before such a run starts (that is what the run's trigger announced)."""
    known, names = set(params), [stage.name for stage in stages]
    for position, stage in enumerate(stages):
        missing = [name for name in stage.needs if name not in known]
        if missing:
            raise ValueError(f"stage {stage.name} needs {missing}, which no parameter or earlier stage provides")
        early = [name for name in stage.after if name in names[position:]]
        if early:
            raise ValueError(f"stage {stage.name} is declared before {early}, which it waits for")
        known.update(stage.provides)


def run_stages(settings: Settings, stages: Iterable[Stage], params: Mapping[str, Any]) -> dict[str, Any]:
    """Run ``stages`` one after the other in this process (a sharded stage once per shard, in order);
    returns the run parameters and every value the stages provided."""
    values = dict(params)
    for stage in stages:
        if stage.shards is None:
            result = stage.run(settings, values)
            values.update({name: result[name] for name in stage.provides})
            continue
        for shard in shard_numbers(settings.paths, values, stage.shards):
            stage.run(settings, values, shard)
    return values


def shard_numbers(paths: PathSettings, values: Mapping[str, Any], kind: ShardKind) -> list[int]:
    """The shards of ``kind`` to run or map over: the run's ``caption_shards`` for captions, else those its
    snapshot (``values["snapshot_id"]``) was begun with (its build.json)."""
    if kind == "caption":
        shards = whole_counts(values)["caption_shards"]
        if shards < 1:
            raise ValueError(f"caption_shards must be at least 1, got {shards}")
        return list(range(shards))
    from rec_core.snapshot.layout import BUILD_FILE, snapshot_paths
    from rec_core.snapshot.remote import remote_snapshots

    if (remote := remote_snapshots(paths)) is not None:  # the machine that maps the shards may not hold it yet
        remote.folder(values["snapshot_id"]).pull([BUILD_FILE])
    build = snapshot_paths(paths, values["snapshot_id"]).read_build()
    return list(range(build.video_shards if kind == "video" else build.user_shards))


def run_all(
    settings: Settings,
    *,
    retrain: bool = True,
    epochs: int | None = None,
    video_shards: int = 2,
    user_shards: int = 2,
    caption_shards: int = 1,
) -> str:
    """Every stage of the pipeline in this process, in order; returns the published snapshot id.

    The same stages the recsys_pipeline DAG maps over shards: for tests, benchmarks and
    a machine without Airflow. The DAG stays the way to run it in production.
    """
    params = {
        "retrain": retrain,
        "epochs": epochs,
        "video_shards": video_shards,
        "user_shards": user_shards,
        "caption_shards": caption_shards,
    }
    return run_stages(settings, PIPELINE, params)["snapshot_id"]
