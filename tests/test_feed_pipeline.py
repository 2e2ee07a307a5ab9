"""One declared feed pipeline: the batch feed and the live continuation run the same stage objects and obey the same
rules, and a stage added to the pipeline reaches both (real snapshot, real Milvus Lite, no mocks)."""

from __future__ import annotations

import dataclasses
import inspect
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from feed_api import pager
from feed_api.snapshot_load import load_view
from feed_api.snapshot_view import SnapshotView
from rec_core.feed import batch
from rec_core.feed.block import CandidateBlock, FeedContext
from rec_core.feed.candidates import ExclusionCSR
from rec_core.feed.cursor import Cursor
from rec_core.feed.filters import Duplicates, OwnVideos, Seen
from rec_core.feed.live import rank_live
from rec_core.feed.pipeline import FEED_PIPELINE, FeedPipeline
from rec_core.feed.policy import MS_PER_DAY, FeedPolicy, apply
from rec_core.settings import Settings
from rec_core.snapshot.layout import snapshot_paths

AS_OF_MS = 1_740_787_200_000  # 2025-03-01


# ---- stages a test adds: real filters, written as any new rule would be ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class DropCreator:
    """Never a video of one creator (by id, so it means the same in the batch's and the live code spaces)."""

    creator_id: str
    name: str = "drop_creator"

    def mask(self, block: CandidateBlock, ctx: FeedContext) -> np.ndarray:
        return ctx.creator_ids[np.maximum(block.creator, 0)] != self.creator_id


@dataclasses.dataclass(frozen=True)
class DropVideo:
    video_id: str
    name: str = "drop_video"

    def mask(self, block: CandidateBlock, ctx: FeedContext) -> np.ndarray:
        return ctx.video_ids[np.maximum(block.video, 0)] != self.video_id


@dataclasses.dataclass(frozen=True)
class Recorder:
    """Keeps everything and notes who asked: ("batch" or "live", rows of the block)."""

    calls: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    name: str = "recorder"

    def mask(self, block: CandidateBlock, ctx: FeedContext) -> np.ndarray:
        # Only the live path knows what its walk served already.
        self.calls.append(("live" if ctx.served is not None else "batch", block.rows))
        return np.ones(block.video.shape, dtype=bool)


# ---- the declaration ------------------------------------------------------------------------------------------------


def test_both_paths_run_the_declared_pipeline_by_default() -> None:
    assert [f.name for f in FEED_PIPELINE.filters] == ["own_videos", "seen", "duplicates"]
    assert [s.name for s in FEED_PIPELINE.stages][-2:] == ["policy", "reasons"]
    for entry in (batch.materialize_feeds, batch.build_trending, batch.select_feeds, pager.next_page):
        assert inspect.signature(entry).parameters["pipeline"].default is FEED_PIPELINE, entry.__name__


def test_duplicates_agree_with_and_without_the_sources_promise() -> None:
    rng = np.random.default_rng(3)
    parts = [np.stack([rng.permutation(40)[:15] for _ in range(6)]) for _ in range(3)]
    video = np.concatenate(parts, axis=1)
    video[rng.random(video.shape) < 0.1] = -1
    block = CandidateBlock(
        users=np.arange(6),
        video=video,
        score=np.zeros(video.shape, np.float32),
        creator=video % 7,
        fresh=np.zeros(video.shape, bool),
    )
    ctx = FeedContext(
        FeedPolicy(feed_length=10),
        np.arange(40).astype(str),
        np.arange(7).astype(str),
        np.full(6, 3),
        ExclusionCSR.empty(6),
    )
    promised = dataclasses.replace(block, unique_parts=(0, 15, 30, 45))
    plain = Duplicates().mask(block, ctx) & (video >= 0)
    assert (Duplicates().mask(promised, ctx) & (video >= 0) == plain).all()
    for r in range(6):
        kept = video[r][plain[r]]
        assert len(kept) == len(set(kept.tolist())) == len(set(video[r][video[r] >= 0].tolist()))
    assert not (OwnVideos().mask(block, ctx) & (video % 7 == 3) & (video >= 0)).any()
    seen = dataclasses.replace(ctx, seen=ExclusionCSR.from_pairs(np.arange(6), video[:, 0] % 40, 6))
    assert not Seen().mask(block, seen)[np.arange(6), 0][video[:, 0] >= 0].any()


@given(seed=st.integers(0, 10_000), rows=st.integers(1, 12), width=st.integers(1, 30), n_videos=st.integers(1, 50))
def test_the_batchs_compiled_membership_is_the_sets_and_the_live_paths_answer(
    seed: int, rows: int, width: int, n_videos: int
) -> None:
    """Seen and Duplicates over a block of rows (the batch's compiled pass) give, row by row, what Python sets
    give and what the same filters give one row at a time (the live path's code)."""
    rng = np.random.default_rng(seed)
    video = rng.integers(-1, n_videos, size=(rows, width))
    users = rng.permutation(rows + 3)[:rows]
    pairs = rng.integers(0, n_videos, size=(2, 4 * rows))
    pairs[0] %= rows + 3
    sets = ExclusionCSR.from_pairs(pairs[0], pairs[1], rows + 3)
    block = CandidateBlock(
        users=users,
        video=video,
        score=np.zeros(video.shape, np.float32),
        creator=np.zeros(video.shape, np.int64),
        fresh=np.zeros(video.shape, bool),
    )
    ctx = FeedContext(
        FeedPolicy(feed_length=10),
        np.arange(n_videos).astype(str),
        np.arange(1).astype(str),
        np.full(rows + 3, -1),
        sets,
        served=sets,
    )
    seen, fresh = Seen().mask(block, ctx), Duplicates().mask(block, ctx)
    for r, u in enumerate(users):
        held, taken = set(sets.row(u).tolist()), set(sets.row(u).tolist())
        for c, v in enumerate(video[r].tolist()):
            assert seen[r, c] == (v not in held)  # a keep-mask
            if v >= 0:  # -1 is no video: the pipeline drops it whatever a filter says
                assert fresh[r, c] == (v not in taken)
            taken.add(v)
        one = dataclasses.replace(block, users=users[r : r + 1], video=video[r : r + 1])
        live_keep = video[r] >= 0
        assert (Seen().mask(one, ctx)[0] & live_keep == seen[r] & live_keep).all()
        assert (Duplicates().mask(one, ctx)[0] & live_keep == fresh[r] & live_keep).all()
    with pytest.raises(ValueError, match="outside a catalogue"):
        sets.contains(np.array([0, 1]), np.full((2, 1), n_videos), n_videos)  # two rows: the batch's pass


@given(
    n=st.integers(1, 60),
    seed=st.integers(0, 10_000),
    need=st.integers(1, 30),
    n_seen=st.integers(0, 10),
)
def test_live_ranking_is_the_policy_the_api_applied_before(n: int, seed: int, need: int, n_seen: int) -> None:
    """The live path through the pipeline picks what ``policy.apply`` picks (ties in score included)."""
    rng = np.random.default_rng(seed)
    catalogue = np.array([f"v{i:03d}" for i in range(80)], dtype=object)
    code = {v: i for i, v in enumerate(catalogue.tolist())}
    ids = [*rng.choice(catalogue, size=n, replace=False).tolist()]
    ids[-1] = "posted-1" if n > 3 else ids[-1]  # a video posted since the snapshot: outside its code space
    hits = [(v, float(rng.integers(0, 5))) for v in ids]  # few distinct scores: many ties
    creators = [f"c{c}" for c in rng.integers(0, 4, size=n)]
    created = [int(AS_OF_MS - rng.integers(0, 6) * MS_PER_DAY) for _ in ids]
    seen = set(rng.choice(ids, size=min(n_seen, n), replace=False).tolist())
    policy = FeedPolicy(feed_length=min(need, n), fresh_share=0.25)
    expect = apply(
        ids, creators, created, user_id="c1", seen=seen, as_of=AS_OF_MS, policy=policy, scores=[h[1] for h in hits]
    )
    got = rank_live(
        FEED_PIPELINE,
        hits,
        creators,
        created,
        user_id="c1",
        seen=set(list(seen)[: len(seen) // 2]),
        served=set(list(seen)[len(seen) // 2 :]),
        codes=np.array([code.get(v, -1) for v in ids]),
        video_ids=catalogue,
        as_of_ms=AS_OF_MS,
        policy=policy,
        trending_query=False,
    )
    assert [i.video_id for i in got] == [ids[i] for i in expect.tolist()]
    assert {i.reason for i in got} <= {pager.LIVE_REASON}


# ---- a real snapshot: batch feed and live continuation --------------------------------------------------------------


@pytest.fixture
def world_copy(api_world: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(api_world.parent / "pristine", data)
    return data


@pytest.fixture
def view(world_copy: Path) -> Iterator[SnapshotView]:
    settings = Settings.load({"REC_DATA_DIR": str(world_copy)})
    live = (world_copy / "snapshots" / "LIVE").read_text().strip()
    loaded = load_view(settings.paths, snapshot_paths(settings.paths, live))
    try:
        yield loaded
    finally:
        loaded.close()


USER = "u0000004"
LIMIT = 60


def continuation(view: SnapshotView, pipeline: FeedPipeline = FEED_PIPELINE) -> list[pager.Item]:
    """The user's live page right after their precomputed feed ends."""
    start, end = view.feeds.bounds(USER) or (0, 0)
    assert end > start, f"{USER} has no precomputed feed in this world"
    cursor = Cursor(view.snapshot_id, USER, "feed", end - start)
    policy = FeedPolicy(feed_length=view.build.feed_length)
    page = pager.next_page(view, cursor, LIMIT, None, lambda: view.batch_vector(USER), policy, pipeline)
    assert page.source == "live"
    return page.items


def batch_feeds(world: Path, view: SnapshotView, pipeline: FeedPipeline) -> pl.DataFrame:
    settings = Settings.load({"REC_DATA_DIR": str(world)})
    shards = view.build.user_shards
    for shard in range(shards):
        batch.materialize_feeds(settings, view.snapshot_id, shard, pipeline)
    paths = snapshot_paths(settings.paths, view.snapshot_id)
    return pl.concat([pl.read_parquet(paths.feed_part(s, shards)) for s in range(shards)])


@pytest.mark.slow
def test_a_stage_added_to_the_pipeline_reaches_the_batch_and_the_live_continuation(
    world_copy: Path, view: SnapshotView
) -> None:
    creator_of = dict(zip(view.video_ids.tolist(), view.creator_ids.tolist(), strict=True))
    default_live = continuation(view)
    default_batch = batch_feeds(world_copy, view, FEED_PIPELINE)
    feed_length = view.build.feed_length
    assert len(default_live) == LIMIT

    # A keep-all stage: called by both paths, and the feeds are the same to the byte.
    recorder = Recorder()
    before = {p.name: p.read_bytes() for p in (world_copy / "snapshots" / view.snapshot_id / "feeds").iterdir()}
    batch_feeds(world_copy, view, FEED_PIPELINE.with_filter(recorder))
    assert {p.name: p.read_bytes() for p in (world_copy / "snapshots" / view.snapshot_id / "feeds").iterdir()} == before
    assert [i.video_id for i in continuation(view, FEED_PIPELINE.with_filter(recorder))] == [
        i.video_id for i in default_live
    ]
    paths = {path for path, _ in recorder.calls}
    assert paths == {"batch", "live"}, recorder.calls[:5]
    assert max(rows for _, rows in recorder.calls) > 1  # the batch filters many users a block

    # Drop the creator of the user's first live item, and a video of another creator from further down.
    creator = creator_of[default_live[0].video_id]
    video = next(i.video_id for i in default_live[1:] if creator_of[i.video_id] != creator)
    assert (
        default_batch.join(
            pl.DataFrame({"video_id": list(creator_of), "creator_id": list(creator_of.values())}), on="video_id"
        )
        .filter(pl.col("creator_id") == creator)
        .height
    ), "the creator must be in the default batch feeds to test anything"
    custom = FEED_PIPELINE.with_filter(DropCreator(creator)).with_filter(DropVideo(video))

    feeds = batch_feeds(world_copy, view, custom)
    creators = feeds["video_id"].replace_strict(creator_of, default="")
    assert not (creators == creator).any() and not (feeds["video_id"] == video).any()
    assert (feeds.group_by("user_id").len()["len"] == feed_length).all(), "the feeds stay full without them"
    assert set(feeds["user_id"]) == set(default_batch["user_id"])

    live = continuation(view, custom)
    assert len(live) == LIMIT, "the live page stays full without them"
    assert not {creator_of.get(i.video_id) for i in live} & {creator}
    assert video not in {i.video_id for i in live}
