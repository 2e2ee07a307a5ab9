"""Validating, publishing, pruning and rolling back feed snapshots (docs/architecture.md, invariant 3).

The protocol, in the order it runs:

1. :func:`validate_snapshot` hashes every file of a built snapshot, then checks
   its content against the lake version it was built from (files present,
   schemas, row counts, no duplicate (user, rank) or (user, video), ranks
   contiguous from 0, feeds sorted, every video known, scores and vectors
   finite, every user covered, trending sane, the Milvus collection there) and
   writes ``manifest.json`` atomically. Hashing FIRST means a file changed while
   it was being checked no longer matches its manifest, so publish refuses it.
   A failing snapshot raises :class:`SnapshotError` listing every reason.
2. :func:`publish` re-hashes the files against the manifest and then makes the
   snapshot live with ONE atomic rename of ``snapshots/LIVE``. Only after that
   rename does it append to ``snapshots/history.json`` and prune. Killed before
   the rename, nothing a reader looks at has changed (a stray temp file at most);
   killed after it, the new snapshot is live and whole, and the next publish,
   rollback or prune appends the missing history entry (``LIVE`` is the truth,
   the history a log of it).
3. Pruning keeps the ``snapshots_keep`` most recently published snapshots plus
   the live one. A doomed folder is first renamed to ``.trash-<id>`` (so no
   reader or rollback can pick up a half-deleted snapshot), its Milvus server
   collection dropped, then the folder removed; a kill in between leaves a trash
   folder the next prune finishes. Folders never published are left alone while
   anything in them is younger than ``abandoned_after`` (a build in progress),
   and removed once older (an abandoned build).
4. :func:`rollback` makes the most recent earlier snapshot live again, skipping
   snapshots that were themselves rolled back from (rolling back twice never
   returns to the bad one).

Publish, rollback and prune hold an exclusive lock on ``snapshots/.lock`` so two
publishers cannot interleave; validation needs none (it writes only inside its
own snapshot folder).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rec_core.atomic import write_bytes_atomic
from rec_core.ids import is_valid_id
from rec_core.settings import Settings
from rec_core.snapshot.files import FEED_SCHEMA, TRENDING_SCHEMA, columns_of
from rec_core.snapshot.layout import (
    BUILD_FILE,
    LIVE_POINTER,
    MANIFEST_FILE,
    SNAPSHOT_ID,
    BuildInfo,
    SnapshotError,
    SnapshotPaths,
    live_snapshot_id,
    snapshot_paths,
)

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
LOCK_FILE = ".lock"
TRASH_PREFIX = ".trash-"
# A never-published folder untouched for this long is an abandoned build, not one in progress.
ABANDONED_AFTER = dt.timedelta(days=1)
EXAMPLES = 3  # offending values quoted per refusal reason

FEED_COLUMNS = columns_of(FEED_SCHEMA)
TRENDING_COLUMNS = columns_of(TRENDING_SCHEMA)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What validation found; ``checksums`` maps paths relative to the snapshot folder to sha256."""

    snapshot_id: str
    model_version: str
    lake_version: str
    lake_watermark: str | None  # newest interaction time in the lake version the snapshot was built from
    as_of: str
    created_at: str
    validated_at: str
    feed_length: int
    embedding_dim: int
    video_shards: int
    user_shards: int
    counts: dict[str, int]
    checksums: dict[str, str]
    milvus_uri: str  # a server URL, or the Lite file relative to the snapshot folder ("milvus.db")
    milvus_collection: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        return cls(**{f.name: raw[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class PublishResult:
    snapshot_id: str
    previous: str | None  # the snapshot live before; None on the first publish
    changed: bool  # False when the snapshot was live already (publishing is idempotent)
    published_at: str | None
    model_version: str
    pruned: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One snapshot folder, for humans (``python -m jobs.publish --list``)."""

    snapshot_id: str
    state: str  # live | published | validated | building
    live: bool
    published_at: str | None  # last time it became live
    model_version: str | None
    counts: dict[str, int]


# ---- validation -----------------------------------------------------------------------------------------------------


def expected_files(paths: SnapshotPaths, build: BuildInfo) -> list[Path]:
    """Every data file the build promises (absolute), in a stable order."""
    files = [paths.build_file, paths.trending_file]
    files += [paths.video_vectors(i, build.video_shards) for i in range(build.video_shards)]
    files += [paths.user_vectors(i, build.user_shards) for i in range(build.user_shards)]
    files += [paths.feed_part(i, build.user_shards) for i in range(build.user_shards)]
    return files


def validate_snapshot(settings: Settings, snapshot_id: str, *, require_milvus: bool = True) -> Manifest:
    """Check a built snapshot and write its manifest; raise :class:`SnapshotError` listing every problem.

    ``require_milvus=False`` skips the Milvus check (for snapshots built without ``load_vectors``).
    """
    paths = snapshot_paths(settings, snapshot_id)
    build = paths.read_build()
    if build.snapshot_id != snapshot_id:
        _refuse(settings, paths, [f"{BUILD_FILE} names snapshot {build.snapshot_id!r}"])
    lake_dir = settings.lake_dir / build.lake_version
    lake = {t: lake_dir / f"{t}.parquet" for t in ("videos", "users", "interactions")}
    if absent := [t for t, p in lake.items() if not p.is_file()]:
        _refuse(
            settings,
            paths,
            [
                f"lake version {build.lake_version} it was built from lacks {', '.join(absent)} "
                f"(pruned? REC_LAKE_VERSIONS_KEEP={settings.lake_versions_keep}); build a new snapshot"
            ],
        )
    files = expected_files(paths, build)
    milvus_file = paths.milvus_lite_file if not settings.milvus_uri else None
    # Hash before checking: a file rewritten during the checks then fails publish's re-hash.
    hashed = [f for f in files if f.is_file()]
    if milvus_file is not None and milvus_file.is_file():
        hashed.append(milvus_file)
    checksums = {str(f.relative_to(paths.root)): sha256_file(f) for f in hashed}

    problems: list[str] = []
    if missing := [str(f.relative_to(paths.root)) for f in files if not f.is_file()]:
        problems.append(f"missing file(s): {', '.join(missing)}")
    problems += _unexpected_files(paths, files)
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

    con = duckdb.connect()
    try:
        counts, watermark = _check_content(con, build, lake, feeds, video_vecs, user_vecs, trending, problems)
    finally:
        con.close()
    problems += _check_sorted(paths, feeds)
    if require_milvus:
        problems += _check_milvus(settings, paths, build, video_vecs)
    if problems:
        _refuse(settings, paths, problems)

    manifest = Manifest(
        snapshot_id=snapshot_id,
        model_version=build.model_version,
        lake_version=build.lake_version,
        lake_watermark=watermark,
        as_of=build.as_of,
        created_at=build.created_at,
        validated_at=_now(),
        feed_length=build.feed_length,
        embedding_dim=build.embedding_dim,
        video_shards=build.video_shards,
        user_shards=build.user_shards,
        counts=counts,
        checksums=checksums,
        milvus_uri=settings.milvus_uri or paths.milvus_lite_file.name,
        milvus_collection=paths.collection_name(settings),
    )
    write_bytes_atomic(paths.manifest_file, manifest.to_json().encode())
    log.info("snapshot %s is valid: %s", snapshot_id, counts)
    return manifest


def _unexpected_files(paths: SnapshotPaths, files: list[Path]) -> list[str]:
    # Readers (the warehouse, the API) may glob these folders: a stray shard would be read as data.
    known = set(files)
    stray = [
        str(p.relative_to(paths.root))
        for folder in (paths.feeds_dir, paths.vectors_dir)
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


def _parquet(files: list[Path]) -> str:
    return "read_parquet([" + ", ".join(_sql_str(f) for f in files) + "], filename=true)"


def _check_content(
    con: duckdb.DuckDBPyConnection,
    build: BuildInfo,
    lake: dict[str, Path],
    feeds: list[Path],
    video_vecs: list[Path],
    user_vecs: list[Path],
    trending: list[Path],
    problems: list[str],
) -> tuple[dict[str, int], str | None]:
    """Row counts and every content rule, one DuckDB pass per concern; appends to ``problems``."""

    def one(sql: str) -> Any:
        return con.execute(sql).fetchone()

    def examples(sql: str) -> str:
        rows = con.execute(f"{sql} LIMIT {EXAMPLES}").fetchall()
        return ", ".join(str(r[0] if len(r) == 1 else tuple(r)) for r in rows)

    as_of = _sql_str(build.as_of)
    con.execute(
        f"CREATE TEMP TABLE lake_videos AS SELECT DISTINCT video_id FROM read_parquet({_sql_str(lake['videos'])})"
    )
    # The users a build must cover: the users table plus anyone seen in interactions before as-of
    # (rec_core.model.inference.all_user_ids cuts user shards over exactly this set).
    con.execute(
        f"CREATE TEMP TABLE lake_users AS SELECT user_id FROM read_parquet({_sql_str(lake['users'])}) UNION "
        f"SELECT user_id FROM read_parquet({_sql_str(lake['interactions'])}) WHERE ts < {as_of}::TIMESTAMPTZ"
    )
    watermark_ms = one(f"SELECT epoch_ms(max(ts)) FROM read_parquet({_sql_str(lake['interactions'])})")[0]
    counts = {
        "videos": one("SELECT count(*) FROM lake_videos")[0],
        "lake_users": one("SELECT count(*) FROM lake_users")[0],
    }

    if feeds:
        src = _parquet(feeds)
        con.execute(
            f"CREATE TEMP TABLE per_user AS SELECT user_id, count(*) AS n, min(rank) AS lo, max(rank) AS hi, "
            f"count(DISTINCT rank) AS ranks, count(DISTINCT video_id) AS vids, count(DISTINCT filename) AS parts "
            f"FROM {src} GROUP BY user_id"
        )
        rows, nulls, nonfinite, no_reason, unknown, distinct_videos = one(
            f"SELECT count(*), count(*) FILTER (WHERE f.user_id IS NULL OR f.rank IS NULL OR f.video_id IS NULL "
            f"OR f.score IS NULL), count(*) FILTER (WHERE NOT isfinite(f.score)), "
            f"count(*) FILTER (WHERE f.reason IS NULL OR f.reason = ''), "
            f"count(*) FILTER (WHERE v.video_id IS NULL AND f.video_id IS NOT NULL), count(DISTINCT f.video_id) "
            f"FROM {src} f LEFT JOIN lake_videos v USING (video_id)"
        )
        per_user = one(
            "SELECT count(*), coalesce(sum(n - ranks), 0), coalesce(sum(n - vids), 0), "
            "count(*) FILTER (WHERE lo <> 0 OR hi <> n - 1 OR ranks <> n), count(*) FILTER (WHERE parts > 1), "
            f"count(*) FILTER (WHERE n > {build.feed_length}), min(n), max(n) FROM per_user WHERE user_id IS NOT NULL"
        )
        users, dup_ranks, dup_videos, gaps, split, too_long, shortest, longest = per_user
        counts |= {
            "feed_rows": rows,
            "feed_users": users,
            "feed_videos": distinct_videos,
            "feed_min_length": shortest or 0,
            "feed_max_length": longest or 0,
        }
        if dup_ranks:
            problems.append(
                f"duplicate (user_id, rank): {dup_ranks} extra row(s), e.g. user "
                + examples("SELECT user_id FROM per_user WHERE ranks < n ORDER BY user_id")
            )
        if dup_videos:
            problems.append(
                f"duplicate (user_id, video_id): {dup_videos} extra row(s), e.g. user "
                + examples("SELECT user_id FROM per_user WHERE vids < n ORDER BY user_id")
            )
        if gaps:
            problems.append(
                f"ranks not contiguous from 0 for {gaps} user(s), e.g. "
                + examples("SELECT user_id FROM per_user WHERE lo <> 0 OR hi <> n - 1 OR ranks <> n ORDER BY user_id")
            )
        if split:
            problems.append(f"{split} user(s) appear in more than one feed part")
        if too_long:
            problems.append(f"{too_long} feed(s) longer than the build's feed_length {build.feed_length}")
        if nulls:
            problems.append(f"{nulls} feed row(s) with a null user_id, rank, video_id or score")
        if nonfinite:
            problems.append(f"non-finite scores (NaN or infinite): {nonfinite} feed row(s)")
        if no_reason:
            problems.append(f"{no_reason} feed row(s) without a reason")
        if unknown:
            problems.append(
                f"unknown video ids in feeds (not in lake {build.lake_version}): {unknown} row(s), e.g. "
                + examples(f"SELECT DISTINCT video_id FROM {src} ANTI JOIN lake_videos USING (video_id) ORDER BY 1")
            )
        missing_users = one("SELECT count(*) FROM lake_users ANTI JOIN per_user USING (user_id)")[0]
        if missing_users:
            problems.append(
                f"users without a feed: {missing_users} of {counts['lake_users']}, e.g. "
                + examples("SELECT user_id FROM lake_users ANTI JOIN per_user USING (user_id) ORDER BY 1")
            )
        strangers = one("SELECT count(*) FROM per_user ANTI JOIN lake_users USING (user_id)")[0]
        if strangers:
            problems.append(
                f"feeds for {strangers} user(s) unknown to the lake, e.g. "
                + examples("SELECT user_id FROM per_user ANTI JOIN lake_users USING (user_id) ORDER BY 1")
            )
    else:
        counts |= {"feed_rows": 0, "feed_users": 0, "feed_videos": 0}
        problems.append(f"users without a feed: all {counts['lake_users']} (no readable feed part)")

    for kind, files, id_column, table in (
        ("video", video_vecs, "video_id", "lake_videos"),
        ("user", user_vecs, "user_id", "lake_users"),
    ):
        if not files:
            counts[f"{kind}_vectors"] = 0
            problems.append(f"no readable {kind} vectors")
            continue
        src = f"(SELECT {id_column} FROM {_parquet(files)})"
        n, distinct = one(f"SELECT count(*), count(DISTINCT {id_column}) FROM {src}")
        counts[f"{kind}_vectors"] = n
        expected = counts["videos" if kind == "video" else "lake_users"]
        if n != expected:
            problems.append(f"{n} {kind} vectors for {expected} {kind}s in lake {build.lake_version}")
        if distinct != n:
            problems.append(f"{n - distinct} duplicate {kind} id(s) in the {kind} vectors")
        if unknown := one(f"SELECT count(*) FROM {src} ANTI JOIN {table} USING ({id_column})")[0]:
            problems.append(
                f"{unknown} {kind} vector(s) for ids unknown to the lake, e.g. "
                + examples(f"SELECT {id_column} FROM {src} ANTI JOIN {table} USING ({id_column}) ORDER BY 1")
            )
        if lacking := one(f"SELECT count(*) FROM {table} ANTI JOIN {src} USING ({id_column})")[0]:
            problems.append(f"{lacking} {kind}(s) of the lake have no vector")

    if trending:
        rows, lo, hi, ranks, vids, bad_score, unknown, misordered = one(
            "SELECT count(*), min(rank), max(rank), count(DISTINCT rank), count(DISTINCT t.video_id), "
            "count(*) FILTER (WHERE score IS NULL OR NOT isfinite(score)), "
            "count(*) FILTER (WHERE v.video_id IS NULL), "
            "count(*) FILTER (WHERE rank <> file_row_number) "
            f"FROM read_parquet({_sql_str(trending[0])}, file_row_number=true) t "
            "LEFT JOIN lake_videos v USING (video_id)"
        )
        counts["trending"] = rows
        if rows == 0:
            problems.append("trending.parquet is empty")
        elif lo != 0 or hi != rows - 1 or ranks != rows:
            problems.append("trending ranks are not contiguous from 0")
        elif misordered:
            problems.append("trending.parquet is not sorted by rank")
        if vids != rows:
            problems.append(f"trending has {rows - vids} duplicate video id(s)")
        if bad_score:
            problems.append(f"trending has {bad_score} null or non-finite score(s)")
        if unknown:
            problems.append(f"trending has {unknown} video id(s) unknown to the lake")
    else:
        counts["trending"] = 0
        problems.append("trending list missing or unreadable")
    if watermark_ms is None:
        return counts, None
    return counts, dt.datetime.fromtimestamp(watermark_ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


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


def _check_milvus(settings: Settings, paths: SnapshotPaths, build: BuildInfo, video_vecs: list[Path]) -> list[str]:
    if not settings.milvus_uri:
        # The Lite file is a SQLite database only a Milvus Lite server may open (and lock); opening it here
        # would cost seconds and race the loader. jobs.load_vectors checks its row count when writing it.
        if not paths.milvus_lite_file.is_file():
            hint = f"run `python -m jobs.load_vectors --snapshot {build.snapshot_id}`"
            return [f"{paths.milvus_lite_file.name} missing: {hint}"]
        return []
    from rec_core.snapshot.vector_store import VectorStore  # pymilvus is slow to import: only in server mode

    collection = paths.collection_name(settings)
    try:
        with VectorStore(settings.milvus_uri, collection, build.embedding_dim) as store:
            if not store.exists():
                return [f"Milvus collection {collection} is absent at {settings.milvus_uri}"]
            count = store.count()
    except Exception as exc:  # any failure to reach the server refuses the snapshot, with the reason
        return [f"cannot check Milvus collection {collection} at {settings.milvus_uri}: {exc}"]
    # jobs.load_vectors skips (and reports) ids Milvus cannot hold; they are not missing vectors.
    videos = sum(
        is_valid_id(v) for f in video_vecs for v in pq.read_table(f, columns=["video_id"]).column(0).to_pylist()
    )
    return [] if count == videos else [f"Milvus collection {collection} holds {count} vectors, expected {videos}"]


def _refuse(settings: Settings, paths: SnapshotPaths, problems: list[str]) -> None:
    snapshot_id = paths.snapshot_id
    # A stale manifest from an earlier, successful validation must not let the damaged snapshot through
    # (the live one keeps its manifest: readers and rollback bookkeeping use it; publish re-hashes anyway).
    if paths.manifest_file.is_file() and snapshot_id != live_snapshot_id(settings):
        paths.manifest_file.unlink()
    for problem in problems:
        log.error("snapshot %s: %s", snapshot_id, problem)
    raise SnapshotError(
        f"snapshot {snapshot_id} refused ({len(problems)} problem(s)):\n" + "\n".join(f"  - {p}" for p in problems)
    )


# ---- publishing -----------------------------------------------------------------------------------------------------


def read_manifest(paths: SnapshotPaths) -> Manifest:
    if not paths.manifest_file.is_file():
        raise SnapshotError(
            f"snapshot {paths.snapshot_id} has not been validated (no {MANIFEST_FILE}): "
            f"run `python -m jobs.publish --validate-only --snapshot {paths.snapshot_id}`"
        )
    try:
        return Manifest.from_json(paths.manifest_file.read_text())
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot {paths.snapshot_id} has a malformed {MANIFEST_FILE}: {exc}") from None


def verify_checksums(paths: SnapshotPaths, manifest: Manifest, *, skip: frozenset[str] = frozenset()) -> list[str]:
    """Files that are missing or differ from the manifest (names relative to the snapshot), empty when intact."""
    build = paths.read_build()
    bad = [
        f"{rel} (not covered by the manifest)"
        for rel in (str(f.relative_to(paths.root)) for f in expected_files(paths, build))
        if rel not in manifest.checksums
    ]
    for rel, digest in sorted(manifest.checksums.items()):
        if rel in skip:
            continue
        path = paths.root / rel
        if not path.is_file():
            bad.append(f"{rel} (missing)")
        elif sha256_file(path) != digest:
            bad.append(f"{rel} (checksum mismatch)")
    return bad


def publish(settings: Settings, snapshot_id: str, *, abandoned_after: dt.timedelta = ABANDONED_AFTER) -> PublishResult:
    """Make a validated snapshot live with one atomic pointer change, record it, then prune.

    Idempotent: publishing the live snapshot again changes nothing (beyond repairing a history
    entry a killed publish did not get to write).
    """
    paths = snapshot_paths(settings, snapshot_id)
    with _locked(settings):
        live = _recover(settings)
        if live == snapshot_id:
            entry = _history(settings)[-1]
            return PublishResult(snapshot_id, live, False, entry.get("published_at"), entry.get("model_version", ""))
        if not paths.root.is_dir():
            raise SnapshotError(f"no snapshot {snapshot_id} under {settings.snapshots_dir}")
        manifest = read_manifest(paths)
        if manifest.snapshot_id != snapshot_id:
            raise SnapshotError(f"snapshot {snapshot_id}: its manifest names {manifest.snapshot_id}")
        published_before = any(e["snapshot_id"] == snapshot_id for e in _history(settings))
        _verify_or_refuse(settings, paths, manifest, lenient_milvus=published_before)
        entry = _swap(settings, snapshot_id, manifest.model_version, action="publish", previous=live)
        pruned = _prune(settings, abandoned_after)
    log.info("snapshot %s is live (previous: %s); pruned %s", snapshot_id, live, pruned or "nothing")
    return PublishResult(snapshot_id, live, True, entry["published_at"], manifest.model_version, pruned)


def rollback(settings: Settings) -> str:
    """Make the previously published snapshot live again (atomically); returns its id."""
    with _locked(settings):
        live = _recover(settings)
        if live is None:
            raise SnapshotError("nothing has been published yet: there is nothing to roll back")
        history = _history(settings)
        target = _rollback_target(settings, history, live)
        if target is None:
            kept = [s.snapshot_id for s in list_snapshots(settings) if s.state == "published"]
            raise SnapshotError(
                f"no earlier published snapshot to roll back to from {live} "
                f"(kept and not rolled back from: {kept or 'none'}); publish one with --snapshot ID"
            )
        paths = snapshot_paths(settings, target)
        manifest = read_manifest(paths)
        _verify_or_refuse(settings, paths, manifest, lenient_milvus=True)
        _swap(settings, target, manifest.model_version, action="rollback", previous=live)
    log.warning("rolled back from %s to %s", live, target)
    return target


def prune(settings: Settings, *, abandoned_after: dt.timedelta = ABANDONED_AFTER) -> list[str]:
    """Delete what publishing no longer needs (see the module doc); returns the snapshot ids removed."""
    with _locked(settings):
        _recover(settings)
        return _prune(settings, abandoned_after)


def live_snapshot(settings: Settings) -> SnapshotPaths | None:
    """The live snapshot's folder, or None before the first publish."""
    live = live_snapshot_id(settings)
    if live is None:
        return None
    paths = snapshot_paths(settings, live)
    if not paths.root.is_dir():
        raise SnapshotError(f"{LIVE_POINTER} names snapshot {live}, whose folder is missing")
    return paths


def list_snapshots(settings: Settings) -> list[SnapshotInfo]:
    """Every snapshot folder, oldest first, with its state; read-only."""
    root = settings.snapshots_dir
    if not root.is_dir():
        return []
    live = live_snapshot_id(settings)
    last: dict[str, dict] = {e["snapshot_id"]: e for e in _history(settings)}
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and SNAPSHOT_ID.match(p.name)):
        paths = SnapshotPaths(folder)
        manifest = _try_manifest(paths)
        entry = last.get(folder.name)
        if folder.name == live:
            state = "live"
        elif entry is not None:
            state = "published"
        else:
            state = "validated" if manifest is not None else "building"
        model = entry.get("model_version") if entry else (manifest.model_version if manifest else None)
        if model is None and paths.build_file.is_file():
            model = paths.read_build().model_version
        out.append(
            SnapshotInfo(
                snapshot_id=folder.name,
                state=state,
                live=folder.name == live,
                published_at=entry.get("published_at") if entry else None,
                model_version=model,
                counts=manifest.counts if manifest else {},
            )
        )
    return out


def read_history(settings: Settings) -> list[dict]:
    """The publish log, oldest first: snapshot_id, published_at, model_version, action, previous."""
    return _history(settings)


# ---- internals ------------------------------------------------------------------------------------------------------


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    settings.snapshots_dir.mkdir(parents=True, exist_ok=True)
    with (settings.snapshots_dir / LOCK_FILE).open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _verify_or_refuse(settings: Settings, paths: SnapshotPaths, manifest: Manifest, *, lenient_milvus: bool) -> None:
    # A Lite file that has been live was opened by the API's Milvus Lite, which rewrites SQLite pages: its bytes
    # legitimately differ from validation time, so once published it is only required to exist.
    skip = frozenset({paths.milvus_lite_file.name}) if lenient_milvus else frozenset()
    if bad := verify_checksums(paths, manifest, skip=skip):
        _refuse_publish(paths.snapshot_id, [f"changed since validation: {', '.join(bad)}"])
    lite = not settings.milvus_uri and manifest.milvus_uri == paths.milvus_lite_file.name
    if lite and not paths.milvus_lite_file.is_file():
        _refuse_publish(paths.snapshot_id, [f"{paths.milvus_lite_file.name} missing"])


def _refuse_publish(snapshot_id: str, problems: list[str]) -> None:
    for problem in problems:
        log.error("snapshot %s not published: %s", snapshot_id, problem)
    raise SnapshotError(f"snapshot {snapshot_id} refused: " + "; ".join(problems))


def _swap(settings: Settings, snapshot_id: str, model_version: str, *, action: str, previous: str | None) -> dict:
    """THE visible change (one rename), then its log entry."""
    write_bytes_atomic(settings.snapshots_dir / LIVE_POINTER, f"{snapshot_id}\n".encode())
    entry = {
        "snapshot_id": snapshot_id,
        "published_at": _now(),
        "model_version": model_version,
        "action": action,
        "previous": previous,
    }
    _write_history(settings, [*_history(settings), entry])
    return entry


def _recover(settings: Settings) -> str | None:
    """Finish what a killed publish/prune left (call under the lock); returns the live id."""
    root = settings.snapshots_dir
    for tmp in root.glob(f".{LIVE_POINTER}.*.tmp"):
        tmp.unlink(missing_ok=True)
    for tmp in root.glob(f".{HISTORY_FILE}.*.tmp"):
        tmp.unlink(missing_ok=True)
    for trash in sorted(root.glob(f"{TRASH_PREFIX}*")):
        _remove_trash(settings, trash)
    live = live_snapshot_id(settings)
    history = _history(settings)
    if live is not None and (not history or history[-1]["snapshot_id"] != live):
        # Killed between the pointer rename and the history write: LIVE is the truth, log it now.
        manifest = _try_manifest(SnapshotPaths(root / live))
        when = dt.datetime.fromtimestamp((root / LIVE_POINTER).stat().st_mtime, dt.UTC)
        history.append(
            {
                "snapshot_id": live,
                "published_at": when.isoformat(timespec="seconds"),
                "model_version": manifest.model_version if manifest else None,
                "action": "recovered",
                "previous": history[-1]["snapshot_id"] if history else None,
            }
        )
        _write_history(settings, history)
        log.warning("history.json lacked the live snapshot %s (a publish was killed after its swap); added", live)
    return live


def _rollback_target(settings: Settings, history: list[dict], live: str) -> str | None:
    # A snapshot rolled back FROM is bad until someone publishes it again explicitly.
    retired: set[str] = set()
    for entry in history:
        if entry.get("action") == "rollback" and entry.get("previous"):
            retired.add(entry["previous"])
        elif entry.get("action", "publish") == "publish":
            retired.discard(entry["snapshot_id"])
    seen: set[str] = set()
    for entry in reversed(history):
        sid = entry["snapshot_id"]
        if sid in seen or sid == live or sid in retired:
            continue
        seen.add(sid)
        paths = SnapshotPaths(settings.snapshots_dir / sid)
        if paths.manifest_file.is_file():
            return sid
    return None


def _prune(settings: Settings, abandoned_after: dt.timedelta) -> list[str]:
    root = settings.snapshots_dir
    live = live_snapshot_id(settings)
    keep: list[str] = []
    for entry in reversed(_history(settings)):
        if entry["snapshot_id"] not in keep:
            keep.append(entry["snapshot_id"])
    keep = keep[: settings.snapshots_keep]
    published = {e["snapshot_id"] for e in _history(settings)}
    now = dt.datetime.now(dt.UTC).timestamp()
    doomed = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and SNAPSHOT_ID.match(p.name)):
        name = folder.name
        if name == live or name in keep:
            continue
        if name not in published and now - _newest_mtime(folder) < abandoned_after.total_seconds():
            continue  # never published and recently touched: a build in progress (or awaiting publish)
        doomed.append(name)
    for name in doomed:
        if name not in published:
            log.warning("removing abandoned snapshot %s (untouched for over %s)", name, abandoned_after)
        trash = root / f"{TRASH_PREFIX}{name}"
        os.replace(root / name, trash)  # atomic: from here on no reader or rollback can pick it
        _remove_trash(settings, trash)
    return doomed


def _remove_trash(settings: Settings, trash: Path) -> None:
    snapshot_id = trash.name[len(TRASH_PREFIX) :]
    if settings.milvus_uri and SNAPSHOT_ID.match(snapshot_id):
        try:
            _drop_collection(settings, snapshot_id)
        except Exception as exc:  # keep the trash folder so the next prune retries the drop
            log.warning("could not drop the Milvus collection of %s (will retry): %s", snapshot_id, exc)
            return
    shutil.rmtree(trash, ignore_errors=True)


def _drop_collection(settings: Settings, snapshot_id: str) -> None:
    from rec_core.snapshot.vector_store import open_client  # pymilvus is slow to import: only in server mode

    name = SnapshotPaths(settings.snapshots_dir / snapshot_id).collection_name(settings)
    client = open_client(settings.milvus_uri)
    try:
        if client.has_collection(name):
            client.drop_collection(name)
            log.info("dropped Milvus collection %s", name)
    finally:
        client.close()


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                newest = max(newest, (Path(dirpath) / name).stat().st_mtime)
            except FileNotFoundError:
                continue
    return newest


def _history(settings: Settings) -> list[dict]:
    path = settings.snapshots_dir / HISTORY_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def _write_history(settings: Settings, history: list[dict]) -> None:
    write_bytes_atomic(settings.snapshots_dir / HISTORY_FILE, json.dumps(history, indent=2).encode())


def _try_manifest(paths: SnapshotPaths) -> Manifest | None:
    try:
        return read_manifest(paths)
    except SnapshotError:
        return None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _sql_str(value: str | Path) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
