"""Validating a built snapshot and writing its manifest (docs/architecture.md, invariant 3).

:func:`validate_snapshot` hashes every file of a built snapshot, then checks it:
files present and nothing stray, schemas, vectors finite, each catalogue part row
for row with its video vector shard, feeds sorted, the Milvus collection there,
and the content rules of :mod:`rec_core.snapshot.content` against the lake version
it was built from; then it writes ``manifest.json`` atomically. Before hashing, it writes the serving index the
API maps (:mod:`rec_core.snapshot.serving_index`) from the same files, and each user's watch history
(:mod:`rec_core.snapshot.watch_history`) from the lake version, so both are hashed and published with them.
Hashing FIRST means a file changed while it was being checked no longer matches its manifest, so publish refuses
it. A failing snapshot raises :class:`~rec_core.snapshot.layout.SnapshotError` listing every reason.

Validation needs no lock: it writes only inside its own snapshot folder.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rec_core.atomic import write_bytes_atomic
from rec_core.data.lake import lake_version_dir
from rec_core.experiments.spec import ExperimentError, check_arms, check_name, experiments_from_build
from rec_core.ids import is_valid_id
from rec_core.model.inference import as_of_ms
from rec_core.settings import PathSettings, Settings
from rec_core.snapshot.content import EXAMPLES, check_content
from rec_core.snapshot.feed_repeats import feed_repeats
from rec_core.snapshot.feed_users import active_user_ids
from rec_core.snapshot.files import (
    CATALOGUE_COLUMNS,
    CATALOGUE_DENSE,
    CATALOGUE_TEXT,
    FEED_SCHEMA,
    TRENDING_SCHEMA,
    VIDEO_ID,
    columns_of,
)
from rec_core.snapshot.layout import (
    BUILD_FILE,
    RANK_FILES,
    SERVE_DIR,
    BuildInfo,
    SnapshotError,
    SnapshotPaths,
    expected_files,
    live_snapshot_id,
    snapshot_paths,
)
from rec_core.snapshot.manifest import Manifest, sha256_file
from rec_core.snapshot.model_copy import load_snapshot_model
from rec_core.snapshot.rank_state import rank_arrays_problems, read_ranking
from rec_core.snapshot.serving_index import write_serving_index
from rec_core.snapshot.watch_history import write_watch_history

log = logging.getLogger(__name__)

FEED_COLUMNS = columns_of(FEED_SCHEMA)
TRENDING_COLUMNS = columns_of(TRENDING_SCHEMA)


def _check_experiments(build: BuildInfo) -> list[str]:
    """The experiments build.json carries read back as running experiments with valid arms: the API assigns
    every user by them."""
    try:
        for experiment in experiments_from_build(build.experiments):
            check_name(experiment.name)
            check_arms(experiment.arms)
    except (ExperimentError, msgspec.ValidationError) as exc:
        return [f"{BUILD_FILE} has an experiment that cannot be served: {exc}"]
    return []


def validate_snapshot(path_settings: PathSettings, snapshot_id: str, *, require_milvus: bool = True) -> Manifest:
    """Check a built snapshot and write its manifest; raise :class:`SnapshotError` listing every problem.

    ``require_milvus=False`` skips the Milvus check (for snapshots built without ``load_vectors``).
    """
    paths = snapshot_paths(path_settings, snapshot_id)
    build = paths.read_build()
    if build.snapshot_id != snapshot_id:
        _refuse(path_settings, paths, [f"{BUILD_FILE} names snapshot {build.snapshot_id!r}"])
    lake_dir = lake_version_dir(path_settings, build.lake_version)
    lake = {t: lake_dir / f"{t}.parquet" for t in ("videos", "users", "interactions")}
    if absent := [t for t, p in lake.items() if not p.is_file()]:
        _refuse(
            path_settings,
            paths,
            [
                f"lake version {build.lake_version} it was built from lacks {', '.join(absent)} "
                "(pruned? see REC_LAKE_VERSIONS_KEEP); build a new snapshot"
            ],
        )
    problems: list[str] = []
    index = None
    if build.serving_index:
        # The index is derived from the files checked below and hashed with them, so publish re-checks it too.
        try:
            index = write_serving_index(paths, build)
        except Exception as exc:  # damaged inputs fail in many ways; the checks below name each
            problems.append(f"cannot write the serving index: {type(exc).__name__}: {exc}")
    if build.watch_history and index is not None:
        try:
            write_watch_history(paths, build, lake["interactions"], index.video_ids)
        except Exception as exc:  # an unreadable lake table; the missing files are named below
            problems.append(f"cannot write the watch history: {type(exc).__name__}: {exc}")
    files = expected_files(paths, build)
    milvus_file = paths.milvus_lite_file if not path_settings.milvus_uri else None
    # Hash before checking: a file rewritten during the checks then fails publish's re-hash.
    hashed = [f for f in files if f.is_file()]
    if milvus_file is not None and milvus_file.is_file():
        hashed.append(milvus_file)
    checksums = {str(f.relative_to(paths.root)): sha256_file(f) for f in hashed}

    if missing := [str(f.relative_to(paths.root)) for f in files if not f.is_file()]:
        problems.append(f"missing file(s): {', '.join(missing)}")
    problems += _unexpected_files(paths, build, files)
    feeds = _readable(paths, [paths.feed_part(i, build.user_shards) for i in range(build.user_shards)], problems)
    feeds = [f for f in feeds if _schema_ok(paths, f, FEED_COLUMNS, problems)]
    video_vecs = [paths.video_vectors(i, build.video_shards) for i in range(build.video_shards)]
    user_vecs = [paths.user_vectors(i, build.user_shards) for i in range(build.user_shards)]
    video_vecs = [
        f for f in _readable(paths, video_vecs, problems) if _vector_ok(paths, f, "video_id", build, problems)
    ]
    user_vecs = [f for f in _readable(paths, user_vecs, problems) if _vector_ok(paths, f, "user_id", build, problems)]
    trending = [
        f for f in _readable(paths, [paths.trending_file], problems) if _schema_ok(paths, f, TRENDING_COLUMNS, problems)
    ]

    order_problems = _check_sorted(paths, feeds)
    # The index holds each user's rows together only when the parts are in order, and every row only when no
    # video was left out of it for its id.
    repeats = None
    if index is not None and not order_problems and "videos" not in index.skipped_ids:
        repeats = feed_repeats(index.feeds, len(index.video_ids), EXAMPLES)
    con = duckdb.connect()
    try:
        counts, watermark = check_content(
            con,
            build,
            lake,
            feeds,
            video_vecs,
            user_vecs,
            trending,
            problems,
            ordered=not order_problems,
            repeats=repeats,
            active=active_user_ids(path_settings, build),
        )
    finally:
        con.close()
    counts["catalogue"] = _check_catalogue(paths, build, problems)
    problems += _check_model_and_ranking(path_settings, paths, build, counts)
    problems += _check_experiments(build)
    problems += order_problems
    if require_milvus:
        problems += _check_milvus(path_settings, paths, build, video_vecs)
    for space, space_build in paths.spaces(build)[1:]:
        problems += _check_space(path_settings, paths, space, space_build, counts, require_milvus=require_milvus)
    if problems:
        _refuse(path_settings, paths, problems)

    manifest = Manifest(
        snapshot_id=snapshot_id,
        model_version=build.model_version,
        lake_version=build.lake_version,
        lake_watermark=watermark,
        as_of=build.as_of,
        created_at=build.created_at,
        validated_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        feed_length=build.feed_length,
        embedding_dim=build.embedding_dim,
        video_shards=build.video_shards,
        user_shards=build.user_shards,
        counts=counts,
        checksums=checksums,
        milvus_uri=path_settings.milvus_uri or paths.milvus_lite_file.name,
        milvus_collection=paths.collection_name(path_settings),
        ranker=build.ranker,
    )
    write_bytes_atomic(paths.manifest_file, manifest.to_json().encode())
    log.info("snapshot %s is valid: %s", snapshot_id, counts)
    return manifest


def _unexpected_files(paths: SnapshotPaths, build: BuildInfo, files: list[Path]) -> list[str]:
    # Readers (the warehouse, the API) may glob these folders: a stray shard would be read as data.
    known = set(files)
    folders = [paths.feeds_dir, paths.catalogue_dir, *(space.vectors_dir for space, _ in paths.spaces(build))]
    stray = [
        str(p.relative_to(paths.root))
        for folder in folders
        if folder.is_dir()
        for p in sorted(folder.glob("*.parquet"))
        if p not in known
    ]
    return [f"unexpected file(s) not in {BUILD_FILE}: {', '.join(stray)}"] if stray else []


def _readable(paths: SnapshotPaths, files: list[Path], problems: list[str]) -> list[Path]:
    ok = []
    for f in files:
        if not f.is_file():
            continue
        try:
            pq.read_metadata(f)
        except (pa.ArrowException, OSError) as exc:
            problems.append(f"{f.relative_to(paths.root)} is not a readable Parquet file: {exc}")
            continue
        ok.append(f)
    return ok


def _schema_ok(paths: SnapshotPaths, f: Path, want: dict[str, pa.DataType], problems: list[str]) -> bool:
    schema = pq.read_schema(f)
    have = {name: schema.field(name).type for name in schema.names}
    wrong = [
        f"{name} is {have.get(name, 'absent')}, expected {kind}"
        for name, kind in want.items()
        if have.get(name) != kind
    ]
    if wrong:
        problems.append(f"{f.relative_to(paths.root)} has the wrong schema: {'; '.join(wrong)}")
    return not wrong


def _vector_ok(paths: SnapshotPaths, f: Path, id_column: str, build: BuildInfo, problems: list[str]) -> bool:
    name = str(f.relative_to(paths.root))
    if not _schema_ok(paths, f, {id_column: pa.string(), "vector": pa.list_(pa.float32(), build.embedding_dim)}, []):
        schema = pq.read_schema(f)
        vector = schema.field("vector").type if "vector" in schema.names else "absent"
        problems.append(
            f"{name}: expected {id_column} string and vector fixed_size_list<float>[{build.embedding_dim}] "
            f"(the build's dim), got {schema.names} with vector {vector}"
        )
        return False
    column = pq.read_table(f, columns=["vector"]).column("vector").combine_chunks()
    values = column.flatten()
    if column.null_count or values.null_count:
        problems.append(f"{name}: null vectors or components")
    elif len(values) and not pc.all(pc.is_finite(values)).as_py():
        bad = int(pc.sum(pc.invert(pc.is_finite(values))).as_py())
        problems.append(f"{name}: {bad} non-finite vector component(s)")
    return True


def _check_catalogue(paths: SnapshotPaths, build: BuildInfo, problems: list[str]) -> int:
    """Each catalogue part: its schema, the same video ids in the same order as its vector shard, finite features.

    The vector shards are checked against the lake, so a part that matches its shard row for row covers every video
    of the lake version once; the API then needs nothing but the snapshot. Returns the rows checked.
    """
    rows = 0
    for shard in range(build.video_shards):
        part, vectors = paths.catalogue_part(shard, build.video_shards), paths.video_vectors(shard, build.video_shards)
        if not _readable(paths, [part], problems) or not _schema_ok(paths, part, CATALOGUE_COLUMNS, problems):
            continue
        name = str(part.relative_to(paths.root))
        table = pq.read_table(part)
        rows += table.num_rows
        for column in (CATALOGUE_TEXT, CATALOGUE_DENSE):
            kind = table.schema.field(column).type if column in table.schema.names else None
            if not (pa.types.is_fixed_size_list(kind) and kind.value_type == pa.float32()):
                problems.append(f"{name}: {column} is {kind or 'absent'}, expected fixed_size_list<float>")
            elif _non_finite(table.column(column).combine_chunks()):
                problems.append(f"{name}: null or non-finite {column} values")
        if vectors.is_file() and _readable(paths, [vectors], []):
            ids = pq.read_table(vectors, columns=[VIDEO_ID]).column(0)
            if not table.column(VIDEO_ID).equals(ids):
                problems.append(f"{name} does not list the videos of {vectors.name} row for row")
        nulls = sum(table.column(c).null_count for c in CATALOGUE_COLUMNS)
        if nulls:
            problems.append(f"{name}: {nulls} null value(s)")
    return rows


def _check_model_and_ranking(
    path_settings: PathSettings, paths: SnapshotPaths, build: BuildInfo, counts: dict[str, int]
) -> list[str]:
    """The model copy loads, and when build.json says the ranker is applied, its files and state read back whole
    and are the ranker it names: serving would otherwise fail on them, or rank with something else."""
    problems = []
    present = [f for f in expected_files(paths, build) if f.is_file()]
    if build.model_files and all(paths.model_dir / build.model_version / n in present for n in build.model_files):
        try:
            load_snapshot_model(path_settings, paths, build)
        except Exception as exc:  # any reason it cannot load refuses the snapshot, with the reason
            problems.append(f"the model copy under {paths.model_dir.name}/ does not load: {exc}")
    if not build.ranker_applied or not all(paths.rank_dir / name in present for name in RANK_FILES):
        return problems  # missing files are reported with the rest
    try:
        ranker, state = read_ranking(paths.rank_dir)
    except SnapshotError as exc:
        return [*problems, f"{BUILD_FILE} says the ranker is applied, but {exc}"]
    record = build.ranker or {}
    if (ranker.config.objective, ranker.n_candidates) != (record.get("objective"), record.get("n_candidates")):
        problems.append(
            f"the ranker in {paths.rank_dir.name}/ is {ranker.config.objective} over {ranker.n_candidates} "
            f"candidates; {BUILD_FILE} records {record.get('objective')} over {record.get('n_candidates')}"
        )
    if (paths.rank_dir / SERVE_DIR).is_dir():
        try:
            problems += rank_arrays_problems(paths.rank_dir)
        except SnapshotError as exc:
            problems.append(f"{BUILD_FILE} says the ranker is applied, but {exc}")
    if state.state.t_ms != as_of_ms(build):
        problems.append(f"the ranking state is as of {state.state.t_ms}, not the build's as-of {build.as_of}")
    counts["ranker_users"], counts["ranker_videos"] = len(state.user_ids), len(state.video_ids)
    return problems


def _non_finite(column: pa.FixedSizeListArray) -> bool:
    values = column.flatten()
    return bool(column.null_count or values.null_count or (len(values) and not pc.all(pc.is_finite(values)).as_py()))


def _check_sorted(paths: SnapshotPaths, feeds: list[Path]) -> list[str]:
    """Rows in (user_id, rank) order inside each part, and parts in user order (the API indexes by offset)."""
    problems: list[str] = []
    previous_last: str | None = None
    for part in feeds:  # in shard order
        table = pq.read_table(part, columns=["user_id", "rank"])
        if table.num_rows == 0:
            continue
        users, ranks = table["user_id"].combine_chunks(), table["rank"].combine_chunks()
        if users.null_count or ranks.null_count:
            continue  # reported as nulls already
        if table.num_rows > 1:
            a_users, b_users = users[:-1], users[1:]
            same = pc.equal(b_users, a_users)
            ordered = pc.or_(pc.greater(b_users, a_users), pc.and_(same, pc.greater(ranks[1:], ranks[:-1])))
            if not pc.all(ordered).as_py():
                bad = int(pc.sum(pc.invert(ordered)).as_py())
                problems.append(
                    f"{part.relative_to(paths.root)} is not sorted by (user_id, rank): {bad} row(s) out of order"
                )
        if previous_last is not None and users[0].as_py() <= previous_last:
            problems.append(f"{part.relative_to(paths.root)} starts at a user not after the previous part's last one")
        previous_last = users[-1].as_py()
    return problems


def _check_space(
    path_settings: PathSettings,
    paths: SnapshotPaths,
    space: SnapshotPaths,
    build: BuildInfo,
    counts: dict[str, int],
    *,
    require_milvus: bool,
) -> list[str]:
    """Another model version's space: vectors of exactly the build's videos, its users' vectors, its model copy and
    ranker, its collection."""
    problems: list[str] = []
    root = [paths.video_vectors(i, build.video_shards) for i in range(build.video_shards)]
    video_vecs = [space.video_vectors(i, build.video_shards) for i in range(build.video_shards)]
    user_vecs = [space.user_vectors(i, build.user_shards) for i in range(build.user_shards)]
    video_vecs = [
        f for f in _readable(space, video_vecs, problems) if _vector_ok(space, f, "video_id", build, problems)
    ]
    user_vecs = [f for f in _readable(space, user_vecs, problems) if _vector_ok(space, f, "user_id", build, problems)]
    for mine, theirs in zip(video_vecs, root, strict=False):
        if theirs.is_file() and not pq.read_table(mine, columns=[VIDEO_ID]).column(0).equals(
            pq.read_table(theirs, columns=[VIDEO_ID]).column(0)
        ):
            problems.append(f"{mine.relative_to(paths.root)} does not list the videos of {theirs.name} row for row")
    version = build.model_version
    counts[f"videos@{version}"] = sum(pq.read_metadata(f).num_rows for f in video_vecs)
    counts[f"users@{version}"] = sum(pq.read_metadata(f).num_rows for f in user_vecs)
    problems += _check_model_and_ranking(path_settings, space, build, {})
    if require_milvus:
        problems += _check_milvus(path_settings, space, build, video_vecs)
    return problems


def _check_milvus(
    path_settings: PathSettings, paths: SnapshotPaths, build: BuildInfo, video_vecs: list[Path]
) -> list[str]:
    if not path_settings.milvus_uri:
        # The Lite file is a SQLite database only a Milvus Lite server may open (and lock); opening it here
        # would cost seconds and race the loader. jobs.load_vectors checks its row count when writing it.
        if not paths.milvus_lite_file.is_file():
            hint = f"run `python -m jobs.load_vectors --snapshot {build.snapshot_id}`"
            return [f"{paths.milvus_lite_file.name} missing: {hint}"]
        return []
    from rec_core.snapshot.vector_store import VectorStore  # pymilvus is slow to import: only in server mode

    collection, uri = paths.collection_name(path_settings), path_settings.milvus_uri
    try:
        with VectorStore(uri, collection, build.embedding_dim) as store:
            if not store.exists():
                return [f"Milvus collection {collection} is absent at {uri}"]
            count = store.count()
    except Exception as exc:  # any failure to reach the server refuses the snapshot, with the reason
        return [f"cannot check Milvus collection {collection} at {uri}: {exc}"]
    # jobs.load_vectors skips (and reports) ids Milvus cannot hold; they are not missing vectors.
    videos = sum(
        is_valid_id(v) for f in video_vecs for v in pq.read_table(f, columns=["video_id"]).column(0).to_pylist()
    )
    return [] if count == videos else [f"Milvus collection {collection} holds {count} vectors, expected {videos}"]


def _refuse(path_settings: PathSettings, paths: SnapshotPaths, problems: list[str]) -> None:
    snapshot_id = paths.snapshot_id
    # A stale manifest from an earlier, successful validation must not let the damaged snapshot through
    # (the live one keeps its manifest: readers and rollback bookkeeping use it; publish re-hashes anyway).
    if paths.manifest_file.is_file() and snapshot_id != live_snapshot_id(path_settings):
        paths.manifest_file.unlink()
    for problem in problems:
        log.error("snapshot %s: %s", snapshot_id, problem)
    raise SnapshotError(
        f"snapshot {snapshot_id} refused ({len(problems)} problem(s)):\n" + "\n".join(f"  - {p}" for p in problems)
    )


def validate_stage(settings: Settings, snapshot_id: str) -> dict[str, Any]:
    """The ``validate`` stage: validate and write the manifest; returns it as a dict (Airflow passes it on as XCom)."""
    return dataclasses.asdict(validate_snapshot(settings.paths, snapshot_id))
