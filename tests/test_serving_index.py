"""The serving index (rec_core.snapshot.serving_index): the arrays the API maps hold exactly the snapshot's Parquet
rows, the API's view of a snapshot is mapped rather than copied, and a snapshot built before the index still serves
the same pages from arrays indexed on the heap."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feed_api.pager import first_cursor, next_page
from feed_api.snapshot_load import load_view
from rec_core.feed.policy import FeedPolicy
from rec_core.rank.features import block_features
from rec_core.settings import Settings
from rec_core.snapshot.feed_repeats import feed_repeats
from rec_core.snapshot.files import read_vector_shards, vectors_array
from rec_core.snapshot.layout import RANK_SERVE_ARRAYS, SnapshotPaths, expected_files, live_snapshot_id, snapshot_paths
from rec_core.snapshot.rank_state import rank_arrays_problems, read_ranking
from rec_core.snapshot.serving_index import (
    FeedIndex,
    IdIndex,
    RankedList,
    build_serving_index,
    open_serving_index,
)
from rec_core.snapshot.validate import validate_snapshot

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", range(5))
def test_feed_repeats_counts_what_a_plain_loop_counts(seed: int) -> None:
    """Rows beyond the first of a video within a user's run, and the first users with one, as a loop finds them:
    a video repeated across users is no repeat, and users of every length (none included) are counted."""
    rng = np.random.default_rng(seed)
    n_videos, lengths = 40, rng.integers(0, 30, size=60)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    codes = rng.integers(0, n_videos, size=int(offsets[-1])).astype(np.int32)
    users = np.array([f"u{i:03d}" for i in range(len(lengths))])
    feeds = FeedIndex(IdIndex(users), offsets, RankedList(codes, np.zeros(len(codes), np.float32), codes * 0, []))
    extra, with_repeats = 0, []
    for user, (lo, hi) in enumerate(itertools.pairwise(offsets)):
        repeated = (hi - lo) - len(set(codes[lo:hi].tolist()))
        extra += repeated
        if repeated:
            with_repeats.append(str(users[user]))
    got = feed_repeats(feeds, n_videos, 3)
    assert extra > 0 and (got.extra_rows, got.example_users) == (extra, with_repeats[:3])
    with pytest.raises(ValueError, match="outside"):
        feed_repeats(feeds, int(codes.max()), 3)


def test_id_index_finds_exactly_the_ids_it_holds() -> None:
    index = IdIndex(np.asarray(["a", "ab", "b", "video-10", "video-9"], dtype=str))
    assert [index.get(k) for k in ("a", "ab", "b", "video-10", "video-9")] == [0, 1, 2, 3, 4]
    # Between ids, past both ends, a prefix, a longer id that the array's width would cut to one it holds, not a str.
    for absent in ("aa", "", "c", "video-1", "video-100", "video-9x", "video-99999", 3, None):
        assert index.get(absent) is None and absent not in index
    with pytest.raises(KeyError):
        index["c"]
    assert list(index) == ["a", "ab", "b", "video-10", "video-9"] and len(index) == 5
    assert IdIndex(np.zeros(0, dtype=str)).get("a") is None


def test_id_index_looks_many_ids_up_at_once_as_it_does_one_by_one() -> None:
    index = IdIndex(np.asarray(["a", "ab", "b", "video-10", "video-9"], dtype=str))
    keys = ["video-9", "aa", "a", "", "video-99999", "video-9x", "b", "c", "video-1", "ab", "video-10", "a"]
    assert index.codes(keys).tolist() == [-1 if index.get(k) is None else index.get(k) for k in keys]
    assert index.codes([]).tolist() == [] and IdIndex(np.zeros(0, dtype=str)).codes(["a"]).tolist() == [-1]


@pytest.fixture(scope="module")
def published(api_world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, SnapshotPaths]:
    data = tmp_path_factory.mktemp("serve") / "data"
    shutil.copytree(api_world.parent / "pristine", data)
    settings = Settings.load({"REC_DATA_DIR": str(data), "REC_FEED_LENGTH": "200"})
    live = live_snapshot_id(settings.paths)
    assert live is not None
    return settings, snapshot_paths(settings.paths, live)


def test_the_mapped_index_holds_the_snapshots_parquet_rows(published: tuple[Settings, SnapshotPaths]) -> None:
    _, paths = published
    build = paths.read_build()
    assert build.serving_index
    index = open_serving_index(paths, build)
    ids = index.video_ids
    feeds = pl.read_parquet(paths.feeds_dir).sort(["user_id", "rank"])
    assert len(index.feeds.items) == feeds.height and len(index.feeds.user_row) == feeds["user_id"].n_unique()
    items = index.feeds.items
    # Every feed row, user by user, in rank order: the same video, score and reason as the Parquet says.
    rebuilt = pl.DataFrame(
        {
            "user_id": np.repeat(index.feeds.user_row.ids, np.diff(index.feeds.offsets)),
            "video_id": ids[items.codes],
            "score": np.asarray(items.scores),
            "reason": np.asarray(items.reasons, dtype=object)[items.reason_codes],
        }
    )
    assert rebuilt.equals(feeds.select("user_id", "video_id", "score", "reason"))
    for user in feeds["user_id"].unique().head(5).to_list():
        lo, hi = index.feeds.bounds(user) or (0, 0)
        assert ids[items.codes[lo:hi]].tolist() == feeds.filter(pl.col("user_id") == user)["video_id"].to_list()
    trending = pl.read_parquet(paths.trending_file).sort("rank")
    assert ids[index.trending.codes].tolist() == trending["video_id"].to_list()
    np.testing.assert_array_equal(index.trending.scores, trending["score"].to_numpy())
    # Vectors by code and by user: each id's row is its Parquet vector.
    own = index.spaces[build.model_version]
    for kind, arrays, row_of in (
        ("videos", own.video_vectors, index.video_code),
        ("users", own.user_vectors, own.user_row),
    ):
        table = read_vector_shards(paths, kind, build.video_shards if kind == "videos" else build.user_shards)
        rows = [row_of[v] for v in table.column(0).to_pylist()]
        assert len(rows) == len(arrays)
        np.testing.assert_array_equal(np.asarray(arrays)[rows], vectors_array(table))
    catalogue = pl.read_parquet(paths.catalogue_dir).sort("video_id")
    assert ids.tolist() == catalogue["video_id"].to_list()
    assert index.creator_ids.tolist() == catalogue["creator_id"].to_list()
    np.testing.assert_array_equal(index.created_ms, catalogue["created_ms"].to_numpy())
    np.testing.assert_array_equal(index.catalogue_text, np.stack(catalogue["text"].to_list()))
    np.testing.assert_array_equal(index.catalogue_dense, np.stack(catalogue["dense"].to_list()))
    # And the heap build of the same files is the same index.
    heap = build_serving_index(paths, build)
    for a, b in zip(dataclasses.astuple(heap.feeds.items), dataclasses.astuple(items), strict=True):
        np.testing.assert_array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))


def test_the_ranking_state_is_mapped_and_is_the_state_its_tables_hold(
    published: tuple[Settings, SnapshotPaths], tmp_path: Path
) -> None:
    _, paths = published
    build = paths.read_build()
    assert build.ranker_applied and build.serving_index
    serve = paths.rank_dir / "serve"
    assert sorted(f.name for f in serve.iterdir()) == sorted(f"{name}.npy" for name in RANK_SERVE_ARRAYS)
    assert set(serve.iterdir()) <= set(expected_files(paths, build)), "hashed into the manifest like every file"
    _, mapped = read_ranking(paths.rank_dir)
    assert isinstance(mapped.state.user_tag.keys, np.memmap) and isinstance(mapped.video_ids, np.memmap)
    assert rank_arrays_problems(paths.rank_dir) == []
    # The same folder without serve/ (a snapshot from before it) is read from the Parquet tables onto the heap ...
    tables = tmp_path / "rank"
    shutil.copytree(paths.rank_dir, tables, ignore=shutil.ignore_patterns("serve"))
    _, heap = read_ranking(tables)
    assert not isinstance(heap.state.user_tag.keys, np.memmap)
    # ... and both give every feature the same value for the same pairs: known and neutral users and videos.
    rng = np.random.default_rng(0)
    users = np.append(rng.integers(0, mapped.neutral_user, 40), mapped.neutral_user)
    items = np.append(rng.integers(0, mapped.neutral_video, (41, 30)), np.full((41, 1), mapped.neutral_video), 1)
    scores = rng.random(items.shape).astype(np.float32)
    features = [block_features(rank.state, users, items, scores)[0] for rank in (mapped, heap)]
    np.testing.assert_array_equal(*features)
    # A mapped array that drifted from the tables after they were written is caught by validation.
    doctored = tmp_path / "doctored"
    shutil.copytree(paths.rank_dir, doctored)
    values = np.load(doctored / "serve" / "user_tag_values.npy")
    np.save(doctored / "serve" / "user_tag_values.npy", values * 2)
    assert rank_arrays_problems(doctored) == ["serve/user_tag.values differs from the Parquet state"]


def test_the_api_view_is_mapped_and_an_index_less_snapshot_serves_the_same_pages(
    published: tuple[Settings, SnapshotPaths],
) -> None:
    settings, paths = published
    policy = FeedPolicy(feed_length=paths.read_build().feed_length)
    view = load_view(settings.paths, paths)
    try:
        mapped = (view.feeds.items.codes, view.video_vectors, view.user_vectors, view.video_ids, view.catalogue.text)
        assert view.ranking is not None
        state = view.ranking.model.state
        mapped += (state.user_ids, state.state.user_tag.keys, state.state.item_window_views)
        for array in mapped:
            assert isinstance(array, np.memmap), "served from the page cache, not copied onto the heap"
        users = list(view.feeds.user_row)[:3]
        pages = [_first_page(view, user, policy) for user in users]
    finally:
        view.close()
    # The same snapshot as one built before serve/ existed: no flags in build.json, no serve/ folder.
    raw = json.loads(paths.build_file.read_text())
    raw.pop("serving_index")
    raw.pop("watch_history")
    paths.build_file.write_text(json.dumps(raw))
    shutil.rmtree(paths.root / "serve")
    shutil.rmtree(paths.rank_dir / "serve")
    validate_snapshot(settings.paths, paths.snapshot_id)
    assert not (paths.root / "serve").exists()
    old = load_view(settings.paths, paths)
    try:
        assert not isinstance(old.feeds.items.codes, np.memmap)
        assert old.ranking is not None and not isinstance(old.ranking.model.state.state.user_tag.keys, np.memmap)
        assert [_first_page(old, user, policy) for user in users] == pages
    finally:
        old.close()


def _first_page(view, user: str, policy: FeedPolicy) -> list[tuple[str, float, str]]:  # type: ignore[no-untyped-def]
    page = next_page(view, first_cursor(view, user, has_vector=True), 20, None, lambda: None, policy)
    assert page.source == "precomputed" and len(page.items) == 20
    return [(i.video_id, round(i.score, 6), i.reason) for i in page.items]
