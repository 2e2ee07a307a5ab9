"""``make profile-stages``: wall time, CPU time and peak memory of every pipeline stage, one process each.

docs/scaling.md's "Measured: time and memory per stage" table was first made by
hand with ``/usr/bin/time -v``; this makes it reproducible. Each stage runs as
its own ``python -m jobs.<stage>`` command, in the order ``recsys_pipeline``
runs them, on a fresh data root (so the caption cache starts cold), and the
child's rusage from ``os.wait4`` gives its wall, CPU (user + sys) and peak RSS.
The machine may be shared, so the 1-minute load average at the start and end of
each stage is recorded too: under load, CPU seconds are the cost to project from.

Too slow for ``make bench`` (a cold caption pass alone is minutes at default
scale), hence its own target. MB here means MiB.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rec_core.atomic import write_with
from rec_core.data.lake import Lake, lake_for
from rec_core.model.store import model_store
from rec_core.model.text_encoder import resolve_model, video_text
from rec_core.model.text_features import CACHE_FILE, cache_dir, text_key
from rec_core.progress import setup_logging
from rec_core.settings import Settings
from rec_core.snapshot.publish import live_snapshot
from rec_core.synthetic.params import SCALES
from rec_core.synthetic.rewind import NEW_INTERACTIONS, NEW_VIDEOS, rewound, world_tables

log = logging.getLogger("bench.stages")
MIB = 1024 * 1024
INCREMENTAL = "incremental: "


@dataclass(frozen=True, slots=True)
class StageRow:
    stage: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float | None  # None on summed rows: peaks of separate processes do not add up
    load_start: float | None
    load_end: float | None


class StageFailed(RuntimeError):
    pass


def run_stage(stage: str, args: list[str], env: dict[str, str]) -> tuple[StageRow, str]:
    """Run ``python -m <args>`` as a child, streaming its output; returns its measurements and its stdout."""
    cmd = [sys.executable, "-m", *args]
    log.info("stage %s: %s", stage, " ".join(args))
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    captured: list[str] = []
    for line in proc.stdout:  # stderr (the logs) goes straight to the console
        sys.stdout.write(line)
        captured.append(line)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait for it again
    if proc.returncode != 0:
        raise StageFailed(f"stage {stage!r} failed with exit status {proc.returncode}: {' '.join(cmd)}")
    row = StageRow(stage, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, load_start, os.getloadavg()[0])
    log.info(
        "%s: %.1fs wall, %.1f CPU-s, %.0f MB peak RSS, load %.1f-%.1f",
        stage,
        row.wall_s,
        row.cpu_s,
        row.peak_rss_mb,
        row.load_start,
        row.load_end,
    )
    return row, "".join(captured)


@dataclass(slots=True)
class Profiler:
    """Runs stages as the pipeline's tasks, one process each, on one data root, and keeps their rows."""

    data_dir: Path
    epochs: int
    video_shards: int
    user_shards: int
    # Shards of one stage run at once, as Airflow's LocalExecutor (or that many Celery workers) runs mapped tasks;
    # 1, the default, runs them one after another, as `airflow dags test` does.
    shards_at_once: int = 1
    rows: list[StageRow] = field(default_factory=list)
    gates: list[str] = field(default_factory=list)  # a line per release: what the gate decided

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "REC_DATA_DIR": str(self.data_dir), "PYTHONUNBUFFERED": "1"}

    def stage(self, name: str, *args: str) -> str:
        row, out = run_stage(name, list(args), self.env)
        self.rows.append(row)
        self._write_partial()
        return out

    def _write_partial(self) -> None:
        partial = self.data_dir.parent / f"{self.data_dir.name}.partial.md"  # beside the root: survives a kill
        partial.write_text(to_markdown(self.rows) + "\n")

    def sharded(self, name: str, shards: int, *args: str) -> None:
        """Each shard as its own process; with ``shards_at_once`` > 1 that many at a time, and the stage's wall time
        is then from the first start to the last end (its CPU time is still the sum)."""
        started = time.perf_counter()
        failed = threading.Event()  # after a failed shard no other starts, as when they ran in turn

        def one(i: int) -> StageRow | None:
            if failed.is_set():
                return None
            try:
                return run_stage(f"{name} (shard {i + 1} of {shards})", [*args, "--shard", str(i)], self.env)[0]
            except StageFailed:
                failed.set()
                raise

        part: list[StageRow] = []
        with ThreadPoolExecutor(max(1, self.shards_at_once)) as pool:
            futures = [pool.submit(one, i) for i in range(shards)]
            try:
                part.extend(row for future in futures if (row := future.result()) is not None)
            finally:  # the shards measured before a failure stay in the table
                self.rows.extend(part)
                self._write_partial()
        cpu = sum(r.cpu_s for r in part)
        if self.shards_at_once > 1:
            what, wall = f"{self.shards_at_once} at a time", time.perf_counter() - started
        else:
            what, wall = "sum", sum(r.wall_s for r in part)
        self.rows.append(StageRow(f"{name}, all {shards} shards ({what})", wall, cpu, None, None, None))

    def release_and_snapshot(self, prefix: str) -> None:
        """Captions, the release, and a snapshot built, validated and published, as the DAG runs them.

        A first run whose model the gate refuses leaves nothing to build a snapshot of; what is measured here is
        what the stages cost, so that version is then promoted by hand (``jobs.models promote``, the gate's manual
        override), as its own row, and said."""
        data_dir = self.data_dir
        if prefix:
            self.stage(f"{prefix}caption embeddings, new videos only", "jobs.build_features")
        else:
            self.stage("caption embeddings, cold cache", "jobs.build_features")
            self.stage("caption embeddings, cached", "jobs.build_features")
        decision_file = data_dir.parent / f"{data_dir.name}.release.json"
        self.stage(
            f"{prefix}train + evaluate + gate",
            "jobs.train_towers",
            "--epochs",
            str(self.epochs),
            "--json",
            str(decision_file),
        )
        decision = json.loads(decision_file.read_text())
        self.gates.append(
            f"{prefix or 'cold: '}{decision['version']} {'passed' if decision['passed'] else 'refused'} by the gate: "
            + "; ".join(decision["reasons"])
        )
        if decision["current"] is None:
            self.stage(
                f"{prefix}promote by hand (gate refused, none current)", "jobs.models", "promote", decision["version"]
            )
            self.gates[-1] += (
                f" (promoted by hand so that the stages after it run: `jobs.models promote {decision['version']}`)"
            )
        begun = self.stage(
            f"{prefix}begin snapshot",
            "jobs.pipeline",
            "begin",
            "--video-shards",
            str(self.video_shards),
            "--user-shards",
            str(self.user_shards),
        )
        snapshot = json.loads(begun.strip().splitlines()[-1])["snapshot_id"]
        self.sharded(f"{prefix}embed videos", self.video_shards, "jobs.embed_videos", "--snapshot", snapshot)
        self.sharded(f"{prefix}embed users", self.user_shards, "jobs.embed_users", "--snapshot", snapshot)
        self.stage(f"{prefix}load vectors into Milvus Lite", "jobs.load_vectors", "--snapshot", snapshot)
        self.stage(f"{prefix}trending list", "jobs.materialize_feeds", "--snapshot", snapshot, "--trending")
        self.sharded(f"{prefix}materialize feeds", self.user_shards, "jobs.materialize_feeds", "--snapshot", snapshot)
        # The DAG's three last tasks, each as its task runs it. (`jobs.publish --snapshot` validates again before
        # the swap and rebuilds the warehouse after it, so profiling it beside these would count both twice.)
        self.stage(f"{prefix}validate snapshot", "jobs.pipeline", "stage", "validate", "--snapshot", snapshot)
        self.stage(f"{prefix}publish", "jobs.pipeline", "stage", "publish", "--snapshot", snapshot)
        self.stage(f"{prefix}rebuild warehouse", "jobs.pipeline", "stage", "rebuild_warehouse")


def profile(profiler: Profiler, scale: str, incremental: bool = False) -> None:
    """Every stage of the pipeline from an empty data root to a published snapshot and its warehouse.

    With ``incremental``, the first run is on the lake rewound by :data:`NEW_INTERACTIONS` of its interactions and
    :data:`NEW_VIDEOS` of its videos (``rec_core.synthetic.rewind``); then the whole world is committed, as an
    ingest would, and the stages run again: the caption cache encodes only the new videos, and the release starts
    warm from the model the first run promoted (``REC_WARM_START``)."""
    profiler.stage("generate data", "jobs.generate_data", "--scale", scale)
    whole = _rewind(profiler.data_dir) if incremental else None
    profiler.stage("ingest inbox", "jobs.ingest_inbox")
    profiler.release_and_snapshot("")
    _record_cold_model(profiler.data_dir)
    if whole is not None:
        _commit_version(profiler.data_dir, whole)
        profiler.release_and_snapshot(INCREMENTAL)


def incremental_again(profiler: Profiler) -> None:
    """The incremental run once more, on a root a whole ``--incremental`` profile left, put back first as its cold
    run left it (:func:`rewind_to_cold`): to measure a change to the incremental path against the last profile, on
    the same machine and the same world."""
    whole = rewind_to_cold(profiler.data_dir)
    _commit_version(profiler.data_dir, whole)
    profiler.release_and_snapshot(INCREMENTAL)


def rewind_to_cold(data_dir: Path) -> str:
    """Put a profiled root back as its cold run left it; returns the lake version holding the whole world.

    The rewound tables are committed again as the current lake version (versions only move forward), the model the
    cold run released is promoted again, and what the incremental run added to the caches is taken out: the new
    videos' captions (their texts that no rewound video shares), every aligned caption copy and the baselines'
    metrics. The snapshots stay; the run publishes a new one."""
    settings = Settings.of(data_dir=data_dir)
    lake = _lake(data_dir)
    versions = [lake.at(name).current() for name in lake.versions()]
    rewound_v = [v for v in versions if "rewound" in str(v.manifest.get("source", ""))]
    grown = [v for v in versions if v.manifest.get("source") == "growth"]
    if not rewound_v or not grown:
        raise StageFailed(f"{data_dir} holds no rewound and grown lake versions: run a whole --incremental profile")
    cold_lake, whole = rewound_v[-1], grown[-1]
    store = model_store(settings.paths)
    cold_model = _record_cold_model(data_dir, cold_lake.name)
    lake.commit(world_tables(lake.at(cold_lake.name)), source=f"{cold_lake.manifest['source']} again")
    store.promote(cold_model)
    _drop_new_captions(settings, lake, lake.at(whole.name))  # the lake is the rewound tables again
    shutil.rmtree(settings.paths.baselines_dir, ignore_errors=True)
    log.info("rewound %s: lake as %s, model %s current", data_dir, cold_lake.name, cold_model)
    return whole.name


def _record_cold_model(data_dir: Path, trained_on: str | None = None) -> str:
    """The model the cold run released, kept in ``profile.json`` in the root (later runs move the lake on); with
    ``trained_on``, found by the lake version it was trained on where a root has no record yet."""
    record = data_dir / "profile.json"
    if record.is_file():
        return json.loads(record.read_text())["cold_model"]
    store = model_store(Settings.of(data_dir=data_dir).paths)
    if trained_on is None:
        found = [store.current()]
    else:
        found = [v for v in store.versions() if store.read_json(v, "config.json").get("lake_version") == trained_on]
    if not found or found[-1] is None:
        raise StageFailed(f"no model of {data_dir} is the cold run's: run a whole --incremental profile")
    record.write_text(json.dumps({"cold_model": found[-1]}) + "\n")
    return found[-1]


def _drop_new_captions(settings: Settings, cold: Lake, whole: Lake) -> None:
    source = resolve_model(settings.model.text_model)
    model_id = source.model_id()

    def keys(lake: Lake) -> set[str]:
        videos = lake.read("videos", columns=["caption", "hashtags"])
        pairs = zip(videos.column("caption").to_pylist(), videos.column("hashtags").to_pylist(), strict=True)
        return {text_key(model_id, video_text(caption, tags)) for caption, tags in pairs}

    folder = cache_dir(settings.paths, model_id, source.label)
    if not (folder / CACHE_FILE).is_file():
        raise StageFailed(f"no caption cache at {folder}: run a whole --incremental profile")
    new = keys(whole) - keys(cold)
    cache = pq.read_table(folder / CACHE_FILE)
    kept = cache.filter(pc.invert(pc.is_in(cache.column("key"), value_set=pa.array(sorted(new), pa.string()))))
    write_with(folder / CACHE_FILE, lambda tmp: pq.write_table(kept, tmp, compression="none"))
    for aligned in folder.glob("aligned-*.npy"):
        aligned.unlink()
    log.info(
        "caption cache: %d entries of new videos taken out, %d kept", cache.num_rows - kept.num_rows, kept.num_rows
    )


def _lake(data_dir: Path) -> Lake:
    """The root's lake as the pipeline opens it: pruning keeps the versions its snapshots read."""
    settings = Settings.of(data_dir=data_dir)
    return lake_for(settings.paths, settings.batch)


def _rewind(data_dir: Path) -> str:
    """Commit the lake rewound (see :func:`profile`); returns the whole world's lake version, which stays kept."""
    lake = _lake(data_dir)
    whole = lake.current()
    lake.commit(rewound(world_tables(lake), NEW_INTERACTIONS, NEW_VIDEOS), source=f"{whole.manifest['source']} rewound")
    log.info("lake rewound by %.0f%% of interactions and %.0f%% of videos", NEW_INTERACTIONS * 100, NEW_VIDEOS * 100)
    return whole.name


def _commit_version(data_dir: Path, version: str) -> None:
    """The lake grows back to ``version``'s tables, as one ingest would bring them."""
    lake = _lake(data_dir)
    lake.commit(world_tables(lake.at(version)), source="growth")


def _size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / MIB
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MIB if path.is_dir() else 0.0


def disk_sizes(data_dir: Path) -> dict[str, float]:
    """MB on disk of the lake (current version and all kept), the feature cache and the live snapshot's parts."""
    settings = Settings.of(data_dir=data_dir)
    current = Lake(settings.paths.lake_dir, settings.batch.lake_versions_keep).current()
    snapshot = live_snapshot(settings.paths)
    if snapshot is None:
        raise StageFailed(f"the run published no snapshot under {data_dir}")
    return {
        f"lake, current version ({current.name})": _size_mb(current.path),
        "lake, all kept versions": _size_mb(settings.paths.lake_dir),
        "feature cache (features/)": _size_mb(data_dir / "features"),
        "snapshot feeds/": _size_mb(snapshot.feeds_dir),
        "snapshot vectors/": _size_mb(snapshot.vectors_dir),
        "snapshot milvus.db": _size_mb(snapshot.milvus_lite_file),
        "snapshot, whole folder": _size_mb(snapshot.root),
    }


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def to_markdown(rows: list[StageRow]) -> str:
    lines = ["| stage | wall s | CPU s | peak RSS MB | load 1m |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        rss = "—" if r.peak_rss_mb is None else f"{r.peak_rss_mb:,.0f}"
        load = "—" if r.load_start is None else f"{r.load_start:.1f}–{r.load_end:.1f}"
        lines.append(f"| {r.stage} | {_num(r.wall_s)} | {_num(r.cpu_s)} | {rss} | {load} |")
    return "\n".join(lines)


def _git_head() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="default")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs (default: the DAG's, 6)")
    parser.add_argument("--video-shards", type=int, default=4)
    parser.add_argument("--user-shards", type=int, default=4)
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="run on the lake rewound by 10%% of interactions and 1%% of videos, then grow it back and run again",
    )
    parser.add_argument(
        "--again",
        action="store_true",
        help="the incremental run only, again, on the root a whole --incremental profile left (put back first)",
    )
    parser.add_argument(
        "--shards-at-once",
        type=int,
        default=1,
        help="shards of a sharded stage run at once, as Airflow's LocalExecutor runs mapped tasks (default 1: in turn)",
    )
    parser.add_argument("--data", type=Path, help="data root to recreate (default: <REC_DATA_DIR>/bench/stages-SCALE)")
    parser.add_argument("--out", type=Path, help="Markdown table (default: <data>/stages.md; JSON beside it)")
    args = parser.parse_args(argv)
    settings = Settings.load()
    setup_logging(settings.log_level)
    data_dir = (args.data or settings.paths.data_dir / "bench" / f"stages-{args.scale}").resolve()
    user_root = settings.paths.data_dir.resolve()
    if data_dir == user_root or data_dir in user_root.parents:
        parser.error(f"--data {data_dir} would delete the data root {user_root}; name a folder of its own")
    if args.shards_at_once < 1:
        parser.error("--shards-at-once must be at least 1")
    profiler = Profiler(data_dir, args.epochs, args.video_shards, args.user_shards, args.shards_at_once)
    if not args.again:
        shutil.rmtree(data_dir, ignore_errors=True)  # a fresh root, so the caption cache starts cold
        data_dir.mkdir(parents=True)
    log.info("profiling every stage at %s scale in %s (%d CPUs)", args.scale, data_dir, os.cpu_count() or 0)
    try:
        if args.again:
            incremental_again(profiler)
        else:
            profile(profiler, args.scale, args.incremental)
    except StageFailed as exc:
        if profiler.rows:
            print("\nmeasured before the failure:\n" + to_markdown(profiler.rows), file=sys.stderr)
        log.error("%s", exc)
        return 1
    rows, gates = profiler.rows, profiler.gates
    sizes = disk_sizes(data_dir)
    head = (
        f"Scale {args.scale}{' (incremental)' if args.incremental else ''}"
        f"{' (the incremental run again, on the whole profile root put back)' if args.again else ''}, "
        f"{args.epochs} epochs, "
        f"{args.video_shards} video / {args.user_shards} user shards"
        f"{f' ({args.shards_at_once} at a time)' if args.shards_at_once > 1 else ''}, "
        f"commit {_git_head()}, {os.cpu_count()} CPUs; load 1m = at stage start–end."
    )
    size_lines = "\n".join(f"- {name}: {mb:,.1f} MB" for name, mb in sizes.items())
    gate_lines = "\n".join(f"- {line}" for line in gates)
    report = f"{head}\n\n{to_markdown(rows)}\n\nThe gate:\n\n{gate_lines}\n\nOn disk:\n\n{size_lines}\n"
    at_once = f"-{args.shards_at_once}-at-once" if args.shards_at_once > 1 else ""
    out = args.out or data_dir / (f"stages-again{at_once}.md" if args.again else f"stages{at_once}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    summary = {"scale": args.scale, "incremental": args.incremental, "again": args.again, "epochs": args.epochs}
    summary |= {"video_shards": args.video_shards}
    summary |= {"user_shards": args.user_shards, "shards_at_once": args.shards_at_once}
    summary |= {"commit": _git_head(), "cpus": os.cpu_count()}
    summary |= {"stages": [asdict(r) for r in rows], "gate": gates, "disk_mb": sizes}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{report}\nwritten to {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
