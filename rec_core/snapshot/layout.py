"""Where a feed snapshot's files live, and the build record every stage reads.

A snapshot is built in ``<data root>/snapshots/<snapshot id>/`` by several
stages (embed videos and users, load Milvus, materialize feeds), possibly on
several workers, then validated and published by one pointer change
(``rec_core.snapshot.publish`` / ``jobs.publish``). Until published, nothing reads it.

Layout of one snapshot folder::

    build.json                          what this build is: model version, lake version, as-of time, shards
    vectors/videos-00000-of-00004.parquet   video_id, vector (fixed_size_list<float32>[dim])
    vectors/users-00000-of-00004.parquet    user_id, vector
    catalogue/part-00000-of-00004.parquet   the videos of video shard 0 as serving sees them (see below)
    feeds/part-00000-of-00004.parquet       user_id, rank, video_id, score, reason; sorted by (user_id, rank)
    trending.parquet                    rank, video_id, score, reason: the feed of a user with no history
    model/<version>/...                 the model version's files the API loads (towers, vocabularies, scales)
    rank/...                            when the ranker is applied: the ranker and the feature state as of as-of,
                                        and rank/serve/: that state read back as the NumPy arrays readers map
    milvus.db                           Milvus Lite file with the ``videos`` collection (embedded mode only)
    versions/<version>/vectors/...      for each other model version an experiment's arm names: its video vectors
                                        and the vectors of the users placed in its arms
    versions/<version>/rank/...         that version's ranker and the feature state, when the ranker is applied
    serve/...                           written by validation: the serving index the API maps (NumPy arrays by
                                        catalogue code; rec_core.snapshot.serving_index), and versions/<version>/serve/
    manifest.json                       written by validation: counts, checksums, ids (publish reads it)

The catalogue parts make the snapshot self-contained: each video shard writes,
beside its vectors and row for row with them, what the API would otherwise have
to rebuild from the lake (creator, creation time, caption, hashtags, and the
video tower's inputs as of ``as_of``: caption embedding and dense features).
The API reads the snapshot, never the lake; with ``model/`` (the towers) and
``rank/`` (the ranker and what its features read, :mod:`rec_core.snapshot.rank_state`)
it reads neither the models folder, so the live path runs the batch's own ranking
stage on the same state.

A snapshot serves one model, the build's, unless a running experiment has an arm that names another model
version: then the snapshot also carries that version's *space* (:meth:`SnapshotPaths.space` and
:meth:`BuildInfo.space`: the same build seen through that version), with its own vectors, ranker and Milvus
collection. The catalogue, the feeds and the trending list stay one: a user's feed rows were made in the space of
their arm.

With a Milvus server (``REC_MILVUS_URI=http://...``) the collection is
``videos_<snapshot id>`` on the server instead of a per-snapshot file; one file
per snapshot is how the embedded mode respects that a Milvus Lite file can be
opened by one process at a time (the API owns the live one, the batch builds
the next one beside it).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from rec_core.atomic import write_bytes_atomic
from rec_core.settings import PathSettings

LIVE_POINTER = "LIVE"
BUILD_FILE = "build.json"
MANIFEST_FILE = "manifest.json"
# The ranking files (rank/): the ranker as Ranker.files() writes it, then the feature state
# (rec_core.snapshot.rank_state: what each table holds).
RANK_TABLES = ("videos", "creators", "tags", "users", "user_creator", "user_tag", "user_tag_recent", "follows")
RANK_FILES = ("ranker.txt", "ranker.json", "state.json", *(f"{t}.parquet" for t in RANK_TABLES))
# The serving index (rec_core.snapshot.serving_index): arrays under serve/ in the snapshot folder, and per model space.
SERVE_DIR = "serve"
INDEX_FILE = "index.json"
ROOT_ARRAYS = (
    "video_ids",
    "video_creators",
    "video_created_ms",
    "feed_users",
    "feed_offsets",
    "feed_codes",
    "feed_scores",
    "feed_reason_codes",
    "trending_codes",
    "trending_scores",
    "trending_reason_codes",
    "catalogue_text",
    "catalogue_dense",
)
SPACE_ARRAYS = ("video_vectors", "user_ids", "user_vectors")
# What each user watched before as-of (rec_core.snapshot.watch_history), under serve/ when the build has it.
WATCHED_ARRAYS = ("watched_users", "watched_offsets", "watched_codes")
# The ranker's feature state read back, under each space's rank/serve/ (rec_core.snapshot.rank_state), mapped by
# the API and the materializer instead of rebuilt on the heap from rank/*.parquet.
RANK_ID_ARRAYS = ("user_ids", "video_ids", "creator_ids", "tag_ids")
RANK_CONTENT_ARRAYS = ("item_created_ms", "item_creator", "item_tags_indptr", "item_tags_indices", "item_tags_data")
RANK_STATE_ARRAYS = (
    "item_views",
    "item_window_views",
    "window_totals",
    "item_decayed",
    "decayed_totals",
    "item_completion_rate",
    "item_like_rate",
    "creator_window_views",
    "creator_videos",
    "item_posted",
    "tag_share_30d",
    "tag_share_all",
    "user_events",
    "user_window_events",
    "user_days_idle",
    "user_completion",
    "user_like_rate",
    "user_recent_weight",
    "user_t_ms",
)
RANK_PAIRS = ("user_creator", "user_tag", "user_tag_recent", "follows")
RANK_SERVE_ARRAYS = (
    *RANK_ID_ARRAYS,
    *RANK_CONTENT_ARRAYS,
    *RANK_STATE_ARRAYS,
    *(f"{pair}_{part}" for pair in RANK_PAIRS for part in ("keys", "values")),
)
SNAPSHOT_ID = re.compile(r"^s\d{8}T\d{6}Z-[0-9a-z]{4,16}$")


def snapshot_folders(root: Path) -> set[str]:
    """The ids of the snapshot folders under ``root`` (none when it does not exist): not trash, temp or files."""
    return {p.name for p in root.iterdir() if p.is_dir() and SNAPSHOT_ID.match(p.name)} if root.is_dir() else set()


class SnapshotError(RuntimeError):
    """A snapshot is missing, malformed, or fails validation."""


@dataclass(frozen=True, slots=True)
class BuildInfo:
    snapshot_id: str
    model_version: str
    lake_version: str
    as_of: str  # ISO time: features and histories are computed from what was known before it
    video_shards: int
    user_shards: int
    embedding_dim: int
    feed_length: int
    created_at: str
    # How far the batch had taken the inbox into the lake when the snapshot began (read before the lake version,
    # so never ahead of it): on a restart the API replays the inbox from here, not from what the batch has taken
    # in since, which the live snapshot does not reflect yet. None for snapshots begun before this was recorded.
    inbox_offsets: dict[str, int] | None = None
    # Names of the model version's files copied under model/<model_version>/ (None: an older snapshot, whose API
    # reads the model store).
    model_files: list[str] | None = None
    # Whether the feeds are re-ranked: {"applied", "objective", "n_candidates", "why"} (None: built before rankers).
    ranker: dict | None = None
    # The experiments running when it began (rec_core.experiments.spec.Experiment as JSON): whose feed is made of
    # which variant, for the batch and the API alike. None: built before experiments.
    experiments: list[dict] | None = None
    # The other model versions the experiments' arms name, each {"embedding_dim", "model_files", "ranker"}: the
    # snapshot carries a space for each (see the module doc). None: none (or built before version arms).
    versions: dict[str, dict] | None = None
    # Whether validation writes the serving index (serve/) that the API maps. False: begun before it; the API then
    # builds the same arrays on its heap.
    serving_index: bool = False
    # Whether validation writes each user's videos watched before as-of (serve/watched_*.npy), which the API leaves
    # out of live answers. False: begun before it; the API then leaves out only what it saw since.
    watch_history: bool = False
    # Only users active since this ISO time (an interaction in [since, as-of), or joining since then) get a feed;
    # the others keep their vector and the API serves them as the batch would have (rec_core.snapshot.feed_users).
    # None: every user.
    feed_active_since: str | None = None

    @property
    def ranker_applied(self) -> bool:
        return bool(self.ranker and self.ranker.get("applied"))

    @property
    def extra_versions(self) -> list[str]:
        return sorted(self.versions or {})

    def space(self, version: str) -> BuildInfo:
        """This build as seen by model version ``version`` (its model, vector size and ranker); itself for the
        build's own model."""
        if version == self.model_version:
            return self
        if version not in (self.versions or {}):
            raise SnapshotError(f"snapshot {self.snapshot_id} carries no model version {version!r}")
        spec = self.versions[version]  # type: ignore[index]
        return replace(
            self,
            model_version=version,
            embedding_dim=int(spec["embedding_dim"]),
            model_files=list(spec["model_files"]),
            ranker=spec.get("ranker"),
            versions=None,
        )


@dataclass(frozen=True, slots=True)
class SnapshotPaths:
    root: Path  # the snapshot folder
    version: str = ""  # the space of another model version ("": the build's own model)

    def space(self, version: str, build: BuildInfo) -> SnapshotPaths:
        """The paths of ``version``'s space in this snapshot (these paths for the build's own model)."""
        return self if version == build.model_version else SnapshotPaths(self.root, version)

    def spaces(self, build: BuildInfo) -> list[tuple[SnapshotPaths, BuildInfo]]:
        """Every model space of the build, its own model's first."""
        return [(self, build), *((self.space(v, build), build.space(v)) for v in build.extra_versions)]

    @property
    def space_root(self) -> Path:
        return self.root / "versions" / self.version if self.version else self.root

    @property
    def snapshot_id(self) -> str:
        return self.root.name

    @property
    def build_file(self) -> Path:
        return self.root / BUILD_FILE

    @property
    def manifest_file(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def vectors_dir(self) -> Path:
        return self.space_root / "vectors"

    @property
    def feeds_dir(self) -> Path:
        return self.root / "feeds"

    @property
    def catalogue_dir(self) -> Path:
        return self.root / "catalogue"

    @property
    def trending_file(self) -> Path:
        return self.root / "trending.parquet"

    @property
    def milvus_lite_file(self) -> Path:
        return self.root / "milvus.db"

    @property
    def model_dir(self) -> Path:
        """A model store of one version, the build's (``ModelStore(model_dir).load(version)`` reads it)."""
        return self.root / "model"

    @property
    def rank_dir(self) -> Path:
        return self.space_root / "rank"

    def video_vectors(self, shard: int, shards: int) -> Path:
        return self.vectors_dir / f"videos-{shard:05d}-of-{shards:05d}.parquet"

    def user_vectors(self, shard: int, shards: int) -> Path:
        return self.vectors_dir / f"users-{shard:05d}-of-{shards:05d}.parquet"

    def catalogue_part(self, shard: int, shards: int) -> Path:
        """The catalogue rows of video shard ``shard``: the same videos, in the same order, as its vectors."""
        return self.catalogue_dir / f"part-{shard:05d}-of-{shards:05d}.parquet"

    def feed_part(self, shard: int, shards: int) -> Path:
        return self.feeds_dir / f"part-{shard:05d}-of-{shards:05d}.parquet"

    def read_build(self) -> BuildInfo:
        if not self.build_file.is_file():
            raise SnapshotError(f"snapshot {self.snapshot_id} has no {BUILD_FILE}; was it begun?")
        raw = json.loads(self.build_file.read_text())
        # Fields a newer batch added are left out, not refused: an API not yet upgraded keeps loading new snapshots
        # (each field is added with a default that means "built before it").
        known = {f.name for f in fields(BuildInfo)}
        return BuildInfo(**{k: v for k, v in raw.items() if k in known})

    def collection_name(self, path_settings: PathSettings) -> str:
        """The Milvus collection of this snapshot (a per-snapshot file in embedded mode)."""
        base = "videos" if not path_settings.milvus_uri else f"videos_{self.snapshot_id.replace('-', '_')}"
        return f"{base}__{re.sub(r'[^0-9A-Za-z]', '_', self.version)}" if self.version else base

    def milvus_uri(self, path_settings: PathSettings) -> str:
        return path_settings.milvus_uri or str(self.milvus_lite_file)


def expected_files(paths: SnapshotPaths, build: BuildInfo) -> list[Path]:
    """Every data file the build promises (absolute), in a stable order: what validation checks and hashes."""
    files = [paths.build_file, paths.trending_file]
    files += [paths.catalogue_part(i, build.video_shards) for i in range(build.video_shards)]
    files += [paths.feed_part(i, build.user_shards) for i in range(build.user_shards)]
    for space, space_build in paths.spaces(build):
        files += space_files(space, space_build)
    if build.serving_index:
        files += [paths.root / SERVE_DIR / f"{name}.npy" for name in ROOT_ARRAYS]
        files.append(paths.root / SERVE_DIR / INDEX_FILE)
        files += [s.space_root / SERVE_DIR / f"{name}.npy" for s, _ in paths.spaces(build) for name in SPACE_ARRAYS]
    if build.watch_history:
        files += [paths.root / SERVE_DIR / f"{name}.npy" for name in WATCHED_ARRAYS]
    return files


def space_files(paths: SnapshotPaths, build: BuildInfo) -> list[Path]:
    """The files of one model space: its vectors, its model's copy and, when applied, its ranking files."""
    files = [paths.video_vectors(i, build.video_shards) for i in range(build.video_shards)]
    files += [paths.user_vectors(i, build.user_shards) for i in range(build.user_shards)]
    files += [paths.model_dir / build.model_version / name for name in build.model_files or ()]
    if build.ranker_applied:
        files += [paths.rank_dir / name for name in RANK_FILES]
        if build.serving_index:
            files += [paths.rank_dir / SERVE_DIR / f"{name}.npy" for name in RANK_SERVE_ARRAYS]
    return files


def snapshots_root(paths: PathSettings) -> Path:
    return paths.snapshots_dir


def snapshot_paths(paths: PathSettings, snapshot_id: str) -> SnapshotPaths:
    if not SNAPSHOT_ID.match(snapshot_id):
        raise SnapshotError(f"malformed snapshot id {snapshot_id!r}")
    return SnapshotPaths(paths.snapshots_dir / snapshot_id)


def new_snapshot_id(model_version: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    tail = re.sub(r"[^0-9a-z]", "", model_version.split("-")[-1].lower())[:8] or "model"
    return f"s{now:%Y%m%dT%H%M%S}Z-{tail}"


def begin_snapshot(
    paths: PathSettings,
    *,
    model_version: str,
    lake_version: str,
    as_of: dt.datetime,
    video_shards: int,
    user_shards: int,
    embedding_dim: int,
    feed_length: int,
    inbox_offsets: dict[str, int] | None = None,
    model_files: list[str] | None = None,
    ranker: dict | None = None,
    experiments: list[dict] | None = None,
    versions: dict[str, dict] | None = None,
    feed_active_days: int = 0,
    now: dt.datetime | None = None,
) -> SnapshotPaths:
    """Create the folder of a new snapshot and its ``build.json``; stages then fill it."""
    if video_shards < 1 or user_shards < 1:
        raise ValueError("shard counts must be at least 1")
    snapshot_id = new_snapshot_id(model_version, now)
    snapshot = snapshot_paths(paths, snapshot_id)
    try:
        snapshot.root.mkdir(parents=True, exist_ok=False)
    except FileExistsError:  # ids are to the second
        raise SnapshotError(
            f"snapshot {snapshot_id} exists: another build of model {model_version} began this second; begin again"
        ) from None
    snapshot.vectors_dir.mkdir()
    snapshot.catalogue_dir.mkdir()
    snapshot.feeds_dir.mkdir()
    info = BuildInfo(
        snapshot_id=snapshot_id,
        model_version=model_version,
        lake_version=lake_version,
        as_of=as_of.astimezone(dt.UTC).isoformat(),
        video_shards=video_shards,
        user_shards=user_shards,
        embedding_dim=embedding_dim,
        feed_length=feed_length,
        created_at=(now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
        inbox_offsets=inbox_offsets,
        model_files=model_files,
        ranker=ranker,
        experiments=experiments,
        versions=versions or None,
        serving_index=True,
        watch_history=True,
        feed_active_since=(as_of - dt.timedelta(days=feed_active_days)).astimezone(dt.UTC).isoformat()
        if feed_active_days
        else None,
    )
    for version in info.extra_versions:
        snapshot.space(version, info).vectors_dir.mkdir(parents=True)
    write_bytes_atomic(snapshot.build_file, json.dumps(asdict(info), indent=2).encode())
    return snapshot


def live_snapshot_id(paths: PathSettings) -> str | None:
    pointer = paths.snapshots_dir / LIVE_POINTER
    return pointer.read_text().strip() if pointer.is_file() else None


def shard_bounds(n: int, shard: int, shards: int) -> tuple[int, int]:
    """Rows [lo, hi) of shard ``shard`` of ``shards`` over ``n`` rows (contiguous, sizes differ by at most 1)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} outside 0..{shards - 1}")
    return n * shard // shards, n * (shard + 1) // shards
