"""The Milvus server path (REC_MILVUS_URI=http://host:port), end to end, against a server started here.

The server is milvus-lite's own server binary listening on a TCP address: it speaks
the Milvus gRPC protocol, so pymilvus talks to it exactly as to a Milvus standalone
(one collection per snapshot, drops, searches from several processes at once). What
this does NOT cover is a real Milvus standalone or cluster (its index types beyond
FLAT/IVF_FLAT/AUTOINDEX, consistency levels, replicas): none can be run here.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import psutil
import pytest

from tests.conftest import ONE_LABEL_WINDOW, ApiServer, free_port

pytestmark = [
    pytest.mark.slow,
    # milvus-lite 2.5.1 imports pkg_resources (the setuptools<81 pin is deliberate, see rec_core.snapshot.vector_store).
    pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning"),
]

RELOAD_MS = 300


@dataclasses.dataclass
class World:
    data: Path
    settings: object  # rec_core.settings.Settings
    url: str


def _server_log(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.is_file() else "(no log written)"


def _wait_for_port(port: int, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    """Until the server accepts TCP connections; fails at once, with its log, if it exits instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"milvus-lite server exited with {proc.returncode} before listening on {port}:\n{_server_log(log)}"
            )
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"no milvus-lite server listening on port {port} after {timeout}s:\n{_server_log(log)}")


@pytest.fixture(scope="module")
def milvus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """milvus-lite's server binary on a free TCP port, speaking the Milvus gRPC protocol; always stopped.

    Never skipped: milvus-lite==2.5.1 is a hard dependency of the project (no platform marker), and its wheel
    carries this binary, so wherever the project installs the binary is there. A binary that is missing, cannot
    start or never listens is a broken install and fails here with the server's own log.
    """
    from milvus_lite.server import Server

    root = tmp_path_factory.mktemp("milvus-server")
    port = free_port()
    server = Server(str(root / "server.db"), address=f"127.0.0.1:{port}")
    if not Path(server.milvus_bin).is_file():
        pytest.fail(f"milvus-lite's server binary is missing from the installed wheel: {server.milvus_bin}")
    # Started as milvus_lite.server.Server.start starts it (same arguments, its libraries first on the loader path),
    # but with stdout and stderr kept in a file, so that a failure can say why.
    log = root / "server.log"
    libs = str(Path(server.milvus_bin).parent)
    env = {**os.environ, "LD_LIBRARY_PATH": libs + os.pathsep + os.environ.get("LD_LIBRARY_PATH", "")}
    env["DYLD_LIBRARY_PATH"] = env["LD_LIBRARY_PATH"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(arg) for arg in server.args], env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_port(port, 30, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _client(url: str):
    # The product's own client options: pymilvus shares one connection per address in a process.
    from rec_core.snapshot.vector_store import open_client

    return open_client(url)


def _collection_rows(url: str, name: str) -> int | None:
    client = _client(url)
    try:
        if not client.has_collection(name):
            return None
        # Strong: a count right after an upsert must see it (the default, bounded staleness, may not).
        rows = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"])
    finally:
        client.close()


def _collections(url: str) -> list[str]:
    client = _client(url)
    try:
        return sorted(client.list_collections())
    finally:
        client.close()


@pytest.fixture(scope="module")
def world(milvus_url: str, tmp_path_factory: pytest.TempPathFactory) -> World:
    """A tiny world with one snapshot published by the real pipeline, its vectors on the server."""
    from rec_core.settings import Settings
    from rec_core.stages import run_all
    from rec_core.synthetic.commit import generate_data

    data = tmp_path_factory.mktemp("server-world") / "data"
    settings = Settings.load(
        {
            "REC_DATA_DIR": str(data),
            "REC_MILVUS_URI": milvus_url,
            "REC_FEED_LENGTH": "200",
            "REC_SNAPSHOTS_KEEP": "1",
            **ONE_LABEL_WINDOW,
        }
    )
    generate_data(settings, "tiny", seed=11)
    run_all(settings, epochs=1, video_shards=2, user_shards=2)
    return World(data, settings, milvus_url)


def live_id(data: Path) -> str:
    return (data / "snapshots" / "LIVE").read_text().strip()


def lake_videos(data: Path) -> pl.DataFrame:
    lake = data / "lake" / (data / "lake" / "CURRENT").read_text().strip()
    return pl.read_parquet(lake / "videos.parquet")


def collection_of(snapshot_id: str) -> str:
    return f"videos_{snapshot_id.replace('-', '_')}"


# ---- the batch ----------------------------------------------------------------------------------------------------


def test_pipeline_loads_one_collection_per_snapshot_and_prune_drops_it(world: World) -> None:
    from rec_core.snapshot.layout import snapshot_paths
    from rec_core.snapshot.manifest import read_manifest
    from rec_core.stages import run_all

    first = live_id(world.data)
    videos = lake_videos(world.data).height
    assert _collection_rows(world.url, collection_of(first)) == videos, "one row per video on the server"
    folder = world.data / "snapshots" / first
    assert not (folder / "milvus.db").exists(), "server mode writes no Milvus Lite file"
    assert not list(world.data.rglob("milvus*.db")), "no Milvus Lite file anywhere under the data root"
    manifest = read_manifest(snapshot_paths(world.settings.paths, first))
    assert manifest.milvus_uri == world.url and manifest.milvus_collection == collection_of(first)

    # REC_SNAPSHOTS_KEEP=1: publishing a second snapshot prunes the first, folder and collection.
    second = run_all(world.settings, retrain=False, video_shards=2, user_shards=2)
    assert second != first and live_id(world.data) == second
    assert not folder.exists(), "the first snapshot was pruned"
    assert _collection_rows(world.url, collection_of(first)) is None, "its collection was dropped from the server"
    assert _collection_rows(world.url, collection_of(second)) == videos
    assert collection_of(second) in _collections(world.url)
    assert not list(world.data.rglob("milvus*.db"))


# ---- the feed API, two workers on one server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(world: World) -> Iterator[ApiServer]:
    server = ApiServer(
        world.data,
        milvus_uri=world.url,
        api_workers="2",
        api_reload_ms=str(RELOAD_MS),
        feed_length="200",
        snapshots_keep="1",
    )
    try:
        server.start(timeout=240)
        _wait_for_workers(server, 2, timeout=240)
        yield server
    finally:
        server.stop()


def _wait_for_workers(server: ApiServer, workers: int, timeout: float) -> None:
    """/ready answers for the one worker that took the request: wait until every worker logged its snapshot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.log.read_text().count("now serving snapshot") >= workers:
            return
        time.sleep(0.2)
    raise TimeoutError(f"fewer than {workers} workers serve a snapshot:\n{server.log.read_text()[-3000:]}")


def page(api: ApiServer, user_id: str, limit: int = 20, cursor: str | None = None) -> dict:
    r = httpx.post(
        f"{api.url}/recommendations", json={"user_id": user_id, "limit": limit, "cursor": cursor}, timeout=60
    )
    assert r.status_code == 200, r.text
    return r.json()


def walk(api: ApiServer, user_id: str, limit: int = 100, max_pages: int = 100) -> list[dict]:
    items: list[dict] = []
    cursor = None
    for _ in range(max_pages):
        body = page(api, user_id, limit, cursor)
        items += body["items"]
        if not body["has_more"]:
            return items
        cursor = body["next_cursor"]
    raise AssertionError("walk did not end")


def _both_workers_answer(api: ApiServer, tries: int = 200) -> bool:
    """True once two processes answered: each worker counts its own /metrics requests, so one worker alone
    would show 0, 1, 2, ... and a repeated or falling count means another worker answered.

    Which worker accepts a new connection is the kernel's choice: on an idle machine the same one can win 30
    times running (a clean-clone run saw it), so many tries, each a moment apart, while the other waits."""
    line = 'feed_api_requests_total{method="GET",route="/metrics",status="200"} '
    counts: list[int] = []
    for _ in range(tries):
        time.sleep(0.01)
        text = httpx.get(f"{api.url}/metrics", timeout=30).text  # a new connection each time
        counts.append(next((int(float(x[len(line) :])) for x in text.splitlines() if x.startswith(line)), 0))
        if len(counts) > 1 and counts[-1] <= counts[-2]:
            return True
    return False


def _settle() -> None:
    """A little over one reload interval: every worker has followed the inbox since."""
    time.sleep(3 * RELOAD_MS / 1000 + 0.5)


def test_api_with_two_workers_serves_from_the_server(api: ApiServer, world: World) -> None:
    data = world.data
    snapshot = live_id(data)
    feeds = pl.read_parquet(data / "snapshots" / snapshot / "feeds" / "*.parquet").sort("user_id", "rank")
    catalogue = lake_videos(data)
    with httpx.Client(base_url=api.url, timeout=120) as http:
        # A user of the snapshot: their precomputed feed, in order.
        body = page(api, "u0000004", limit=30)
        assert body["source"] == "precomputed" and body["snapshot_id"] == snapshot
        expected = feeds.filter(pl.col("user_id") == "u0000004")["video_id"].head(30).to_list()
        assert [i["video_id"] for i in body["items"]] == expected

        # A fresh user with a profile: live search in the snapshot's collection on the server.
        liked = catalogue["video_id"].head(5).to_list()
        r = http.post("/embeddings/user", json={"user_id": "fresh-1", "watched_videos": liked})
        assert r.status_code == 200, r.text
        _settle()  # the other worker learns the profile from the inbox
        for _ in range(4):
            body = page(api, "fresh-1", limit=20)
            assert body["source"] == "live" and len(body["items"]) == 20
            assert not {i["video_id"] for i in body["items"]} & set(liked)

        # A posted video: upserted into the server collection, then part of every worker's catalogue.
        video = {
            "video_id": "posted-on-server",
            "caption": "a tiny kitten learns to climb the stairs",
            "hashtags": ["cats", "kitten"],
            "duration": 14.0,
            "width": 1080,
            "height": 1920,
            "user_followers": 120,
            "user_likes": 3400,
        }
        r = http.post("/embeddings/video", json=video)
        assert r.status_code == 200, r.text
        assert _collection_rows(world.url, collection_of(snapshot)) == catalogue.height + 1
        # The supervisor loaded the snapshot's text encoder before forking; no worker loaded a copy of its own.
        loads = [line for line in api.log.read_text().splitlines() if "text encoder" in line and "loaded in" in line]
        assert len(loads) == 1, loads
        _settle()
        items = walk(api, "nobody-with-nothing")
        ids = [i["video_id"] for i in items]
        assert len(ids) == len(set(ids)), "a walk served a video twice"
        assert "posted-on-server" in ids, "the posted video is part of the live catalogue"

        # An event sent to whichever worker answers removes the video from every page answered afterwards.
        user = "u0000006"
        first = page(api, user, limit=10)["items"]
        watched = first[0]["video_id"]
        r = http.post("/events", json={"user_id": user, "video_id": watched, "type": "watch", "completion": 0.2})
        assert r.status_code == 200, r.text
        _settle()
        assert _both_workers_answer(api), "requests on new connections reach both workers"
        for _ in range(8):  # a new connection per request: both workers answer some of these
            again = [i["video_id"] for i in page(api, user, limit=10)["items"]]
            assert watched not in again
            assert again[:9] == [i["video_id"] for i in first[1:]]


def test_a_killed_worker_is_forked_again_and_the_other_keeps_serving(api: ApiServer, world: World) -> None:
    """The workers are forked by one supervisor (feed_api.forked_workers): SIGKILL one, and requests keep being
    answered meanwhile, and a new worker takes its place and serves the live snapshot."""
    assert api.proc is not None
    supervisor = psutil.Process(api.proc.pid)
    workers = supervisor.children()
    assert len(workers) == 2, [w.cmdline() for w in workers]
    victim = workers[0]
    victim.kill()
    victim.wait(10)
    for _ in range(10):  # the survivor answers every request while the victim is re-forked
        assert page(api, "u0000004", limit=5)["snapshot_id"] == live_id(world.data)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = {w.pid for w in supervisor.children()}
        if len(now) == 2 and victim.pid not in now and api.log.read_text().count("now serving snapshot") >= 3:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no new worker serving after a kill:\n{api.log.read_text()[-3000:]}")
    assert _both_workers_answer(api), "the new worker answers requests"
