"""The ranker as a feed-pipeline stage: the batch feed and the live continuation apply the same stage object to the
same candidates with the same answer, a fresh user goes through it with neutral user-side features, and without a
ranker it hands every block back untouched (real snapshot built by the pipeline's stages, real Milvus Lite)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.snapshot_ranker import snapshot_ranker
from feed_api import pager
from feed_api.snapshot_load import load_view
from feed_api.snapshot_view import SnapshotView
from feed_api.user_state import UserActivity
from rec_core.feed import batch
from rec_core.feed.block import CandidateBlock, FeedContext
from rec_core.feed.candidates import ExclusionCSR
from rec_core.feed.live import rank_live
from rec_core.feed.ordering import ModelScore
from rec_core.feed.pipeline import FEED_PIPELINE, FeedPipeline
from rec_core.feed.policy import FeedPolicy
from rec_core.feed.rank_stage import RankerScore
from rec_core.model.inference import UserProfile
from rec_core.model.store import ModelStore
from rec_core.rank.ranker import Ranker, RankerConfig
from rec_core.settings import Settings
from rec_core.snapshot.layout import snapshot_paths
from rec_core.snapshot.publish import live_snapshot
from rec_core.stages import between, run_stages
from tests.test_materialize import _scored_snapshot, score_problems

N_CANDIDATES = 100  # the test ranker reorders each user's top 100 (feeds are 200 long in this world)
FAST = RankerConfig(objective="binary", max_rounds=60, early_stopping=15, min_data_in_leaf=20, folds=3, cv_groups=0)
WORLD_SETTINGS = {"REC_FEED_LENGTH": "200", "REC_SNAPSHOTS_KEEP": "2", "REC_RANKER": "on"}


def ranked_world(tmp_path_factory: pytest.TempPathFactory, api_world: Path) -> Path:
    """A copy of the API world whose model version carries a ranker, and a snapshot built and published by the
    pipeline's own stages (begin_snapshot to publish) with REC_RANKER=on. Built once per session; copy it to
    change it."""
    data = tmp_path_factory.getbasetemp() / "ranked-world" / "data"
    if (data / "snapshots" / "LIVE").is_file() and (data.parent / "done").is_file():
        return data
    shutil.rmtree(data.parent, ignore_errors=True)
    shutil.copytree(api_world.parent / "pristine", data)
    settings = Settings.load({"REC_DATA_DIR": str(data), **WORLD_SETTINGS})
    version = ModelStore(settings.paths.models_dir).current()
    assert version is not None
    if Ranker.load_if_present(settings.paths.models_dir / version) is None:  # until the release trains one itself
        live = live_snapshot(settings.paths)
        assert live is not None
        ranker = snapshot_ranker(settings.paths, live, days=5.0, n=N_CANDIDATES, max_users=300, config=FAST)
        ranker.save(settings.paths.models_dir / version)
    run_stages(settings, between("begin_snapshot", "publish"), {"video_shards": 1, "user_shards": 2})
    (data.parent / "done").touch()
    return data


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, api_world: Path) -> Path:
    return ranked_world(tmp_path_factory, api_world)


@pytest.fixture
def world_copy(world: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(world, data)
    return data


@pytest.fixture
def view(world_copy: Path) -> Iterator[SnapshotView]:
    settings = Settings.load({"REC_DATA_DIR": str(world_copy)})
    live = live_snapshot(settings.paths)
    assert live is not None
    loaded = load_view(settings.paths, live)
    try:
        yield loaded
    finally:
        loaded.close()


# ---- a scorer that watches the ranker stage from either side --------------------------------------------------------


@dataclasses.dataclass
class Capture:
    """Keeps every block as it passes, by user id: the rows' video ids and scores, and the ranking context's rows."""

    name: str
    seen: dict[tuple[str, str], tuple[list[str], list[float]]] = dataclasses.field(default_factory=dict)
    state_rows: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    user_events: dict[tuple[str, str], float] = dataclasses.field(
        default_factory=dict
    )  # the user's count the ranker read
    # The first part cell by cell: video id ("" where none or filtered out) and score.
    cells: dict[tuple[str, str], tuple[list[str], list[float]]] = dataclasses.field(default_factory=dict)

    def score(self, block: CandidateBlock, ctx: FeedContext) -> CandidateBlock:
        if ctx.ranking is None:
            return block
        path = "live" if ctx.served is not None else "batch"
        state = ctx.ranking.catalogue.model.state
        read = ctx.ranking.state or state.state  # a live user's own state (row 0), or the snapshot's
        for r, user in enumerate(block.users.tolist()):
            row = int(ctx.ranking.user_rows[user])
            user_id = (
                "<own>"
                if ctx.ranking.state is not None
                else state.user_ids[row]
                if row < state.neutral_user
                else "<fresh>"
            )
            self.user_events[(path, user_id)] = float(read.user_events[row])
            width = block.unique_parts[1] if block.unique_parts else block.video.shape[1]
            video = block.video[r, :width]
            self.seen[(path, user_id)] = (ctx.video_ids[video[video >= 0]].tolist(), block.score[r, :width].tolist())
            ids = np.where(video >= 0, ctx.video_ids[np.maximum(video, 0)], "").tolist()
            self.cells[(path, user_id)] = (ids, block.score[r, :width].tolist())
            self.state_rows[(path, user_id)] = row
        return block


def watched(before: Capture, after: Capture) -> FeedPipeline:
    return dataclasses.replace(FEED_PIPELINE, scorers=(ModelScore(), before, RankerScore(), after))


# ---- off: the stage is a pass-through --------------------------------------------------------------------------------


def test_without_a_ranker_the_stage_hands_the_block_back() -> None:
    assert [s.name for s in FEED_PIPELINE.scorers] == ["model_score", "ranker"]
    rng = np.random.default_rng(0)
    video = np.stack([rng.permutation(30) for _ in range(4)])
    block = CandidateBlock(
        users=np.arange(4),
        video=video,
        score=rng.random(video.shape).astype(np.float32),
        creator=video % 5,
        fresh=np.zeros(video.shape, bool),
        unique_parts=(0, 30),
    )
    ctx = FeedContext(FeedPolicy(feed_length=10), np.arange(30).astype(str), np.arange(5).astype(str), np.full(4, -1),
                      ExclusionCSR.empty(4))  # fmt: skip
    assert RankerScore().score(block, ctx) is block
    scored, keep = FEED_PIPELINE.filter_and_score(block, ctx)
    np.testing.assert_array_equal(scored.video, block.video)
    np.testing.assert_array_equal(scored.score, block.score)
    assert keep.all()


# ---- on: the same stage in both paths -------------------------------------------------------------------------------


@pytest.mark.slow
def test_batch_and_live_continuation_apply_the_same_ranker_stage(world_copy: Path, view: SnapshotView) -> None:
    build = view.build
    assert build.ranker_applied and view.ranking is not None, build.ranker
    width = ranked_cells(view)
    settings = Settings.load({"REC_DATA_DIR": str(world_copy)})
    before, after = Capture("before"), Capture("after")
    for shard in range(build.user_shards):
        summary = batch.materialize_feeds(settings, view.snapshot_id, shard, watched(before, after))
        assert summary["ranker"]["applied"]
    users = history_users(before)
    assert len(users) >= 100, "most users have a history and their top-k goes through the ranker"
    reordered = [u for u in users if ranked(before, "batch", u, width) != ranked(after, "batch", u, width)]
    assert len(reordered) >= 0.8 * len(users), "the ranker reorders the towers' candidates"

    policy = FeedPolicy(feed_length=build.feed_length)
    differs_for_a_stranger = 0
    for user in reordered[:25]:
        hits, gone, popular = batch_as_live(view, before, user)
        live_order = live_ranked(view, watched(before, after), hits, user, user, policy, gone, popular)
        assert ranked(before, "live", user, width) == ranked(before, "batch", user, width), "the same candidates"
        assert ranked(after, "live", user, width) == live_order[: len(ranked(after, "live", user, width))]
        assert ranked(after, "live", user, width) == ranked(after, "batch", user, width), user
        # The check can fail: the same candidates ranked for someone the state does not know come out otherwise.
        stranger = live_ranked(view, watched(before, after), hits, user, "someone-new", policy, gone, popular)
        differs_for_a_stranger += stranger[: len(ranked(after, "batch", user, width))] != ranked(
            after, "batch", user, width
        )
    assert differs_for_a_stranger >= 10, differs_for_a_stranger


def ranked_cells(view: SnapshotView) -> int:
    """How many leading cells of a user's first part the snapshot's ranker reorders: its N and its popular ones."""
    assert view.ranking is not None
    ranker = view.ranking.model.ranker
    return ranker.n_candidates + ranker.n_popular


def ranked(capture: Capture, path: str, user: str, width: int) -> list[str]:
    """The videos in the ranker's cells of ``user``'s first part, in order, as ``capture`` saw them."""
    return [v for v in capture.cells[(path, user)][0][:width] if v]


def history_users(capture: Capture) -> list[str]:
    """Users whose first part is the towers' (a history); the rest get the trending list, which is not reranked."""
    return sorted(u for (path, u), (_, x) in capture.cells.items() if path == "batch" and np.isfinite(x[0]))


def batch_as_live(view: SnapshotView, before: Capture, user: str) -> tuple[list[tuple[str, float]], set[str], int]:
    """The batch's first part of ``user`` as the live continuation's inputs: its towers' cells as a search answer,
    then the ranker's popular videos offered as the API offers them (scored with the user's vector), and as seen
    the popular ones the batch's layout left out (seen before the batch; those the top N holds are the layout's)."""
    assert view.ranking is not None
    ranker = view.ranking.model.ranker
    n, width = ranker.n_candidates, ranked_cells(view)
    ids, scores = before.cells[("batch", user)]
    searched = [(v, x) for v, x in zip(ids[:n] + ids[width:], scores[:n] + scores[width:], strict=True) if v]
    codes = view.ranking.popular_codes
    vector = view.batch_vector(user)
    assert vector is not None
    kept = dict(zip(ids[n:width], scores[n:width], strict=True))
    offered = [
        (v, kept.get(v, float(x)))  # the batch's own float where it has one: tree splits see the very same score
        for v, x in zip(view.video_ids[codes].tolist(), view.video_vectors[codes] @ vector, strict=True)
    ]
    gone = {v for v, _ in offered} - set(kept) - set(ids[:n])
    return searched + offered, gone, len(offered)


def live_ranked(
    view: SnapshotView, pipeline: FeedPipeline, hits: list[tuple[str, float]], user: str, ranked_as: str,
    policy: FeedPolicy, seen: set[str] | None = None, popular: int = 0,
) -> list[str]:  # fmt: skip
    """The live continuation's order of ``hits`` for ``user`` after the pipeline's ranker stage (read back from the
    pipeline's last scorer, a :class:`Capture`), with the ranker's user-side features those of ``ranked_as``."""
    vector = view.batch_vector(user)
    assert view.ranking is not None and vector is not None
    codes, creators, created = view.catalogue_facts([v for v, _ in hits])
    rank_live(
        pipeline,
        hits,
        creators,
        created,
        user_id=user,
        seen=seen or set(),
        served=set(),
        codes=codes,
        video_ids=view.video_ids,
        as_of_ms=view.as_of_ms,
        policy=policy,
        trending_query=False,
        ranking=view.ranking.inputs([ranked_as], vector[None, :]),
        posted_vector=view.video_vector,
        popular=popular,
    )
    capture = pipeline.scorers[-1]
    assert isinstance(capture, Capture)
    return capture.seen[("live", ranked_as if ranked_as == user else "<fresh>")][0]


@pytest.mark.slow
def test_live_pages_and_a_fresh_users_first_page_run_the_ranker(view: SnapshotView) -> None:
    before, after = Capture("before"), Capture("after")
    pipeline = watched(before, after)
    policy = FeedPolicy(feed_length=view.build.feed_length)
    user = next(u for u in sorted(view.feeds.user_row) if view.ranking and view.ranking.model.state.user_rows([u])[0]
                < view.ranking.model.state.neutral_user)  # fmt: skip
    start, end = view.feeds.bounds(user) or (0, 0)
    cursor = pager.Cursor(view.snapshot_id, user, "feed", end - start)
    page = pager.next_page(view, cursor, 20, None, lambda: view.batch_vector(user), policy, pipeline)
    assert page.source == "live" and len(page.items) == 20
    assert ("live", user) in after.seen and after.state_rows[("live", user)] == view.ranking.model.state.user_rows(  # type: ignore[union-attr]
        [user]
    )[0]
    assert after.seen[("live", user)][0] != before.seen[("live", user)][0], "the live answer is reranked"

    # A user the snapshot has never seen, with a profile: the first page is live, ranked with neutral user features.
    profile = UserProfile(watched=view.video_ids[[5, 7, 11]].tolist(), liked=[str(view.video_ids[7])])
    fresh = "u-fresh-ranked"
    first = pager.first_cursor(view, fresh, has_vector=True)
    page = pager.next_page(view, first, 20, None, lambda: view.profile_vector(profile).vector, policy, pipeline)
    assert page.source == "live" and len(page.items) == 20
    assert after.state_rows[("live", "<fresh>")] == view.ranking.model.state.neutral_user  # type: ignore[union-attr]
    assert {i.video_id for i in page.items} <= set(after.seen[("live", "<fresh>")][0])


@pytest.mark.slow
def test_a_known_users_live_page_ranks_with_what_they_did_since_the_snapshot(view: SnapshotView) -> None:
    """Past their feed, a user the snapshot knows is ranked with their snapshot row plus their events since (the
    API's user state), not the posted profile they may have sent too (the snapshot's lake holds that history)."""
    assert view.ranking is not None
    state = view.ranking.model.state
    user = next(u for u in sorted(view.feeds.user_row) if state.user_rows([u])[0] < state.neutral_user)
    before_snapshot = float(state.state.user_events[state.user_rows([user])[0]])
    since = view.video_ids[[3, 4, 9]].tolist()
    activity = UserActivity(
        seen=set(since),
        recent=since,
        liked=since[1:2],
        watches=3,
        completion_sum=2.4,
        profile=UserProfile(watched=view.video_ids[20:60].tolist()),  # posted: a history the lake already counts
    )
    before, after = Capture("before"), Capture("after")
    start, end = view.feeds.bounds(user) or (0, 0)
    cursor = pager.Cursor(view.snapshot_id, user, "feed", end - start)
    policy = FeedPolicy(feed_length=view.build.feed_length)
    vector = view.batch_vector(user)
    page = pager.next_page(view, cursor, 20, activity, lambda: vector, policy, watched(before, after))
    assert page.source == "live" and len(page.items) == 20
    assert after.user_events[("live", "<own>")] == before_snapshot + 3
    assert not set(since) & {i.video_id for i in page.items}


@pytest.mark.slow
def test_a_user_the_batch_did_not_embed_is_ranked_on_their_live_history_alone(view: SnapshotView) -> None:
    """Whether the snapshot knows a user is one rule (``SnapshotView.knows_user``: the batch embedded them), for the
    pager that picks which history to hand the ranker and for the ranker that reads it. A user without a batch
    vector is handed their whole live history, so it stands alone, even where the ranker's state has a row of
    theirs: added to that row it would count what the row holds twice."""
    assert view.ranking is not None
    state = view.ranking.model.state
    user = next(u for u in sorted(view.feeds.user_row) if state.user_rows([u])[0] < state.neutral_user)
    assert state.state.user_events[state.user_rows([user])[0]] > 0
    view.user_row = {u: row for u, row in view.user_row.items() if u != user}  # the batch left them out
    assert not view.knows_user(user)
    since = view.video_ids[[3, 4, 9]].tolist()
    activity = UserActivity(seen=set(since), recent=since, liked=since[1:2], watches=3, completion_sum=2.4)
    before, after = Capture("before"), Capture("after")
    start, end = view.feeds.bounds(user) or (0, 0)
    cursor = pager.Cursor(view.snapshot_id, user, "feed", end - start)
    policy = FeedPolicy(feed_length=view.build.feed_length)
    vector = pager.live_vector(view, user, activity)  # the user tower over their live history, as the API does
    assert vector is not None
    page = pager.next_page(view, cursor, 20, activity, lambda: vector, policy, watched(before, after))
    assert page.source == "live" and len(page.items) == 20
    assert after.user_events[("live", "<own>")] == 3


@pytest.mark.slow
def test_ranked_feeds_keep_the_towers_scores_but_not_their_order(world: Path) -> None:
    """Each feed item's score is still the model's ``user . video`` (traceable), and the build records the ranker;
    the order is the ranker's, so the towers' order checks find what it moved."""
    scored, feeds = _scored_snapshot(world)
    problems, _ = score_problems(feeds, scored)
    assert not [p for p in problems if "not user . video" in p]
    assert sum("follows rank" in p or "rank 0 scores" in p for p in problems) >= 0.5 * len(scored.seen), problems[:3]
    settings = Settings.load({"REC_DATA_DIR": str(world)})
    live = live_snapshot(settings.paths)
    assert live is not None
    build = json.loads(live.build_file.read_text())
    manifest = json.loads(live.manifest_file.read_text())
    assert build["ranker"]["applied"] and manifest["ranker"] == build["ranker"]
    assert build["ranker"]["objective"] in {"binary", "lambdarank"}
    assert {f"rank/{name}" for name in ("ranker.txt", "ranker.json", "users.parquet")} <= set(manifest["checksums"])


N_POPULAR = 30


@pytest.mark.slow
def test_batch_and_live_give_a_ranker_the_popular_videos_it_was_trained_on(world_copy: Path) -> None:
    """A ranker trained on the towers' top 100 and the 30 most popular videos: the batch lays each user's first part
    out as [top 100 | popular not in it | the rest], the live continuation lays a search answer out the same way,
    and the ranker's order over those 130 is the same in both; some popular videos rank into the top 100."""
    settings = Settings.load({"REC_DATA_DIR": str(world_copy), **WORLD_SETTINGS})
    live = live_snapshot(settings.paths)
    version = ModelStore(settings.paths.models_dir).current()
    assert live is not None and version is not None
    ranker = snapshot_ranker(
        settings.paths, live, days=5.0, n=N_CANDIDATES, max_users=300, config=FAST, n_popular=N_POPULAR
    )
    ranker.save(settings.paths.models_dir / version)
    run_stages(settings, between("begin_snapshot", "publish"), {"video_shards": 1, "user_shards": 1})
    live = live_snapshot(settings.paths)
    assert live is not None
    view = load_view(settings.paths, live)
    try:
        assert view.ranking is not None and view.ranking.model.ranker.n_popular == N_POPULAR
        popular = view.video_ids[view.ranking.popular_codes].tolist()
        assert len(popular) == N_POPULAR
        before, after = Capture("before"), Capture("after")
        batch.materialize_feeds(settings, view.snapshot_id, 0, watched(before, after))
        n, width = N_CANDIDATES, N_CANDIDATES + N_POPULAR
        users = history_users(before)
        assert len(users) >= 100
        lifted = 0
        for user in users:
            ids, _ = before.cells[("batch", user)]
            assert not set(ids[:n]) & set(ids[n:width]) - {""}, "a popular video the top 100 holds is not repeated"
            assert set(ids[n:width]) - {""} <= set(popular)
            assert not set(ids[width:]) & set(ids[n:width]) - {""}, "nor is one of the rest that the popular part holds"
            order = after.cells[("batch", user)][0][:width]
            lifted += len(set(order[:n]) & set(ids[n:width]) - {""})
        assert lifted > 0, "the ranker moves popular videos into the top 100"

        policy = FeedPolicy(feed_length=view.build.feed_length)
        for user in users[:20]:
            hits, gone, offered = batch_as_live(view, before, user)
            live_ranked(view, watched(before, after), hits, user, user, policy, gone, offered)
            assert ranked(after, "live", user, width) == ranked(after, "batch", user, width), user
    finally:
        view.close()


@pytest.mark.slow
def test_ranker_off_builds_the_towers_feeds(world_copy: Path) -> None:
    """REC_RANKER=off on the same model (which carries a ranker) and lake: nothing of the ranker in the snapshot,
    and every feed follows the towers' scores again, as the feeds before the ranker did."""
    settings = Settings.load({"REC_DATA_DIR": str(world_copy), **WORLD_SETTINGS, "REC_RANKER": "off"})
    values = run_stages(settings, between("begin_snapshot", "publish"), {"video_shards": 1, "user_shards": 2})
    paths = snapshot_paths(settings.paths, values["snapshot_id"])
    build = paths.read_build()
    assert build.ranker == {"applied": False, "objective": None, "n_candidates": None, "why": "REC_RANKER=off"}
    assert not paths.rank_dir.exists() and build.model_files
    scored, feeds = _scored_snapshot(world_copy)
    assert set(feeds["user_id"].unique()) == set(scored.user_row)
    problems, _ = score_problems(feeds, scored)
    assert problems == []
