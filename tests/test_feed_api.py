"""Contract tests of the feed API over real HTTP: a real published snapshot, real Milvus Lite, the real server."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import ApiServer

pytestmark = pytest.mark.slow


def live_id(data: Path) -> str:
    return (data / "snapshots" / "LIVE").read_text().strip()


def feeds(data: Path, snapshot_id: str | None = None) -> pl.DataFrame:
    snap = data / "snapshots" / (snapshot_id or live_id(data))
    return pl.read_parquet(snap / "feeds" / "*.parquet").sort("user_id", "rank")


def videos(data: Path) -> pl.DataFrame:
    lake = data / "lake" / (data / "lake" / "CURRENT").read_text().strip()
    return pl.read_parquet(lake / "videos.parquet")


def vectors(data: Path, kind: str) -> dict[str, np.ndarray]:
    frame = pl.read_parquet(data / "snapshots" / live_id(data) / "vectors" / f"{kind}-*.parquet")
    ids = frame[frame.columns[0]].to_list()
    return dict(zip(ids, np.asarray(frame["vector"].to_list(), dtype=np.float32), strict=True))


def page(api: ApiServer, user_id: str, limit: int = 20, cursor: str | None = None) -> dict:
    r = httpx.post(
        f"{api.url}/recommendations", json={"user_id": user_id, "limit": limit, "cursor": cursor}, timeout=60
    )
    assert r.status_code == 200, r.text
    return r.json()


def walk(
    api: ApiServer, user_id: str, limit: int = 100, max_pages: int = 200, *, to_end: bool = True
) -> tuple[list[dict], list[dict]]:
    """The items and pages of a walk: to its end, or ``max_pages`` pages with ``to_end=False``."""
    items: list[dict] = []
    pages: list[dict] = []
    cursor = None
    for _ in range(max_pages):
        body = page(api, user_id, limit, cursor)
        pages.append(body)
        items += body["items"]
        if not body["has_more"]:
            assert body["next_cursor"] is None
            return items, pages
        cursor = body["next_cursor"]
    assert not to_end, "walk did not end"
    return items, pages


def error(r: httpx.Response, status: int, field: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["status"] == status and body["reason"]
    if field is not None:
        assert body["field"] == field, body
    if code is not None:
        assert body["code"] == code, body
    return body


# ---- ops endpoints ---------------------------------------------------------------------------------------------------


def test_health_ready_and_openapi(api: ApiServer, api_world: Path) -> None:
    assert httpx.get(f"{api.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{api.url}/ready").json()
    assert ready["snapshot_id"] == live_id(api_world)
    schema = httpx.get(f"{api.url}/schema/openapi.json").json()
    assert {"/recommendations", "/events", "/embeddings/video", "/embeddings/user"} <= set(schema["paths"])
    assert "limit" in json.dumps(schema["components"])


def test_metrics_count_requests_and_name_the_snapshot(api: ApiServer, api_world: Path) -> None:
    page(api, "u0000003")
    text = httpx.get(f"{api.url}/metrics").text
    assert 'feed_api_requests_total{method="POST",route="/recommendations",status="200"}' in text
    assert 'feed_api_request_seconds_bucket{method="POST",route="/recommendations",le="+Inf"}' in text
    assert f'snapshot_id="{live_id(api_world)}"' in text
    assert "feed_api_snapshot_age_seconds" in text and "feed_api_fallback_ratio" in text


# ---- how a page is chosen --------------------------------------------------------------------------------------------


def test_a_snapshot_user_gets_their_precomputed_feed_in_order(api: ApiServer, api_world: Path) -> None:
    feed = feeds(api_world).filter(pl.col("user_id") == "u0000004")
    body = page(api, "u0000004", limit=30)
    assert body["source"] == "precomputed" and body["snapshot_id"] == live_id(api_world)
    assert [i["video_id"] for i in body["items"]] == feed["video_id"].head(30).to_list()
    assert [i["reason"] for i in body["items"]] == feed["reason"].head(30).to_list()


def test_a_walk_is_endless_until_the_catalogue_is_exhausted(api: ApiServer, api_world: Path) -> None:
    user = "u0000005"
    items, pages = walk(api, user)
    ids = [i["video_id"] for i in items]
    assert len(ids) == len(set(ids)), "a walk served a video twice"
    feed = feeds(api_world).filter(pl.col("user_id") == user)["video_id"].to_list()
    assert ids[: len(feed)] == feed, "the precomputed feed comes first, whole and in order"
    catalogue = videos(api_world)
    own = set(catalogue.filter(pl.col("creator_id") == user)["video_id"].to_list())
    assert not own & set(ids), "a user was served their own video"
    # Everything else in the catalogue is served, less the videos the batch says they watched: their feed left
    # those out, and so does the live continuation past it.
    unserved = set(catalogue["video_id"].to_list()) - set(ids) - own
    watched = watched_before_the_batch(api_world, user)
    assert watched, "the test needs a user with a history"
    assert not watched & set(ids), f"{len(watched & set(ids))} videos watched before the batch served again"
    assert unserved == watched & set(catalogue["video_id"].to_list()) - own
    assert {p["source"] for p in pages} >= {"precomputed", "live"}


def watched_before_the_batch(data: Path, user: str) -> set[str]:
    """What ``user`` did before the live snapshot's as-of, read from its lake version: what their feed leaves out."""
    build = json.loads((data / "snapshots" / live_id(data) / "build.json").read_text())
    interactions = pl.read_parquet(data / "lake" / build["lake_version"] / "interactions.parquet")
    as_of = pl.lit(build["as_of"]).str.to_datetime(time_zone="UTC")
    return set(interactions.filter((pl.col("user_id") == user) & (pl.col("ts") < as_of))["video_id"].to_list())


def test_the_most_active_users_never_see_what_they_watched_before_the_batch(api: ApiServer, api_world: Path) -> None:
    """Past their feed, the most active users' walks go live, where only the snapshot's watch history says what
    they watched: without it, 44-50 of the first 50 live items were such videos."""
    lake = api_world / "lake" / (api_world / "lake" / "CURRENT").read_text().strip()
    active = pl.read_parquet(lake / "interactions.parquet")["user_id"].value_counts(sort=True)["user_id"].head(3)
    for user in active.to_list():
        items, pages = walk(api, user, limit=100, max_pages=4, to_end=False)
        assert pages[-1]["source"] == "live"
        assert not watched_before_the_batch(api_world, user) & {i["video_id"] for i in items}


def test_a_user_with_nothing_gets_trending(api: ApiServer, api_world: Path) -> None:
    trending = pl.read_parquet(api_world / "snapshots" / live_id(api_world) / "trending.parquet").sort("rank")
    body = page(api, "nobody-at-all", limit=25)
    assert body["source"] == "trending"
    assert [i["video_id"] for i in body["items"]] == trending["video_id"].head(25).to_list()
    assert {i["reason"] for i in body["items"]} == {"trending"}


def test_a_fresh_user_with_a_profile_gets_live_search_under_the_policy(api: ApiServer, api_world: Path) -> None:
    catalogue = videos(api_world)
    liked = catalogue["video_id"].head(5).to_list()
    r = httpx.post(
        f"{api.url}/embeddings/user",
        json={
            "user_id": "fresh-profile",
            "watched_videos": [*liked, "no-such-video"],
            "liked_videos": liked[:2],
            "followed_users": [catalogue["creator_id"][0], "ghost-creator"],
            "average_watch_time": 12.5,
            "completion_rate": 0.6,
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ignored_video_ids"] == ["no-such-video"] and body["unknown_followed_users"] == ["ghost-creator"]
    assert len(body["embedding"]) == 64 and abs(np.linalg.norm(body["embedding"]) - 1) < 1e-3

    items, pages = walk(api, "fresh-profile", limit=50, max_pages=3, to_end=False)
    assert pages[0]["source"] == "live"
    ids = [i["video_id"] for i in items]
    assert len(ids) == len(set(ids)) and not set(ids) & set(liked), "watched videos are never served"
    creators = dict(zip(catalogue["video_id"].to_list(), catalogue["creator_id"].to_list(), strict=True))
    first = [creators[v] for v in ids[:50]]
    assert all(first[i : i + 10].count(c) <= 2 for i in range(41) for c in set(first[i : i + 10])), "creator cap"


def test_events_change_the_next_page_at_once(api: ApiServer, api_world: Path) -> None:
    user = "u0000006"
    first = page(api, user, limit=10)["items"]
    watched = [i["video_id"] for i in first[:5]]
    r = httpx.post(
        f"{api.url}/events",
        json={"events": [{"user_id": user, "video_id": v, "type": "watch", "completion": 0.3} for v in watched]},
    )
    assert r.status_code == 200 and r.json() == {"accepted": 5}
    again = [i["video_id"] for i in page(api, user, limit=10)["items"]]
    assert not set(watched) & set(again)
    assert again[:5] == [i["video_id"] for i in first[5:]]


def test_likes_move_the_live_vector(api: ApiServer, api_world: Path) -> None:
    """A user with a vector and no feed: liking a cluster of videos pulls the live page towards it."""
    vids = vectors(api_world, "videos")
    catalogue = videos(api_world)
    start = catalogue["video_id"].head(3).to_list()
    httpx.post(f"{api.url}/embeddings/user", json={"user_id": "mover", "watched_videos": start}, timeout=60)
    before = [i["video_id"] for i in page(api, "mover", limit=20)["items"]]
    # Like the 10 videos least like what they were shown: a clear direction to move in.
    shown = np.mean([vids[v] for v in before], axis=0)
    far = sorted(vids, key=lambda v: float(vids[v] @ shown))[:10]
    events = [{"user_id": "mover", "video_id": v, "type": "like", "watch_time_s": 20, "completion": 1.0} for v in far]
    assert httpx.post(f"{api.url}/events", json={"events": events}).status_code == 200
    after = [i["video_id"] for i in page(api, "mover", limit=20)["items"]]
    target = np.mean([vids[v] for v in far], axis=0)
    # Closeness to the liked cluster as a rank among the whole catalogue, not as a cosine: the towers put every video
    # within a narrow band of cosines of this target (0.83-0.91 from the 10th to the 90th percentile on one machine),
    # so a fixed cosine margin measured how wide the band came out, not how far the page moved.
    closeness = np.sort([float(vids[v] @ target) for v in vids])

    def rank(ids: list[str]) -> float:
        return float(np.mean(np.searchsorted(closeness, [float(vids[v] @ target) for v in ids]) / len(closeness)))

    assert rank(after) > rank(before) + 0.2, (rank(before), rank(after))
    assert not set(far) & set(after)


def test_a_posted_video_is_searchable_at_once_and_idempotent(api: ApiServer, api_world: Path) -> None:
    video = {
        "video_id": "posted-1",
        "caption": "a tiny kitten learns to climb the stairs",
        "hashtags": ["cats", "#Kitten"],
        "duration": 14.0,
        "width": 1080,
        "height": 1920,
        "user_followers": 120,
        "user_likes": 3400,
    }
    first = httpx.post(f"{api.url}/embeddings/video", json=video, timeout=120)
    assert first.status_code == 200, first.text
    again = httpx.post(f"{api.url}/embeddings/video", json=video, timeout=60)
    assert again.json()["embedding"] == first.json()["embedding"]
    # A user whose live vector is the new video's own vector gets it first.
    from rec_core.data.inbox import iter_kind, read_new

    records = [r for r in iter_kind(read_new(api_world / "inbox"), "video") if r.data["video_id"] == "posted-1"]
    assert len(records) == 1, "an identical repost is acknowledged without a second inbox record"
    items, _ = walk(api, "someone-new-after-post", limit=100)
    assert "posted-1" in {i["video_id"] for i in items}, "the new video is part of the live catalogue"


def test_concurrent_video_posts_share_encoder_batches(api: ApiServer) -> None:
    import asyncio

    async def post_all() -> list[int]:
        async with httpx.AsyncClient(base_url=api.url, timeout=120) as client:
            bodies = [
                {
                    "video_id": f"burst-{i}",
                    "caption": f"burst video number {i}",
                    "hashtags": ["burst"],
                    "duration": 10.0,
                    "width": 720,
                    "height": 1280,
                    "user_followers": i,
                    "user_likes": i,
                }
                for i in range(24)
            ]
            rs = await asyncio.gather(*(client.post("/embeddings/video", json=b) for b in bodies))
            return [r.status_code for r in rs]

    assert asyncio.run(post_all()) == [200] * 24
    text = httpx.get(f"{api.url}/metrics").text
    counts = {
        line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("feed_api_video")
    }
    assert counts["feed_api_video_batches_total"] < counts["feed_api_videos_indexed_total"]


# ---- cursors ---------------------------------------------------------------------------------------------------------


def test_tampered_and_foreign_cursors_are_400(api: ApiServer) -> None:
    cursor = page(api, "u0000007", limit=5)["next_cursor"]
    flipped = cursor[:-3] + ("A" if cursor[-3] != "A" else "B") + cursor[-2:]
    for bad, code in [(flipped, "cursor_tampered"), ("not-a-cursor!", "cursor_invalid"), (cursor[:10], None)]:
        r = httpx.post(f"{api.url}/recommendations", json={"user_id": "u0000007", "cursor": bad})
        error(r, 400, "cursor", code)
    r = httpx.post(f"{api.url}/recommendations", json={"user_id": "u0000008", "cursor": cursor})
    error(r, 400, "cursor", "cursor_wrong_user")


# ---- bad input -------------------------------------------------------------------------------------------------------

BAD_PAGES = [
    ({"user_id": "u1", "limit": 0}, "limit"),
    ({"user_id": "u1", "limit": 101}, "limit"),
    ({"user_id": "u1", "limit": "ten"}, "limit"),
    ({"user_id": "x" * 129}, "user_id"),
    ({"user_id": "bad\nid"}, "user_id"),
    ({"user_id": ""}, "user_id"),
    ({"limit": 5}, "user_id"),
    ({"user_id": "u1", "colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("body", "field"), BAD_PAGES)
def test_bad_recommendation_requests_name_the_field(api: ApiServer, body: dict, field: str) -> None:
    error(httpx.post(f"{api.url}/recommendations", json=body), 400, field)


def test_limit_edges_are_accepted(api: ApiServer) -> None:
    assert len(page(api, "u0000009", limit=1)["items"]) == 1
    assert len(page(api, "u0000009", limit=100)["items"]) == 100


def test_bad_bodies(api: ApiServer) -> None:
    url = f"{api.url}/recommendations"
    as_json = {"content-type": "application/json"}
    error(httpx.post(url, content=b"{not json", headers=as_json), 400, "body")
    error(httpx.post(url, content=b"[1, 2]", headers=as_json), 400, "body")
    big = b'{"user_id": "' + b"x" * (1 << 20) + b'"}'
    error(httpx.post(url, content=big, headers=as_json), 413, "body", "body_too_large")

    def chunks():  # no Content-Length: the limit holds on the bytes actually streamed
        for _ in range(20):
            yield b" " * (1 << 17)

    error(httpx.post(url, content=chunks(), headers=as_json), 413, "body", "body_too_large")
    ids = [f"v{i}" for i in range(10_001)]
    error(
        httpx.post(f"{api.url}/embeddings/user", json={"user_id": "u1", "watched_videos": ids}), 400, "watched_videos"
    )
    error(
        httpx.post(f"{api.url}/embeddings/user", json={"user_id": "u1", "completion_rate": 1.5}), 400, "completion_rate"
    )
    bad_event = {"user_id": "u1", "video_id": "v1", "type": "stare"}
    error(httpx.post(f"{api.url}/events", json=bad_event), 400, "type")
    error(httpx.post(f"{api.url}/events", json={"events": [bad_event]}), 400, "events[0].type")
    error(httpx.post(f"{api.url}/events", json={"events": []}), 400, "events")
    video = {"video_id": "v", "caption": "c", "hashtags": ["a b"], "duration": 1, "width": 1, "height": 1}
    error(httpx.post(f"{api.url}/embeddings/video", json={**video, "user_followers": 0, "user_likes": 0}), 400)
    error(httpx.post(f"{api.url}/embeddings/video", json={**video, "hashtags": ["ok"]}), 400, "user_followers")
    error(httpx.get(f"{api.url}/nowhere"), 404)
    error(httpx.get(f"{api.url}/recommendations"), 405)


def test_the_fast_path_and_litestars_handler_answer_alike(api: ApiServer) -> None:
    """A body with Content-Length takes feed_api.page_route; a streamed one takes the documented handler."""
    url = f"{api.url}/recommendations"

    def streamed(body: dict):
        yield json.dumps(body).encode()

    json_type = {"content-type": "application/json"}

    for body in [{"user_id": "u0000011", "limit": 7}, {"user_id": "nobody-at-all", "limit": 3}]:
        fast, slow = httpx.post(url, json=body), httpx.post(url, content=streamed(body), headers=json_type)
        assert "content-length" not in slow.request.headers
        assert fast.status_code == slow.status_code == 200
        assert fast.headers["content-type"].startswith("application/json")
        assert [i["video_id"] for i in fast.json()["items"]] == [i["video_id"] for i in slow.json()["items"]]
    for body, field in BAD_PAGES:
        fast, slow = httpx.post(url, json=body), httpx.post(url, content=streamed(body), headers=json_type)
        assert fast.status_code == slow.status_code == 400, (body, fast.text, slow.text)
        assert fast.json()["error"]["field"] == slow.json()["error"]["field"] == field


# ---- walks, as properties ----------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=st.integers(100, 299), limits=st.lists(st.integers(1, 100), min_size=1, max_size=6))
# Found by the search: this user's nearest live videos past the feed are all one creator's, so one over-fetch
# left the page a video short under the creator cap.
@example(user=292, limits=[3, 100, 100])
def test_any_page_sizes_walk_the_same_feed_without_duplicates_or_gaps(
    api: ApiServer, api_world: Path, user: int, limits: list[int]
) -> None:
    user_id = f"u{user:07d}"  # users 100-299: no other test sends events for them
    feed = FEEDS_CACHE.setdefault("live", feeds(api_world))
    expected = feed.filter(pl.col("user_id") == user_id)["video_id"].to_list()
    served: list[str] = []
    cursor = None
    for limit in limits:
        body = page(api, user_id, limit, cursor)
        served += [i["video_id"] for i in body["items"]]
        cursor = body["next_cursor"]
    assert len(served) == len(set(served))
    n = min(len(served), len(expected))
    assert served[:n] == expected[:n], "pages of any size follow the feed exactly: no gap, no reorder"
    assert len(served) == sum(limits), "a walk never runs short while the catalogue lasts"
    assert cap_breaks(api_world, served) == [], "the creator cap holds across the pages of a walk"


def cap_breaks(data: Path, served: list[str]) -> list[int]:
    """Positions of a walk where the feed policy's creator cap is broken."""
    from rec_core.data.inbox import iter_kind, read_new
    from rec_core.feed.policy import FeedPolicy, check_feed

    creator = dict(videos(data).select("video_id", "creator_id").iter_rows())
    # Videos other tests posted since the snapshot: their creator as the API takes it (the video's own id without).
    for record in iter_kind(read_new(data / "inbox"), "video"):
        creator[record.data["video_id"]] = record.data.get("creator_id") or record.data["video_id"]
    return check_feed([creator[v] for v in served], FeedPolicy())


def test_the_creator_cap_holds_across_small_pages_past_the_feed(api: ApiServer, api_world: Path) -> None:
    """Each live page chose under the cap as if it started a feed: at a page boundary two more videos of a creator
    the page before ended with could follow (7-item pages: 18-27 breaks in 200 live items for each of these)."""
    for user in ("u0000010", "u0000030", "fresh-never-seen"):
        items, pages = walk(api, user, limit=7, max_pages=60, to_end=False)
        assert {"live", "mixed"} & {p["source"] for p in pages}
        assert cap_breaks(api_world, [i["video_id"] for i in items]) == [], user


FEEDS_CACHE: dict[str, pl.DataFrame] = {}
