"""Snapshot vectors end to end at tiny scale: sharding, idempotence, the Milvus load, and the online user tower."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from jobs.embed_videos import main as embed_videos_main
from rec_core.data.lake import Lake
from rec_core.model.features import HISTORY_CAP, follows_frame, interaction_frame
from rec_core.model.inference import (
    UserProfile,
    all_user_ids,
    as_of_ms,
    embed_users,
    embed_videos,
    load_build_model,
    load_catalogue,
    profile_from_events,
    serving_catalogue,
    snapshot_catalogue,
    user_vector_from_profile,
    user_vectors_for_shard,
    video_shard,
)
from rec_core.model.release import train_version
from rec_core.model.training import TrainConfig, video_vectors
from rec_core.settings import Settings
from rec_core.snapshot.files import read_lake_table, read_vector_shards, vectors_array
from rec_core.snapshot.layout import BuildInfo, SnapshotError, SnapshotPaths, begin_snapshot
from rec_core.snapshot.vector_load import load_vectors
from rec_core.snapshot.vector_store import VectorStore
from rec_core.synthetic.commit import generate_data

pytestmark = pytest.mark.slow

VIDEO_SHARDS, USER_SHARDS = 3, 2


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, SnapshotPaths]:
    """A tiny world, a briefly trained model, and a begun snapshot whose shards are all embedded."""
    # Embedding reads the towers only: no ranker to train.
    settings = Settings.load({}).override(data_dir=tmp_path_factory.mktemp("embed") / "data", ranker="off")
    generate_data(settings, "tiny", seed=1)
    version = train_version(settings, TrainConfig(embedding_dim=settings.model.embedding_dim, epochs=2, batch_size=256))
    paths = begin_snapshot(
        settings.paths,
        feed_length=settings.batch.feed_length,
        model_version=version,
        lake_version=Lake(settings.paths.lake_dir).current().name,
        as_of=dt.datetime.now(dt.UTC),
        video_shards=VIDEO_SHARDS,
        user_shards=USER_SHARDS,
        embedding_dim=settings.model.embedding_dim,
    )
    for shard in range(VIDEO_SHARDS):
        embed_videos(settings, paths.snapshot_id, shard)
    for shard in range(USER_SHARDS):
        embed_users(settings, paths.snapshot_id, shard)
    return settings, paths


def test_video_shards_cover_the_catalogue_once(snapshot: tuple[Settings, SnapshotPaths]) -> None:
    settings, paths = snapshot
    build = paths.read_build()
    sharded = read_vector_shards(paths, "videos", VIDEO_SHARDS)
    lake_ids = sorted(read_lake_table(settings.paths, build, "videos", columns=["video_id"])["video_id"].to_pylist())
    assert sharded["video_id"].to_pylist() == lake_ids
    whole = video_shard(settings.paths, settings.model, dataclasses.replace(build, video_shards=1), 0).vectors
    assert whole["video_id"].to_pylist() == lake_ids
    np.testing.assert_allclose(vectors_array(sharded), vectors_array(whole), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors_array(sharded), axis=1), 1.0, atol=1e-5)


def test_user_shards_cover_every_user_once(snapshot: tuple[Settings, SnapshotPaths]) -> None:
    settings, paths = snapshot
    build = paths.read_build()
    sharded = read_vector_shards(paths, "users", USER_SHARDS)
    users = read_lake_table(settings.paths, build, "users", columns=["user_id"])["user_id"].to_pylist()
    assert sharded["user_id"].to_pylist() == sorted(users)
    whole = user_vectors_for_shard(settings.paths, settings.model, dataclasses.replace(build, user_shards=1), 0)
    np.testing.assert_allclose(vectors_array(sharded), vectors_array(whole), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors_array(sharded), axis=1), 1.0, atol=1e-5)


def test_users_seen_only_in_interactions_are_included() -> None:
    users = pa.table({"user_id": ["b", "a"]})
    interactions = interaction_frame(
        pa.table({"user_id": ["c", "a"], "video_id": ["x", "y"], "ts": pa.array([1, 2], pa.timestamp("ms", "UTC"))})
    )
    assert all_user_ids(users, interactions).tolist() == ["a", "b", "c"]


def test_reruns_give_the_same_bytes_and_leave_no_temp_files(snapshot: tuple[Settings, SnapshotPaths]) -> None:
    settings, paths = snapshot
    files = [
        paths.video_vectors(1, VIDEO_SHARDS),
        paths.catalogue_part(1, VIDEO_SHARDS),
        paths.user_vectors(0, USER_SHARDS),
    ]
    before = [f.read_bytes() for f in files]
    embed_videos(settings, paths.snapshot_id, 1)
    embed_users(settings, paths.snapshot_id, 0)
    assert [f.read_bytes() for f in files] == before
    assert sorted(p.name for p in paths.vectors_dir.iterdir()) == sorted(
        [paths.video_vectors(i, VIDEO_SHARDS).name for i in range(VIDEO_SHARDS)]
        + [paths.user_vectors(i, USER_SHARDS).name for i in range(USER_SHARDS)]
    )
    assert sorted(p.name for p in paths.catalogue_dir.iterdir()) == [
        paths.catalogue_part(i, VIDEO_SHARDS).name for i in range(VIDEO_SHARDS)
    ]
    with pytest.raises(ValueError):
        embed_videos(settings, paths.snapshot_id, VIDEO_SHARDS)


def test_cli_runs_one_shard(snapshot: tuple[Settings, SnapshotPaths], capsys: pytest.CaptureFixture[str]) -> None:
    settings, paths = snapshot
    args = ["--snapshot", paths.snapshot_id, "--data-dir", str(settings.paths.data_dir)]
    assert embed_videos_main([*args, "--shard", "0"]) == 0
    assert '"rows"' in capsys.readouterr().out
    assert embed_videos_main([*args, "--shard", "9"]) == 2


def test_online_user_vector_equals_the_batch_vector(snapshot: tuple[Settings, SnapshotPaths]) -> None:
    settings, paths = snapshot
    build = paths.read_build()
    loaded = load_build_model(settings.paths, build)
    catalogue = load_catalogue(settings.paths, settings.model, build, loaded)
    interactions = interaction_frame(read_lake_table(settings.paths, build, "interactions"))
    follows = follows_frame(read_lake_table(settings.paths, build, "follows"))
    batch = read_vector_shards(paths, "users", USER_SHARDS)
    batch_ids = batch["user_id"].to_pylist()
    batch_vectors = vectors_array(batch)

    counts = interactions.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])
    followers = set(follows["user_id"].to_list())
    heavy = counts["user_id"][0]  # more watches than HISTORY_CAP: the cap must cut the same way
    assert counts["len"][0] > HISTORY_CAP
    light = counts["user_id"][-1]
    following = next(u for u in counts["user_id"].to_list() if u in followers)
    for user in (heavy, light, following):
        profile = profile_from_events(user, interactions, follows, as_of_ms(build))
        online = user_vector_from_profile(loaded, catalogue, loaded.stats, profile)
        assert online.unknown_video_ids == []
        np.testing.assert_allclose(online.vector, batch_vectors[batch_ids.index(user)], atol=1e-5)

    # Unknown video ids are ignored and reported; a user with nothing is the batch's empty-history user.
    profile = profile_from_events(light, interactions, follows, as_of_ms(build))
    noisy = dataclasses.replace(profile, watched=["nope", *profile.watched], liked=[*profile.liked, "nada"])
    online = user_vector_from_profile(loaded, catalogue, loaded.stats, noisy)
    assert online.unknown_video_ids == ["nope", "nada"]
    np.testing.assert_allclose(online.vector, batch_vectors[batch_ids.index(light)], atol=1e-5)
    empty = user_vector_from_profile(loaded, catalogue, loaded.stats, UserProfile(followed=["ghost-creator"]))
    assert empty.unknown_creator_ids == ["ghost-creator"]
    assert np.linalg.norm(empty.vector) == pytest.approx(1.0, abs=1e-5)


def test_load_vectors_fills_the_snapshot_collection(snapshot: tuple[Settings, SnapshotPaths]) -> None:
    settings, paths = snapshot
    summary = load_vectors(settings, paths.snapshot_id)
    videos = read_vector_shards(paths, "videos", VIDEO_SHARDS)
    assert summary["rows"] == videos.num_rows
    assert load_vectors(settings, paths.snapshot_id)["rows"] == videos.num_rows  # a rerun rebuilds, same count
    users = vectors_array(read_vector_shards(paths, "users", USER_SHARDS))[:5]
    ids, vectors = videos["video_id"].to_pylist(), vectors_array(videos)
    with VectorStore(
        paths.milvus_uri(settings.paths), paths.collection_name(settings.paths), vectors.shape[1]
    ) as store:
        assert store.count() == len(ids)
        hits = store.search(users, 20)
    for user, found in zip(users, hits, strict=True):
        scores = vectors @ user
        # Exact search: the k-th best score matches, and every hit's score is its true inner product.
        assert found[-1][1] == pytest.approx(float(np.sort(scores)[-20]), abs=1e-5)
        np.testing.assert_allclose([s for _, s in found], [scores[ids.index(i)] for i, _ in found], atol=1e-5)


def test_load_vectors_names_missing_shards(snapshot: tuple[Settings, SnapshotPaths], tmp_path: Path) -> None:
    settings, paths = snapshot
    build: BuildInfo = paths.read_build()
    other = begin_snapshot(
        settings.paths,
        feed_length=settings.batch.feed_length,
        model_version=build.model_version,
        lake_version=build.lake_version,
        as_of=dt.datetime.now(dt.UTC),
        video_shards=2,
        user_shards=1,
        embedding_dim=build.embedding_dim,
        now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    )
    embed_videos(settings, other.snapshot_id, 0)
    with pytest.raises(SnapshotError, match="videos-00001-of-00002"):
        load_vectors(settings, other.snapshot_id)


def test_the_snapshot_catalogue_is_the_lake_catalogue_as_the_towers_read_it(
    snapshot: tuple[Settings, SnapshotPaths],
) -> None:
    """The catalogue the video shards wrote gives the towers the inputs the lake gives them: the same video
    vectors as the shards, the same online user vectors, and the same creators and creation times."""
    settings, paths = snapshot
    build = paths.read_build()
    loaded = load_build_model(settings.paths, build)
    from_lake = load_catalogue(settings.paths, settings.model, build, loaded)
    served = snapshot_catalogue(paths, build, loaded)
    for name in ("video_ids", "creator_ids", "created_ms", "item_idx", "creator_idx", "hashtag_idx", "hashtag_offsets"):
        np.testing.assert_array_equal(getattr(served, name), getattr(from_lake, name), err_msg=name)
    for name in ("text", "dense", "duration_s"):
        np.testing.assert_array_equal(getattr(served, name), getattr(from_lake, name), err_msg=name)
    assert served.as_of_ms == from_lake.as_of_ms == as_of_ms(build)
    # The vocabulary indices are held as int32, whichever way the catalogue was built (what each API worker keeps)
    for catalogue in (served, from_lake):
        assert {getattr(catalogue, n).dtype for n in ("item_idx", "creator_idx", "hashtag_idx", "hashtag_offsets")} == {
            np.dtype(np.int32)
        }
    # One string object per creator, not per video: what each API worker holds of the catalogue's creators.
    assert len({id(c) for c in served.creator_ids}) == len(set(served.creator_ids.tolist())) < len(served)
    # The API hands over the serving index's mapped ids (unicode), which the catalogue then holds instead of its own.
    mapped = np.array(from_lake.video_ids.tolist())
    with_mapped = snapshot_catalogue(paths, build, loaded, video_ids=mapped)
    assert with_mapped.video_ids is mapped
    np.testing.assert_array_equal(with_mapped.item_idx, from_lake.item_idx)
    for wrong in (mapped[1:], mapped[::-1]):
        with pytest.raises(ValueError, match="not the catalogue's"):
            snapshot_catalogue(paths, build, loaded, video_ids=wrong)

    shards = vectors_array(read_vector_shards(paths, "videos", VIDEO_SHARDS))
    np.testing.assert_allclose(video_vectors(loaded.model, served, loaded.stats).numpy(), shards, atol=1e-6)

    # What an API worker holds: the serving index's mapped arrays (fixed-width ids and creators) and no video tower
    # inputs, which it refuses to feed; the user tower reads it as it reads the lake's catalogue.
    columns = dict(
        video_ids=mapped, creator_ids=np.array(from_lake.creator_ids.tolist()), created_ms=from_lake.created_ms
    )
    api = serving_catalogue(loaded, build, **columns, text=served.text, dense=served.dense)
    np.testing.assert_array_equal(api.item_idx, from_lake.item_idx)
    assert api.text is served.text and api.hashtag_idx is None
    with pytest.raises(ValueError, match="user tower's inputs only"):
        api.batch(np.arange(2), loaded.stats)
    with pytest.raises(ValueError, match="not its"):
        serving_catalogue(loaded, build, **columns, text=served.text[1:], dense=served.dense[1:])

    interactions = interaction_frame(read_lake_table(settings.paths, build, "interactions"))
    follows = follows_frame(read_lake_table(settings.paths, build, "follows"))
    for user in interactions["user_id"].unique().sort().head(5).to_list():
        profile = profile_from_events(user, interactions, follows, as_of_ms(build))
        expected = user_vector_from_profile(loaded, from_lake, loaded.stats, profile).vector
        for catalogue in (served, api):
            np.testing.assert_array_equal(
                user_vector_from_profile(loaded, catalogue, loaded.stats, profile).vector, expected
            )
