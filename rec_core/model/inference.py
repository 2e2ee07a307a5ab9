"""Video and user vectors of a snapshot, sharded, plus the user tower online.

A snapshot's ``build.json`` (:class:`~rec_core.snapshot.layout.BuildInfo`) pins
what every shard reads: the lake version (read by name, not through ``CURRENT``,
so a lake commit in the middle of a build cannot give two shards two worlds), the
model version, and ``as_of``: features and histories are computed from the
interactions and follows before it, exactly as :mod:`rec_core.model.features` defines
them for training, with the model's own vocabularies and feature statistics.

Shards are contiguous row ranges (:func:`~rec_core.snapshot.layout.shard_bounds`)
of the catalogue (every video of the lake version, sorted by ``video_id``) and of
the users (the users table plus users seen only in interactions, sorted by
``user_id``, as :mod:`rec_core.data.split` defines them). A video shard builds the
catalogue of its own rows only (every video feature is a function of its row) and
writes it into the snapshot beside its vectors, so serving reads the catalogue
from the snapshot (:func:`snapshot_catalogue`), never from the lake; a user shard
needs the whole catalogue, because histories point into it, but builds histories
for its own users only.

Online, :func:`user_vector_from_profile` turns a request-shaped
:class:`UserProfile` into the same one-row :class:`~rec_core.model.features.Histories`
the batch would have built, so a user's online vector and batch vector agree.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import torch

from rec_core.experiments.assign import Assignment
from rec_core.experiments.spec import experiments_from_build
from rec_core.model.features import (
    HISTORY_CAP,
    Catalogue,
    FeatureStats,
    Histories,
    Vocabs,
    build_catalogue,
    build_histories,
    follows_frame,
    interaction_frame,
    one_string_each,
    to_ms,
    user_dense_features,
    video_frame,
)
from rec_core.model.store import LoadedModel, ModelStore, model_store
from rec_core.model.text_features import embed_videos_text
from rec_core.model.training import user_vectors, video_vectors
from rec_core.settings import ModelSettings, PathSettings, Settings
from rec_core.snapshot.files import (
    CATALOGUE_COLUMNS,
    CATALOGUE_DENSE,
    CATALOGUE_TEXT,
    USER_ID,
    VIDEO_ID,
    catalogue_table,
    read_catalogue_shards,
    read_lake_table,
    vector_table,
    vectors_array,
    write_catalogue,
    write_vectors,
)
from rec_core.snapshot.layout import BuildInfo, SnapshotError, SnapshotPaths, shard_bounds, snapshot_paths

log = logging.getLogger(__name__)

USER_CHUNK = 4096  # users per user-tower forward pass: bounds memory on big shards


# ---- inputs of a build ----------------------------------------------------------


def as_of_ms(build: BuildInfo) -> int:
    return to_ms(dt.datetime.fromisoformat(build.as_of))


def load_build_model(paths: PathSettings, build: BuildInfo, models_dir: Path | None = None) -> LoadedModel:
    """The model version the build names, from ``models_dir`` (the models folder by default), checked against the
    build's embedding size."""
    loaded = (ModelStore(models_dir) if models_dir else model_store(paths)).load(build.model_version)
    if loaded.model.cfg.embedding_dim != build.embedding_dim:
        raise SnapshotError(
            f"model {build.model_version} makes {loaded.model.cfg.embedding_dim}-d vectors, "
            f"snapshot {build.snapshot_id} expects {build.embedding_dim}"
        )
    return loaded


def model_text(paths: PathSettings, model: ModelSettings, loaded: LoadedModel, videos: pl.DataFrame) -> np.ndarray:
    """Caption embeddings of ``videos`` (rows aligned) from the text encoder the model was trained with; cached."""
    trained_with = dataclasses.replace(model, text_model=loaded.config.get("text_model", model.text_model))
    vectors, _ = embed_videos_text(videos.select("video_id", "caption", "hashtags").to_arrow(), paths, trained_with)
    return vectors


def load_catalogue(
    paths: PathSettings,
    model: ModelSettings,
    build: BuildInfo,
    loaded: LoadedModel,
    *,
    videos: pl.DataFrame | None = None,
    interactions: pl.DataFrame | None = None,
) -> Catalogue:
    """The whole catalogue of the build as the model sees it, from the lake (the batch's way; serving reads
    :func:`snapshot_catalogue`)."""
    videos = video_frame(read_lake_table(paths, build, "videos")) if videos is None else videos
    interactions = _interactions(paths, build) if interactions is None else interactions
    text = model_text(paths, model, loaded, videos)
    return build_catalogue(videos, interactions, text, loaded.vocabs, as_of_ms(build))


def all_user_ids(users: pa.Table, interactions: pl.DataFrame) -> np.ndarray:
    """Every user of the users table plus every user seen in interactions, sorted: the order user shards cut."""
    ids = pl.concat(
        [pl.Series(users.column(USER_ID).to_pylist(), dtype=pl.String), interactions[USER_ID].cast(pl.String)]
    )
    return np.asarray(ids.unique().sort().to_list(), dtype=object)


def _interactions(paths: PathSettings, build: BuildInfo) -> pl.DataFrame:
    # Only the past is ever looked at, so drop the rest once here rather than in every join.
    frame = interaction_frame(read_lake_table(paths, build, "interactions"))
    return frame.filter(pl.col("ts_ms") < as_of_ms(build))


def snapshot_catalogue(
    paths: SnapshotPaths,
    build: BuildInfo,
    loaded: LoadedModel,
    shared: Catalogue | None = None,
    matrices: tuple[np.ndarray, np.ndarray] | None = None,
    video_ids: np.ndarray | None = None,
) -> Catalogue:
    """The whole catalogue of the build from the snapshot's catalogue parts: what the towers read at ``as_of``.

    Equal to :func:`load_catalogue` in every input the towers read online (ids, creators, creation times, text,
    dense features, vocabulary indices); it has no interaction timeline and no creator debuts, which only training
    uses (features at an earlier instant, videos shown as new). ``shared``, the same snapshot's catalogue for
    another model version, lends its arrays: only the vocabulary indices differ between versions. ``matrices``, the
    text and dense columns as arrays already in memory or mapped (the serving index's), are used instead of reading
    those columns, the bulk of the parts. ``video_ids``, the sorted ids already mapped (the serving index's), are
    used instead of a Python string per video. The API holds :func:`serving_catalogue` instead, which reads nothing.
    """
    if shared is not None:
        table = read_catalogue_shards(paths, build.video_shards, ["creator_id", "hashtags"])
        return dataclasses.replace(
            shared,
            item_idx=Vocabs.lookup(loaded.vocabs.items, shared.video_ids),
            creator_idx=Vocabs.codes(loaded.vocabs.creators, table.column("creator_id").combine_chunks()),
            hashtag_idx=Vocabs.codes(loaded.vocabs.hashtags, table.column("hashtags").combine_chunks().flatten()),
        )
    plain = list(CATALOGUE_COLUMNS) if matrices is not None else None
    table = read_catalogue_shards(paths, build.video_shards, plain)
    text, dense = matrices or (vectors_array(table, CATALOGUE_TEXT), vectors_array(table, CATALOGUE_DENSE))
    video_ids = _same_ids(table.column(VIDEO_ID), video_ids)
    creators = table.column("creator_id").combine_chunks()
    creator_ids = one_string_each(creators)
    tags = table.column("hashtags").combine_chunks()
    lengths = pc.list_value_length(tags).to_numpy(zero_copy_only=False).astype(np.int64)
    return Catalogue(
        video_ids=video_ids,
        creator_ids=creator_ids,
        text=text if matrices is not None else np.ascontiguousarray(text),
        duration_s=table.column("duration_s").to_numpy().astype(np.float32),
        item_idx=Vocabs.lookup(loaded.vocabs.items, video_ids),
        creator_idx=Vocabs.codes(loaded.vocabs.creators, creators),
        hashtag_idx=Vocabs.codes(loaded.vocabs.hashtags, tags.flatten()),
        hashtag_offsets=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
        dense=dense if matrices is not None else np.ascontiguousarray(dense),
        created_ms=table.column("created_ms").to_numpy().astype(np.int64),
        as_of_ms=as_of_ms(build),
    )


def serving_catalogue(
    loaded: LoadedModel,
    build: BuildInfo,
    *,
    video_ids: np.ndarray,
    creator_ids: np.ndarray,
    created_ms: np.ndarray,
    text: np.ndarray,
    dense: np.ndarray,
) -> Catalogue:
    """The user tower's inputs for every video, from the arrays a snapshot's serving index maps: what each API
    worker holds.

    Nothing is read and nothing mapped is copied except each video's index in ``loaded``'s vocabulary (its own per
    model version): the ids, creators, creation times, text and dense rows are the index's, in its codes. The video
    tower's inputs (duration, creator and hashtag codes) are left out, so this catalogue cannot feed the video
    tower (``Catalogue.batch`` refuses): the API encodes a posted video from a catalogue of its own. Built from the
    Parquet parts instead, as :func:`snapshot_catalogue` does, they were ~20 MiB per worker at 500,000 videos
    that no request read. The rows must be the codes: a catalogue with rows the vectors left out is refused.
    """
    n = len(video_ids)
    if not (len(creator_ids) == len(created_ms) == len(text) == len(dense) == n):
        raise ValueError(
            f"the serving index's catalogue rows ({len(text)}) are not its {n} videos: a snapshot whose catalogue "
            "holds rows its vectors left out"
        )
    return Catalogue(
        video_ids=video_ids,
        creator_ids=creator_ids,
        text=text,
        duration_s=None,
        item_idx=Vocabs.lookup(loaded.vocabs.items, video_ids),
        creator_idx=None,
        hashtag_idx=None,
        hashtag_offsets=None,
        dense=dense,
        created_ms=created_ms,
        as_of_ms=as_of_ms(build),
    )


def _same_ids(column: pa.ChunkedArray, mapped: np.ndarray | None) -> np.ndarray:
    """The catalogue's ids: ``mapped`` where given (checked to be the column's, ends and length), else the column as
    Python strings."""
    if mapped is None:
        return np.asarray(column.to_pylist(), dtype=object)
    n = len(column)
    if len(mapped) != n or (n and (mapped[0] != column[0].as_py() or mapped[-1] != column[n - 1].as_py())):
        raise ValueError(f"the mapped video ids ({len(mapped)}) are not the catalogue's ({n})")
    return mapped


# ---- batch vectors of one shard -----------------------------------------------


@dataclass(frozen=True, slots=True)
class VideoShard:
    """What one video shard writes into the snapshot: its vectors and, row for row, its catalogue part."""

    vectors: pa.Table  # video_id, vector
    catalogue: pa.Table  # rec_core.snapshot.files.catalogue_schema


@dataclass(frozen=True, slots=True)
class LakeInputs:
    """What an embed shard reads of the build's lake version: read once, whichever model spaces it embeds for."""

    videos: pl.DataFrame
    interactions: pl.DataFrame  # before as-of
    user_ids: np.ndarray  # every user, sorted: the order user shards cut
    follows: pl.DataFrame

    @classmethod
    def read(cls, paths: PathSettings, build: BuildInfo, *, users: bool = True) -> LakeInputs:
        """The build's lake inputs; ``users=False`` leaves out what only user shards read (user ids, follows)."""
        interactions = _interactions(paths, build)
        return cls(
            videos=video_frame(read_lake_table(paths, build, "videos")),
            interactions=interactions,
            user_ids=all_user_ids(read_lake_table(paths, build, "users", columns=[USER_ID]), interactions)
            if users
            else np.zeros(0, dtype=object),
            follows=follows_frame(read_lake_table(paths, build, "follows")) if users else pl.DataFrame(),
        )


def video_shard(
    paths: PathSettings, model: ModelSettings, build: BuildInfo, shard: int, lake: LakeInputs | None = None
) -> VideoShard:
    """Vectors and catalogue part of shard ``shard`` of ``build.video_shards`` of the catalogue."""
    started = time.perf_counter()
    loaded = load_build_model(paths, build)
    lake = lake or LakeInputs.read(paths, build, users=False)
    videos = lake.videos
    lo, hi = shard_bounds(videos.height, shard, build.video_shards)
    part = videos.slice(lo, hi - lo)
    # The whole table's caption lookup, cut: the release and every other shard look that table up, so it is kept
    # aligned (rec_core.model.text_features) and mapped from there, where this part's own would miss it.
    text = np.ascontiguousarray(model_text(paths, model, loaded, videos)[lo:hi])
    catalogue = build_catalogue(part, lake.interactions, text, loaded.vocabs, as_of_ms(build))
    vectors = video_vectors(loaded.model, catalogue, loaded.stats).numpy()
    log.info(
        "video shard %d/%d: %d videos [%d, %d) embedded in %.1fs",
        shard,
        build.video_shards,
        len(catalogue),
        lo,
        hi,
        time.perf_counter() - started,
    )
    served = {
        VIDEO_ID: catalogue.video_ids,
        "creator_id": catalogue.creator_ids,
        "created_ms": catalogue.created_ms,
        "caption": part["caption"].to_list(),  # part is sorted by video_id, as the catalogue is
        "hashtags": part["hashtags"].to_list(),
        "duration_s": catalogue.duration_s,
    }
    return VideoShard(
        vectors=vector_table(VIDEO_ID, catalogue.video_ids, vectors),
        catalogue=catalogue_table(served, catalogue.text, catalogue.dense),
    )


def user_vectors_for_shard(
    paths: PathSettings,
    model: ModelSettings,
    build: BuildInfo,
    shard: int,
    *,
    placed_only: bool = False,
    lake: LakeInputs | None = None,
) -> pa.Table:
    """``user_id``, ``vector`` for shard ``shard`` of ``build.user_shards`` of the users; with ``placed_only``,
    only those an experiment's arm places in the space of ``build``'s model (another version's space)."""
    started = time.perf_counter()
    loaded = load_build_model(paths, build)
    lake = lake or LakeInputs.read(paths, build)
    interactions = lake.interactions
    lo, hi = shard_bounds(len(lake.user_ids), shard, build.user_shards)
    ids = lake.user_ids[lo:hi]
    if placed_only:
        assignment = Assignment(experiments_from_build(build.experiments))
        ids = ids[np.asarray(assignment.variant_mask(ids.tolist(), build.model_version), dtype=bool)]
    catalogue = load_catalogue(paths, model, build, loaded, videos=lake.videos, interactions=interactions)
    histories = build_histories(ids, interactions, lake.follows, catalogue, loaded.vocabs, as_of_ms(build))
    parts = [
        user_vectors(loaded.model, histories, catalogue, loaded.stats, np.arange(a, min(a + USER_CHUNK, len(ids))))
        for a in range(0, len(ids), USER_CHUNK)
    ]
    dim = loaded.model.cfg.embedding_dim
    vectors = torch.cat(parts).numpy() if parts else np.zeros((0, dim), dtype=np.float32)
    log.info(
        "user shard %d/%d of %s: %d users [%d, %d) embedded in %.1fs",
        shard,
        build.user_shards,
        build.model_version,
        len(ids),
        lo,
        hi,
        time.perf_counter() - started,
    )
    return vector_table(USER_ID, ids, vectors)


def embed_shard(settings: Settings, snapshot_id: str, shard: int, kind: Literal["video", "user"]) -> dict:
    """Compute one shard of video or user vectors and write it into the snapshot; returns a summary.

    Atomic per file and idempotent: a rerun computes the same bytes and replaces them, a killed run leaves no half
    file. A video shard writes its catalogue part before its vectors, so present vectors mean a whole shard.
    """
    started = time.perf_counter()
    paths = snapshot_paths(settings.paths, snapshot_id)
    build = paths.read_build()
    shards = build.video_shards if kind == "video" else build.user_shards
    if not 0 <= shard < shards:
        raise ValueError(f"{kind} shard {shard} outside 0..{shards - 1} of snapshot {snapshot_id}")
    rows: dict[str, int] = {}
    lake = LakeInputs.read(settings.paths, build, users=kind == "user")  # the same for every model space
    for space, space_build in paths.spaces(build):  # the build's model, then each version an arm names
        if kind == "video":
            built = video_shard(settings.paths, settings.model, space_build, shard, lake)
            if space is paths:  # one catalogue for every space: the towers' inputs are the same
                write_catalogue(built.catalogue, paths.catalogue_part(shard, shards))
            table, target = built.vectors, space.video_vectors(shard, shards)
        else:
            placed_only = space is not paths
            table = user_vectors_for_shard(
                settings.paths, settings.model, space_build, shard, placed_only=placed_only, lake=lake
            )
            target = space.user_vectors(shard, shards)
        write_vectors(table, target)
        rows[space_build.model_version] = table.num_rows
        log.info("wrote %d %s vectors to %s", table.num_rows, kind, target)
    return {
        "snapshot": snapshot_id,
        "shard": shard,
        "shards": shards,
        "rows": rows[build.model_version],
        "path": str(paths.video_vectors(shard, shards) if kind == "video" else paths.user_vectors(shard, shards)),
        **({"version_rows": rows} if len(rows) > 1 else {}),
        "seconds": round(time.perf_counter() - started, 2),
    }


# ---- the user tower online --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserProfile:
    """What a request can tell about a user the batch has not embedded (or has, but with stale history).

    ``watched`` are the video ids of watch events, most recent first, repeats
    allowed: the first :data:`~rec_core.model.features.HISTORY_CAP` pool into the
    history, all of them count for how much the user watches. ``liked`` are the
    video ids of liked watches (a like is also a watch: list it in ``watched``
    too). Averages are over the same watches; ``None`` means no data (0, as the
    batch has for a user with no history).
    """

    watched: list[str] = field(default_factory=list)
    liked: list[str] = field(default_factory=list)
    followed: list[str] = field(default_factory=list)  # creator ids
    avg_watch_time_s: float | None = None
    completion_rate: float | None = None


@dataclass(frozen=True, slots=True)
class OnlineUserVector:
    vector: np.ndarray  # (dim,) float32, L2-normalised
    unknown_video_ids: list[str]  # ids of ``watched``/``liked`` outside the catalogue: ignored
    unknown_creator_ids: list[str]  # followed ids with no video in the catalogue: counted, but carry no vector


def profile_histories(
    profile: UserProfile, catalogue: Catalogue, vocabs: Vocabs, known_creators: Collection[str] | None = None
) -> tuple[Histories, list[str], list[str]]:
    """The one-row :class:`Histories` the batch would build for ``profile``; plus the unknown video/creator ids.

    ``known_creators`` (the catalogue's creator ids) may be passed in by a caller that asks often: building
    the set costs milliseconds at 50,000 videos.
    """
    watched, unknown_watched = _positions(catalogue, profile.watched)
    liked, unknown_liked = _positions(catalogue, profile.liked)
    # Every follow counts, as in build_histories: a creator with no video yet is still someone the user chose.
    followed = sorted(set(profile.followed))
    if known_creators is None:
        known_creators = set(catalogue.creator_ids.tolist())
    n_items = len(catalogue)

    def row(positions: np.ndarray) -> sp.csr_matrix:
        cols = np.unique(positions)  # sorted, as the batch's CSR rows are
        return sp.csr_matrix((np.ones(len(cols), dtype=np.float32), cols, np.array([0, len(cols)])), shape=(1, n_items))

    watched_row, liked_row = row(watched[:HISTORY_CAP]), row(liked)
    dense = user_dense_features(
        np.array([len(watched)], dtype=np.float64),
        np.array([len(liked)], dtype=np.float64),
        np.array([len(followed)], dtype=np.float64),
        np.array([profile.completion_rate or 0.0]),
        np.array([profile.avg_watch_time_s or 0.0]),
    )
    histories = Histories(
        user_ids=np.array(["<online>"], dtype=object),
        watched=watched_row,
        liked=liked_row,
        watched_text_sum=np.asarray(watched_row @ catalogue.text, dtype=np.float32),
        liked_text_sum=np.asarray(liked_row @ catalogue.text, dtype=np.float32),
        followed_idx=Vocabs.lookup(vocabs.creators, np.array(followed, dtype=object)),
        followed_offsets=np.zeros(1, dtype=np.int64),
        dense=dense,
    )
    unknown_videos = list(dict.fromkeys(unknown_watched + unknown_liked))
    return histories, unknown_videos, [c for c in followed if c not in known_creators]


def user_vector_from_profile(
    loaded: LoadedModel,
    catalogue: Catalogue,
    stats: FeatureStats,
    profile: UserProfile,
    known_creators: Collection[str] | None = None,
) -> OnlineUserVector:
    """The user tower on one request-shaped profile, through the batch's own input code (Histories.batch)."""
    histories, unknown_videos, unknown_creators = profile_histories(profile, catalogue, loaded.vocabs, known_creators)
    vector = user_vectors(loaded.model, histories, catalogue, stats, np.zeros(1, dtype=np.int64))[0].numpy()
    return OnlineUserVector(vector, unknown_videos, unknown_creators)


def profile_from_events(user_id: str, interactions: pl.DataFrame, follows: pl.DataFrame, as_of: int) -> UserProfile:
    """The profile of ``user_id`` from event frames (``interaction_frame`` / ``follows_frame``) before ``as_of`` (ms).

    The same aggregation the batch does in ``build_histories``, so the online vector
    of a lake user equals their batch vector.
    """
    mine = interactions.filter((pl.col(USER_ID) == user_id) & (pl.col("ts_ms") < as_of)).sort("ts_ms", descending=True)
    follows_mine = follows.filter((pl.col(USER_ID) == user_id) & (pl.col("ts_ms") < as_of))
    return UserProfile(
        watched=mine[VIDEO_ID].to_list(),
        liked=mine.filter(pl.col("liked"))[VIDEO_ID].to_list(),
        followed=follows_mine["creator_id"].to_list(),
        avg_watch_time_s=mine["watch_time_s"].mean() if mine.height else None,  # type: ignore[arg-type]
        completion_rate=mine["completion"].mean() if mine.height else None,  # type: ignore[arg-type]
    )


def _positions(catalogue: Catalogue, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Catalogue positions of the known ``ids`` (order and repeats kept), and the unknown ids."""
    if not ids:
        return np.zeros(0, dtype=np.int64), []
    arr = np.asarray(list(ids), dtype=object)
    pos = Vocabs.lookup(catalogue.video_ids, arr) - 1  # the catalogue is sorted by id like a vocabulary
    unknown = list(dict.fromkeys(arr[pos < 0].tolist()))
    return pos[pos >= 0], unknown


def embed_videos(settings: Settings, snapshot_id: str, shard: int) -> dict:
    """The ``embed_videos`` stage: vectors and serving catalogue of one video shard."""
    return embed_shard(settings, snapshot_id, shard, "video")


def embed_users(settings: Settings, snapshot_id: str, shard: int) -> dict:
    """The ``embed_users`` stage: vectors of one user shard."""
    return embed_shard(settings, snapshot_id, shard, "user")
