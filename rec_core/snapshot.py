"""Validating, publishing, pruning and rolling back feed snapshots.

Publishing is one atomic rename of ``snapshots/LIVE`` (ARCHITECTURE.md,
invariant 3): a snapshot is validated first — every file present, row counts,
no duplicate (user, rank), ranks contiguous, every video known to the lake,
scores finite, every user covered — and its checksums are written into
``manifest.json``. Publish re-checks those checksums right before the swap, so
a file damaged after validation is refused too. The last ``snapshots_keep``
published snapshots stay on disk for rollback and for cursors in flight;
older ones (and their Milvus collections on a server) are deleted, never the
live one and never one still being built.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rec_core.atomic import write_bytes_atomic
from rec_core.lake import Lake
from rec_core.settings import Settings
from rec_core.snapshot_layout import (
    LIVE_POINTER,
    SnapshotError,
    SnapshotPaths,
    live_snapshot_id,
    snapshot_paths,
)

log = logging.getLogger(__name__)

HISTORY = "history.json"


@dataclass(frozen=True, slots=True)
class Manifest:
    snapshot_id: str
    model_version: str
    lake_version: str
    lake_watermark: str | None
    as_of: str
    created_at: str
    validated_at: str
    feed_length: int
    embedding_dim: int
    counts: dict[str, int]
    checksums: dict[str, str]  # path relative to the snapshot folder -> sha256
    milvus_uri: str
    milvus_collection: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


@dataclass(frozen=True, slots=True)
class PublishResult:
    snapshot_id: str
    previous: str | None
    pruned: list[str]
    changed: bool


def _sql_path(path: Path | str) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _expected_files(paths: SnapshotPaths) -> list[Path]:
    build = paths.read_build()
    files = [paths.trending_file]
    files += [paths.video_vectors(i, build.video_shards) for i in range(build.video_shards)]
    files += [paths.user_vectors(i, build.user_shards) for i in range(build.user_shards)]
    files += [paths.feed_part(i, build.user_shards) for i in range(build.user_shards)]
    return files


def validate_snapshot(settings: Settings, snapshot_id: str) -> Manifest:
    """Check a built snapshot and write its manifest; raises :class:`SnapshotError` listing every problem."""
    paths = snapshot_paths(settings, snapshot_id)
    build = paths.read_build()
    files = _expected_files(paths)
    missing = [str(f.relative_to(paths.root)) for f in files if not f.is_file()]
    if missing:
        _refuse(snapshot_id, [f"missing file(s): {', '.join(missing)}"])
    lake = Lake(settings.lake_dir, settings.lake_versions_keep)
    problems: list[str] = []
    con = duckdb.connect()
    try:
        feeds = f"read_parquet({_sql_path(paths.feeds_dir / 'part-*.parquet')})"
        videos = f"read_parquet({_sql_path(lake.path('videos'))})"
        users_q = (
            f"SELECT user_id FROM read_parquet({_sql_path(lake.path('users'))}) UNION "
            f"SELECT user_id FROM read_parquet({_sql_path(lake.path('interactions'))})"
        )
        one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
        counts = {
            "feed_rows": one(f"SELECT count(*) FROM {feeds}"),
            "feed_users": one(f"SELECT count(DISTINCT user_id) FROM {feeds}"),
            "lake_users": one(f"SELECT count(*) FROM ({users_q})"),
            "videos": one(f"SELECT count(*) FROM {videos}"),
            "video_vectors": one(
                f"SELECT count(*) FROM read_parquet({_sql_path(paths.vectors_dir / 'videos-*.parquet')})"
            ),
            "user_vectors": one(
                f"SELECT count(*) FROM read_parquet({_sql_path(paths.vectors_dir / 'users-*.parquet')})"
            ),
            "trending": one(f"SELECT count(*) FROM read_parquet({_sql_path(paths.trending_file)})"),
        }
        checks = {
            "duplicate (user_id, rank)": f"SELECT count(*) FROM (SELECT user_id, rank FROM {feeds} "
            "GROUP BY ALL HAVING count(*) > 1)",
            "duplicate (user_id, video_id)": f"SELECT count(*) FROM (SELECT user_id, video_id FROM {feeds} "
            "GROUP BY ALL HAVING count(*) > 1)",
            "ranks not contiguous from 0": f"SELECT count(*) FROM (SELECT user_id FROM {feeds} GROUP BY user_id "
            "HAVING min(rank) <> 0 OR max(rank) <> count(*) - 1)",
            "unknown video ids in feeds": f"SELECT count(*) FROM {feeds} f ANTI JOIN {videos} v USING (video_id)",
            "non-finite scores": f"SELECT count(*) FROM {feeds} WHERE NOT isfinite(score) OR score IS NULL",
            "empty reasons": f"SELECT count(*) FROM {feeds} WHERE reason IS NULL OR reason = ''",
            "users without a feed": f"SELECT count(*) FROM ({users_q}) u ANTI JOIN {feeds} f USING (user_id)",
            "feeds longer than feed_length": f"SELECT count(*) FROM {feeds} WHERE rank >= {build.feed_length}",
            "unknown video ids in trending": f"SELECT count(*) FROM read_parquet({_sql_path(paths.trending_file)}) t "
            f"ANTI JOIN {videos} v USING (video_id)",
        }
        for what, sql in checks.items():
            if bad := one(sql):
                problems.append(f"{what}: {bad}")
        if not _sorted_by_user_rank(paths):
            problems.append("feed parts are not sorted by (user_id, rank)")
    finally:
        con.close()
    if counts["video_vectors"] != counts["videos"]:
        problems.append(f"{counts['video_vectors']} video vectors for {counts['videos']} videos")
    if counts["user_vectors"] != counts["lake_users"]:
        problems.append(f"{counts['user_vectors']} user vectors for {counts['lake_users']} users")
    if counts["trending"] == 0:
        problems.append("empty trending list")
    if problems:
        _refuse(snapshot_id, problems)
    checksums = {str(f.relative_to(paths.root)): _sha256(f) for f in files}
    manifest = Manifest(
        snapshot_id=snapshot_id,
        model_version=build.model_version,
        lake_version=build.lake_version,
        lake_watermark=lake.current().manifest.get("created_at"),
        as_of=build.as_of,
        created_at=build.created_at,
        validated_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        feed_length=build.feed_length,
        embedding_dim=build.embedding_dim,
        counts=counts,
        checksums=checksums,
        milvus_uri=settings.milvus_uri or paths.milvus_lite_file.name,
        milvus_collection=paths.collection_name(settings),
    )
    write_bytes_atomic(paths.manifest_file, manifest.to_json().encode())
    log.info("snapshot %s is valid: %s", snapshot_id, counts)
    return manifest


def publish(settings: Settings, snapshot_id: str) -> PublishResult:
    """Make a validated snapshot live with one atomic pointer change, then prune old snapshots."""
    paths = snapshot_paths(settings, snapshot_id)
    previous = live_snapshot_id(settings)
    if previous == snapshot_id:
        return PublishResult(snapshot_id, previous, [], changed=False)
    manifest = read_manifest(paths)
    damaged = [name for name, digest in manifest.checksums.items() if _sha256(paths.root / name) != digest]
    if damaged:
        _refuse(snapshot_id, [f"checksum mismatch since validation: {', '.join(damaged)}"])
    history = _history(settings)
    history.append(
        {
            "snapshot_id": snapshot_id,
            "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "model_version": manifest.model_version,
        }
    )
    write_bytes_atomic(settings.snapshots_dir / HISTORY, json.dumps(history, indent=2).encode())
    # The one change readers see.
    write_bytes_atomic(settings.snapshots_dir / LIVE_POINTER, f"{snapshot_id}\n".encode())
    log.info("snapshot %s is live (previous: %s)", snapshot_id, previous)
    return PublishResult(snapshot_id, previous, prune(settings), changed=True)


def rollback(settings: Settings) -> str:
    """Make the previously published snapshot live again."""
    live = live_snapshot_id(settings)
    published = [h["snapshot_id"] for h in _history(settings)]
    earlier = [s for s in dict.fromkeys(reversed(published)) if s != live and (settings.snapshots_dir / s).is_dir()]
    if not earlier:
        raise SnapshotError("no earlier published snapshot is kept to roll back to")
    target = earlier[0]
    publish_again = publish(settings, target)
    log.info("rolled back from %s to %s", live, publish_again.snapshot_id)
    return target


def prune(settings: Settings) -> list[str]:
    """Delete published snapshots beyond the newest ``snapshots_keep``; never the live one or one in progress."""
    live = live_snapshot_id(settings)
    keep: list[str] = []
    for entry in reversed(_history(settings)):
        if entry["snapshot_id"] not in keep:
            keep.append(entry["snapshot_id"])
    keep = keep[: settings.snapshots_keep]
    removed = []
    published = {h["snapshot_id"] for h in _history(settings)}
    for folder in sorted(settings.snapshots_dir.iterdir()):
        name = folder.name
        if not folder.is_dir() or name == live or name in keep or name not in published:
            continue  # unpublished folders may still be in progress
        _drop_collection(settings, SnapshotPaths(folder))
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(name)
    if removed:
        log.info("pruned snapshots %s", removed)
    return removed


def read_manifest(paths: SnapshotPaths) -> Manifest:
    if not paths.manifest_file.is_file():
        raise SnapshotError(f"snapshot {paths.snapshot_id} has not been validated (no manifest)")
    return Manifest(**json.loads(paths.manifest_file.read_text()))


def live_snapshot(settings: Settings) -> SnapshotPaths | None:
    live = live_snapshot_id(settings)
    return snapshot_paths(settings, live) if live else None


def list_snapshots(settings: Settings) -> list[dict]:
    live = live_snapshot_id(settings)
    published = {h["snapshot_id"]: h for h in _history(settings)}
    out = []
    for folder in sorted(settings.snapshots_dir.glob("s*")) if settings.snapshots_dir.is_dir() else []:
        entry = published.get(folder.name, {})
        out.append(
            {
                "snapshot_id": folder.name,
                "live": folder.name == live,
                "published_at": entry.get("published_at"),
                "model_version": entry.get("model_version"),
                "validated": (folder / "manifest.json").is_file(),
            }
        )
    return out


def _history(settings: Settings) -> list[dict]:
    path = settings.snapshots_dir / HISTORY
    return json.loads(path.read_text()) if path.is_file() else []


def _drop_collection(settings: Settings, paths: SnapshotPaths) -> None:
    if not settings.milvus_uri:
        return  # embedded mode: the collection is the milvus.db file inside the folder
    from pymilvus import MilvusClient

    client = MilvusClient(settings.milvus_uri)
    try:
        client.drop_collection(paths.collection_name(settings))
    finally:
        client.close()


def _sorted_by_user_rank(paths: SnapshotPaths) -> bool:
    for part in sorted(paths.feeds_dir.glob("part-*.parquet")):
        table = pq.read_table(part, columns=["user_id", "rank"])
        if table.num_rows < 2:
            continue
        users, ranks = table["user_id"].combine_chunks(), table["rank"].combine_chunks()
        same = pc.equal(users[1:], users[:-1])
        ordered = pc.or_(pc.greater(users[1:], users[:-1]), pc.and_(same, pc.greater(ranks[1:], ranks[:-1])))
        if not pc.all(ordered).as_py():
            return False
    return True


def _refuse(snapshot_id: str, problems: list[str]) -> None:
    message = f"snapshot {snapshot_id} refused: " + "; ".join(problems)
    log.error(message)
    raise SnapshotError(message)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
