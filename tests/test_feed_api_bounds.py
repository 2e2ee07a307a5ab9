"""Every in-memory structure of the feed API that grows with traffic has a bound (docs/architecture.md, invariant 9).

A flood of events for one user, users past the cap, posted videos past the cap, and a
restart over a big inbox: sizes stay at their bounds and memory stays flat.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from feed_api.app import _as_api_error
from feed_api.batcher import Busy
from feed_api.bodies import EventIn, RecommendationsIn, VideoIn
from feed_api.errors import ApiError
from feed_api.live_updates import LiveUpdates
from feed_api.reader import FeedReader
from feed_api.telemetry import Metrics
from feed_api.user_state import RECENT_CAP, UserStates
from rec_core.data.inbox import iter_kind, read_new
from rec_core.model.inference import UserProfile
from rec_core.settings import Settings
from tests.conftest import ApiServer
from tests.test_feed_api import page


def flood(states: UserStates, n: int, offset: int = 0) -> None:
    kinds = ("watch", "like", "skip", "share", "watch")
    for i in range(offset, offset + n):
        event = {
            "user_id": "flooder",
            "video_id": f"v{i}",
            "type": kinds[i % 5],
            "watch_time_s": 3.0,
            "completion": 0.9 if i % 3 == 0 else 0.2,
        }
        states.apply_event(event, f"2026-03-01T12:00:{i % 60:02d}+00:00")


def rss_mib() -> float:
    """This process's resident memory now (not the high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_a_million_events_for_one_user_keep_memory_flat() -> None:
    """Resident memory rather than tracemalloc, which would make this flood six times slower."""
    states = UserStates(max_users=10, max_videos=2_000)
    flood(states, 100_000)  # past every bound: what is kept from here on only turns over
    gc.collect()
    warm = rss_mib()
    flood(states, 900_000, offset=100_000)
    gc.collect()
    after = rss_mib()
    activity = states.copy_of("flooder")
    assert activity is not None
    assert len(activity.seen) == 2_000 and "v999999" in activity.seen and "v0" not in activity.seen
    assert len(activity.positive) <= 2_000 and "v999999" in activity.positive
    assert len(activity.liked) <= 2_000 and len(activity.recent) <= RECENT_CAP
    assert activity.watches == 800_000  # the counters still count everything
    assert states.replay_keys() <= states.max_replay_keys
    print(f"\nresident memory after 100k events {warm:.1f} MiB, after 1,000,000 {after:.1f} MiB")
    # Unbounded, the same flood grew the traced heap by 103 MiB (1M seen ids, 600k positive, 200k liked);
    # bounded, tracemalloc measured 22.3 MiB after 100k and after 1M events. Resident memory also moves with
    # the allocator's arenas, hence the margin.
    assert after - warm < 24, f"memory grew {after - warm:.1f} MiB between 100k and 1M events"


def test_seen_is_insertion_ordered_and_a_replayed_record_applies_once() -> None:
    states = UserStates(max_users=10, max_videos=3)
    for i, video in enumerate(["a", "b", "c", "a", "d"]):
        states.apply_event({"user_id": "u", "video_id": video, "type": "watch"}, f"t{i}")
    states.apply_event({"user_id": "u", "video_id": "d", "type": "watch"}, "t4")  # the same record again
    activity = states.copy_of("u")
    assert activity is not None
    assert activity.seen == {"b", "c", "d"} and activity.watches == 5  # "a" was seen first: it left first


def test_users_past_the_cap_are_forgotten_least_recent_first() -> None:
    states = UserStates(max_users=3, max_videos=10)
    for user in ["u1", "u2", "u3"]:
        states.apply_event({"user_id": user, "video_id": "v", "type": "watch"}, "t")
    states.copy_of("u1")  # a read counts as activity
    states.apply_event({"user_id": "u4", "video_id": "v", "type": "watch"}, "t")
    assert len(states) == 3 and states.copy_of("u2") is None and states.copy_of("u1") is not None


def test_posted_profiles_past_the_id_budget_are_forgotten_least_recently_posted_first() -> None:
    """A profile may list 30,000 ids; the workers' users cap alone would let them hold 200,000 of those. Past the
    budget the oldest posted profile goes, while the user's events since the batch stay."""
    states = UserStates(max_users=10, max_videos=100, max_profile_ids=250)

    def profile(n: int) -> UserProfile:
        return UserProfile(watched=[f"w{i}" for i in range(n)], liked=["w0"], followed=["c1"])

    states.apply_event({"user_id": "u1", "video_id": "e1", "type": "like"}, "t")
    for user in ("u1", "u2"):
        states.set_profile(user, profile(98))  # 100 ids each
    states.set_profile("u2", profile(48))  # posted again, smaller: counted once, at its new size
    assert (states.profiles(), states.profile_ids) == (2, 150)
    before = states.copy_of("u1")
    states.set_profile("u3", profile(148))  # 150 more: 300 > 250, so u1's (the oldest) goes
    assert (states.profiles(), states.profile_ids) == (2, 200)
    u1 = states.copy_of("u1")
    assert u1 is not None and before is not None and u1.profile is None and before.profile is not None
    assert u1.liked == ["e1"] and u1.version != before.version, "its events stay; its live vector is recomputed"
    assert states.copy_of("u2").profile is not None and states.copy_of("u3").profile is not None  # type: ignore[union-attr]
    for user in [f"u{i}" for i in range(4, 14)]:  # ten more users than max_users allows: u1..u3 forgotten
        states.apply_event({"user_id": user, "video_id": "v", "type": "watch"}, "t")
    assert (states.profiles(), states.profile_ids) == (0, 0), "a forgotten user's profile leaves the count"


# ---- the service over a real published world ------------------------------------------------------------------


@pytest.fixture
def world_copy(api_world: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(api_world.parent / "pristine", data)
    return data


@dataclass(frozen=True)
class Services:
    """The two halves of the API as the app wires them: the read path and the live-update side."""

    reader: FeedReader
    updates: LiveUpdates


@asynccontextmanager
async def running(data: Path, **env: str) -> AsyncIterator[Services]:
    """Started services (batchers, background thread) serving the published snapshot under ``data``."""
    settings = Settings.load({"REC_DATA_DIR": str(data), "REC_API_RELOAD_MS": "100", **env})
    telemetry = Metrics()
    updates = LiveUpdates(settings.paths, settings.batch, settings.model, settings.api, telemetry)
    reader = FeedReader(
        settings.paths, settings.batch, settings.api, updates.registry, telemetry, activity=updates.activity
    )
    await updates.start()
    try:
        for _ in range(1200):
            if updates.ready:
                break
            await asyncio.sleep(0.1)
        assert updates.ready, updates.registry.last_error
        yield Services(reader, updates)
    finally:
        await updates.stop()


def video(video_id: str, caption: str = "a kitten climbs the stairs") -> VideoIn:
    return VideoIn(
        video_id=video_id,
        caption=caption,
        hashtags=["cats"],
        duration=12.0,
        width=720,
        height=1280,
        user_followers=10,
        user_likes=20,
    )


def inbox_videos(data: Path) -> list[str]:
    return [r.data["video_id"] for r in iter_kind(read_new(data / "inbox", {}), "video")]


def test_a_posted_id_that_exists_is_refused_before_anything_is_written(world_copy: Path) -> None:
    async def scenario() -> None:
        async with running(world_copy) as api:
            catalogued = str(api.reader.live_view().video_ids[0])
            first = await api.updates.add_video(video("fresh-1"))
            again = await api.updates.add_video(video("fresh-1"))  # the same body: a retry, answered the same
            assert again.embedding == first.embedding and inbox_videos(world_copy) == ["fresh-1"]
            for vid in ("fresh-1", catalogued):
                with pytest.raises(ApiError) as refused:
                    await api.updates.add_video(video(vid, "something else entirely"))
                assert (refused.value.status, refused.value.code, refused.value.field) == (
                    409,
                    "video_exists",
                    "video_id",
                )
            assert inbox_videos(world_copy) == ["fresh-1"], "a refused post writes nothing"
            changed = await api.updates.add_video(video(catalogued, "something else entirely"), may_update=True)
            assert changed.embedding != first.embedding
            assert inbox_videos(world_copy) == ["fresh-1", catalogued]
            # Two racing posts of one new id with different bodies: one wins, the other is refused.
            racing = await asyncio.gather(
                api.updates.add_video(video("race", "one")),
                api.updates.add_video(video("race", "two")),
                return_exceptions=True,
            )
            assert sorted(type(r).__name__ for r in racing) == ["ApiError", "VideoOut"]

    asyncio.run(scenario())


def test_writes_past_the_waiting_bound_are_refused_at_once_and_none_of_them_is_kept(
    world_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that stalls under a flood: past REC_API_WRITES_WAITING_MAX waiting writes the next is refused at
    once (503 busy, Retry-After) instead of queueing without end; the waiting ones are all kept once it recovers."""

    async def scenario() -> None:
        async with running(world_copy, REC_API_WRITES_WAITING_MAX="2") as api:
            stall = threading.Event()
            disk = api.updates.inbox.append_many

            def stalled(records: list, at: object = None) -> None:  # the disk stalls; the logic is the real one
                stall.wait(30)
                disk(records, at)

            monkeypatch.setattr(api.updates.inbox, "append_many", stalled)

            def write(i: int) -> asyncio.Task:
                return asyncio.ensure_future(
                    api.updates.add_events([EventIn(user_id="u-flood", video_id=f"v{i}", type="watch")])
                )

            first = write(0)  # the batch in flight, held by the disk
            await asyncio.sleep(0.2)
            waiting = [write(1), write(2)]
            await asyncio.sleep(0.1)
            with pytest.raises(Busy) as refused:
                await api.updates.add_events([EventIn(user_id="u-flood", video_id="v3", type="watch")])
            answer = _as_api_error(refused.value)
            assert (answer.status, answer.code, answer.headers) == (503, "busy", {"Retry-After": "1"})
            stall.set()
            assert [r.accepted for r in await asyncio.gather(first, *waiting)] == [1, 1, 1]
            await write(4)  # room again
            kept = [r.data["video_id"] for r in iter_kind(read_new(world_copy / "inbox", {}), "event")]
            assert kept == ["v0", "v1", "v2", "v4"], "the refused write left nothing"

    asyncio.run(scenario())


def test_posted_videos_past_the_cap_leave_live_search_first_in_first_out(world_copy: Path) -> None:
    async def scenario() -> None:
        async with running(world_copy, REC_API_POSTED_VIDEOS_MAX="2") as api:
            view = api.reader.live_view()
            vectors = {}
            for i, caption in enumerate(["sourdough bread", "a cat naps", "mountain bike jump"]):
                vectors[f"p{i}"] = np.asarray((await api.updates.add_video(video(f"p{i}", caption))).embedding)
            assert set(view.added.vectors) == {"p1", "p2"} and api.updates.posted.ids() == ["p1", "p2"]
            hits = {v for v, _ in view.store.search(vectors["p0"].astype(np.float32), 50)[0]}
            assert "p0" not in hits and not view.known_video("p0"), "the oldest post left live search"
            assert inbox_videos(world_copy) == ["p0", "p1", "p2"], "it is still in the inbox for the next batch"

    asyncio.run(scenario())


def test_an_expired_cursor_is_410_with_a_restart_hint(world_copy: Path) -> None:
    async def scenario() -> None:
        async with running(world_copy) as api:
            first = await api.reader.recommend(RecommendationsIn(user_id="u0000010", limit=5))
            assert first.next_cursor is not None
            cursor = api.reader.signer.decode(first.next_cursor, user_id="u0000010")
            stale = api.reader.signer.encode(cursor, now=time.time() - api.reader.api.cursor_ttl_s - 60)
            with pytest.raises(ApiError) as expired:
                await api.reader.recommend(RecommendationsIn(user_id="u0000010", limit=5, cursor=stale))
            assert (expired.value.status, expired.value.code, expired.value.field) == (410, "cursor_expired", "cursor")
            assert "cursor null" in (expired.value.hint or "")

    asyncio.run(scenario())


def test_a_new_snapshot_drops_the_activity_its_batch_took_in(world_copy: Path) -> None:
    """What the new snapshot's batch read from the inbox is in its feeds: the user state lets go of it, and
    keeps what came after."""
    from rec_core.stages import run_all

    settings = Settings.load({"REC_DATA_DIR": str(world_copy), "REC_FEED_LENGTH": "200", "REC_SNAPSHOTS_KEEP": "2"})

    async def scenario() -> None:
        async with running(world_copy, REC_FEED_LENGTH="200", REC_SNAPSHOTS_KEEP="2") as api:
            first = api.reader.live_view().snapshot_id
            items = (await api.reader.recommend(RecommendationsIn(user_id="u0000012", limit=2))).items
            before, after = items[0].video_id, items[1].video_id
            await api.updates.add_events([EventIn(user_id="u0000012", video_id=before, type="watch", completion=0.9)])
            second = await asyncio.to_thread(run_all, settings, retrain=False, video_shards=1, user_shards=1)
            await api.updates.add_events([EventIn(user_id="u0000012", video_id=after, type="like")])
            activity = None
            for _ in range(300):  # the new snapshot goes live, then the state follows it
                live = api.updates.registry.live
                activity = api.updates.users.copy_of("u0000012")
                if live is not None and live.snapshot_id == second and activity and activity.seen == {after}:
                    break
                await asyncio.sleep(0.1)
            assert second != first
            assert activity is not None and activity.seen == {after}, "the batch took `before` in, not `after`"
            page = await api.reader.recommend(RecommendationsIn(user_id="u0000012", limit=50))
            assert page.snapshot_id == second and not {before, after} & {i.video_id for i in page.items}

    asyncio.run(scenario())


# ---- over HTTP -------------------------------------------------------------------------------------------------


def server_rss_mib(server: ApiServer) -> float:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_an_http_flood_for_one_user_and_a_restart_replay_in_small_passes(world_copy: Path) -> None:
    server = ApiServer(world_copy, api_user_videos_max="500", api_inbox_read_bytes="4096").start()
    try:
        newest = [i["video_id"] for i in page(server, "flooder", limit=5)["items"]]
        rss = []
        for lo in (0, 10_000):
            events = [{"user_id": "flooder", "video_id": f"x{i}", "type": "watch"} for i in range(lo, lo + 10_000)]
            if lo:
                events[-len(newest) :] = [{"user_id": "flooder", "video_id": v, "type": "watch"} for v in newest]
            r = httpx.post(f"{server.url}/events", json={"events": events}, timeout=120)
            assert r.status_code == 200 and r.json()["accepted"] == 10_000, r.text
            rss.append(server_rss_mib(server))
        print(f"\nAPI resident memory after 10,000 events {rss[0]:.1f} MiB, after 20,000 {rss[1]:.1f} MiB")
        assert rss[1] - rss[0] < 64
        assert not set(newest) & {i["video_id"] for i in page(server, "flooder", limit=20)["items"]}
        server.kill()
        server.start()  # replays 20,000 events (about 1.4 MB) in passes of 4 KiB
        assert not set(newest) & {i["video_id"] for i in page(server, "flooder", limit=20)["items"]}
    finally:
        server.stop()
