"""A published snapshot serves on its own: the API's view of it needs the snapshot folder (and, for a snapshot begun
before it carried its model, the model store), never the lake (nor the batch's caption-embedding cache); a snapshot
whose build applies the ranker serves its ranked live pages with the models folder gone too."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pytest

from feed_api.pager import first_cursor, next_page
from feed_api.snapshot_load import load_view
from feed_api.video_encoding import encode_videos
from rec_core.feed.cursor import Cursor
from rec_core.feed.policy import FeedPolicy
from rec_core.model.inference import UserProfile, load_build_model, load_catalogue, user_vector_from_profile
from rec_core.model.text_encoder import TextEncoder
from rec_core.settings import Settings
from rec_core.snapshot.layout import live_snapshot_id, snapshot_paths
from tests.test_rank_stage import ranked_world

pytestmark = pytest.mark.slow


def test_a_published_snapshot_serves_with_the_lake_gone(api_world: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(api_world.parent / "pristine", data)
    settings = Settings.load({"REC_DATA_DIR": str(data), "REC_FEED_LENGTH": "200"})
    live = live_snapshot_id(settings.paths)
    assert live is not None
    paths = snapshot_paths(settings.paths, live)
    build = paths.read_build()

    # What the tower makes of a fresh user, computed the batch's way (from the lake) while there is one.
    model = load_build_model(settings.paths, build)
    from_lake = load_catalogue(settings.paths, settings.model, build, model)
    profile = UserProfile(
        watched=from_lake.video_ids[[3, 1, 2]].tolist(),
        liked=[str(from_lake.video_ids[1])],
        followed=[str(from_lake.creator_ids[0])],
        avg_watch_time_s=12.5,
        completion_rate=0.6,
    )
    expected = user_vector_from_profile(model, from_lake, model.stats, profile).vector

    for folder in (settings.paths.lake_dir, data / "features"):
        shutil.move(folder, tmp_path / f"away-{folder.name}")
    assert not settings.paths.lake_dir.exists()

    view = load_view(settings.paths, paths)
    try:
        # Served from the snapshot: the catalogue with creators and creation times, every user's feed, trending.
        assert len(view.video_ids) == len(from_lake) and view.catalogue_size() == len(from_lake)
        np.testing.assert_array_equal(view.creator_ids, from_lake.creator_ids)
        np.testing.assert_array_equal(view.created_ms, from_lake.created_ms)
        user = next(iter(view.feeds.user_row))
        lo, hi = view.feeds.bounds(user) or (0, 0)
        assert 0 < hi - lo <= build.feed_length
        feed = view.video_ids[view.feeds.items.codes[lo:hi]].tolist()
        assert len(set(feed)) == len(feed)
        assert all(view.known_video(v) and view.creator_of(v) and view.video_vector(v) is not None for v in feed)
        assert len(view.trending) > 0 and view.batch_vector(user) is not None

        # A fresh user's profile through the user tower online: the lake's answer, and live search answers it.
        online = view.profile_vector(profile)
        assert online.unknown_video_ids == [] and online.unknown_creator_ids == []
        np.testing.assert_allclose(online.vector, expected, atol=1e-6)
        hits = view.store.search(online.vector, 10, exclude_ids=profile.watched)[0]
        assert len(hits) == 10 and not {h[0] for h in hits} & set(profile.watched)

        # A newly posted video goes through the snapshot's model into its vector space.
        encoder = TextEncoder(model.config.get("text_model", settings.model.text_model))
        payload = {
            "video_id": "v_posted_after_the_lake_left",
            "creator_id": str(from_lake.creator_ids[0]),
            "caption": "a brand new clip",
            "hashtags": ["#new"],
            "duration": 15,
            "width": 1080,
            "height": 1920,
            "user_followers": 10,
            "user_likes": 20,
        }
        vector = encode_videos(view, encoder, [payload], dt.datetime.now(dt.UTC))
        assert vector.shape == (1, view.dim) and np.isfinite(vector).all()
        np.testing.assert_allclose(np.linalg.norm(vector, axis=1), 1.0, atol=1e-5)
    finally:
        view.close()


def test_a_ranked_snapshot_serves_with_the_lake_and_the_models_gone(
    api_world: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A snapshot whose build applies the ranker: the API's view loads the towers, the ranker and the feature state
    from the snapshot alone, and its live pages (a continuation, a fresh user's first page) come out the same as
    with the lake and the models folder there."""
    data = tmp_path / "data"
    shutil.copytree(ranked_world(tmp_path_factory, api_world), data)
    settings = Settings.load({"REC_DATA_DIR": str(data)})
    live = live_snapshot_id(settings.paths)
    assert live is not None
    paths = snapshot_paths(settings.paths, live)
    assert paths.read_build().ranker_applied

    def pages() -> list[list[tuple[str, float, str]]]:
        view = load_view(settings.paths, paths)
        try:
            assert view.ranking is not None
            assert isinstance(view.model.vocabs.items, np.memmap)  # mapped from the snapshot: workers share it
            policy = FeedPolicy(feed_length=view.build.feed_length)
            out = []
            for user in sorted(view.feeds.user_row)[:5]:
                start, end = view.feeds.bounds(user) or (0, 0)
                cursor = Cursor(view.snapshot_id, user, "feed", end - start)
                out.append(next_page(view, cursor, 20, None, lambda u=user: view.batch_vector(u), policy).items)
            profile = UserProfile(watched=view.video_ids[[3, 1, 2]].tolist(), liked=[str(view.video_ids[1])])
            fresh = first_cursor(view, "u-fresh-after-the-lake", has_vector=True)
            out.append(next_page(view, fresh, 20, None, lambda: view.profile_vector(profile).vector, policy).items)
            return [[(i.video_id, i.score, i.reason) for i in items] for items in out]
        finally:
            view.close()

    with_everything = pages()
    assert all(len(page) == 20 for page in with_everything)
    for folder in (settings.paths.lake_dir, data / "features", settings.paths.models_dir):
        shutil.move(folder, tmp_path / f"away-{folder.name}")
    assert pages() == with_everything
