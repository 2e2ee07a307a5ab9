"""The feed API under load, over real HTTP, on a default-scale snapshot (10,000 users x 500 items, 50,000 videos).

For each ASGI server (granian, uvicorn; one worker each, the same app):

* peak throughput of ``GET /health``, of a 20-item precomputed first page and of
  a second page (following the cursor the first one gave), in alternating rounds,
  and the first page's ratio to health (target: pages at least 70% of health);
* p50/p99 of precomputed pages at half of that peak, open loop (target p99 < 10 ms);
* p50/p99 of a fresh user's first page: a user the snapshot does not have, with a
  profile posted to ``/embeddings/user``: the user tower online plus a live Milvus
  search over the 50,000 videos and the ranker stage over its answer (target p99 < 50 ms),
  each user once; then the same users' later pages, labelled apart (the API keeps a
  fresh user's vector, so those measure the search without the tower);
* every run's errors: one failed request fails the benchmark, peaks and tails alike;
* the server's resident memory with the snapshot loaded (process tree).

In process (no server): the fresh user's first page with the snapshot's ranker and
without it, interleaved (``--fresh-ranker`` runs only this); and the first live page
past a snapshot user's feed, leaving out what they watched before the snapshot and
not, interleaved, with how many watched videos the latter served again
(``--continuation`` runs only this).

Impression logging (uvicorn): a server logging every page and one not, on the same
snapshot, one at a time (Milvus Lite opens in one process), in alternating rounds
of peak page throughput; the ratio (target at least 0.9) and the pages the logging
ones wrote (``--impressions`` runs only this).

The world is built once under ``<data root>/bench/api-world`` by the real pipeline
(about 6 minutes) and reused; its live snapshot applies a ranker: the model version's
own, or where it has none one trained on the snapshot's vectors
(:func:`benchmarks.snapshot_ranker.snapshot_ranker`), then a snapshot built with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import psutil

from benchmarks.common import BenchRow
from benchmarks.loadgen import LoadResult, closed_loop, http_request, one_pass, open_loop, run_load
from benchmarks.snapshot_ranker import BENCH_ROUNDS, snapshot_ranker
from rec_core.model.store import ModelStore, ModelStoreError
from rec_core.rank.ranker import Ranker
from rec_core.settings import Settings
from rec_core.snapshot.layout import SnapshotPaths
from rec_core.snapshot.publish import live_snapshot

NAME = "bench_api"
log = logging.getLogger(NAME)
ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("granian", "uvicorn")
ROUNDS = 3
ROUND_S = 4.0
CONCURRENCY = 16
FRESH_USERS = 300


def ensure_world(settings: Settings) -> Path:
    from rec_core.stages import run_all
    from rec_core.synthetic.commit import generate_data

    data = settings.paths.data_dir / "bench" / "api-world"
    if live_snapshot(settings.override(data_dir=data).paths) is not None:
        return data
    log.info("building the default-scale world for the API benchmark in %s (once, ~6 min)", data)
    world = settings.override(data_dir=data)
    generate_data(world, "default", seed=settings.seed)
    store = ModelStore(world.paths.models_dir)
    if store.current() is None and store.versions():
        store.promote(store.versions()[-1])  # an earlier build trained one: serving speed does not need a better one
    try:
        run_all(world, retrain=store.current() is None, epochs=1, video_shards=4, user_shards=4)
    except ModelStoreError:  # one epoch may not pass the quality gate; what is measured here is serving speed
        store.promote(store.versions()[-1])
        run_all(world, retrain=False, video_shards=4, user_shards=4)
    return data


def ensure_ranked(settings: Settings, data: Path) -> None:
    """Make the world's live snapshot one whose build applies a ranker (see the module doc)."""
    from rec_core.stages import between, run_stages

    world = settings.override(data_dir=data, ranker="on")
    if served_snapshot(data).read_build().ranker_applied:
        return
    version_dir = world.paths.models_dir / str(ModelStore(world.paths.models_dir).current())
    if Ranker.load_if_present(version_dir) is None:
        log.info("training a ranker on the snapshot's vectors for %s", version_dir.name)
        snapshot_ranker(world.paths, served_snapshot(data), rounds=BENCH_ROUNDS).save(version_dir)
    run_stages(world, between("begin_snapshot", "publish"), {"video_shards": 4, "user_shards": 4})


def fresh_pages_in_process(data: Path, n: int = FRESH_USERS) -> dict[str, list[float]]:
    """Milliseconds of each fresh user's first page (user tower online, live search, the pipeline), with the
    snapshot's ranker and without it, alternated user by user."""
    from feed_api.pager import first_cursor, next_page
    from feed_api.snapshot_load import load_view
    from rec_core.feed.policy import FeedPolicy
    from rec_core.model.inference import UserProfile

    paths = Settings.load().override(data_dir=data).paths
    view = load_view(paths, served_snapshot(data))
    ranking = view.ranking
    assert ranking is not None, "the live snapshot applies no ranker"
    policy = FeedPolicy(feed_length=view.build.feed_length)
    rng = np.random.default_rng(0)
    out: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for i in range(n):
            watched = rng.choice(view.video_ids, size=20, replace=False).tolist()
            profile = UserProfile(watched=watched, liked=watched[:3])
            for mode in ("on", "off") if i % 2 else ("off", "on"):
                view.ranking = ranking if mode == "on" else None
                user = f"bench-fresh-{mode}-{i}"
                started = time.perf_counter()
                cursor = first_cursor(view, user, has_vector=True)
                page = next_page(view, cursor, 20, None, lambda p=profile: view.profile_vector(p).vector, policy)
                out[mode].append(1000 * (time.perf_counter() - started))
                assert len(page.items) == 20 and page.source == "live"
    finally:
        view.ranking = ranking
        view.close()
    return out


def continuation_pages_in_process(data: Path, n: int = FRESH_USERS) -> dict[str, list[float]]:
    """Milliseconds of the first live page past a snapshot user's feed, leaving out what the snapshot says they
    watched before it ("history") and not ("no history": the API before the watch history), alternated user by
    user over the ``n`` users with the longest histories; and per page, how many items without it were such videos."""
    from feed_api.pager import next_page
    from feed_api.snapshot_load import load_view
    from rec_core.feed.cursor import Cursor
    from rec_core.feed.policy import FeedPolicy
    from rec_core.snapshot.watch_history import empty_history

    paths = Settings.load().override(data_dir=data).paths
    view = load_view(paths, served_snapshot(data))
    history = view.watched
    assert len(history), "the live snapshot has no watch history (built before it)"
    policy = FeedPolicy(feed_length=view.build.feed_length)
    sizes = np.diff(history.offsets)
    users = history.user_row.ids[np.argsort(-sizes, kind="stable")[:n]].tolist()
    out: dict[str, list[float]] = {"history": [], "no history": [], "re-served": [], "sizes": []}
    try:
        for i, user in enumerate(users):
            bounds = view.feeds.bounds(user)
            cursor = Cursor(view.snapshot_id, user, "feed", 0 if bounds is None else bounds[1] - bounds[0])
            watched = set(view.video_ids[history.codes_of(user)].tolist())
            out["sizes"].append(len(watched))
            for mode in ("history", "no history") if i % 2 else ("no history", "history"):
                view.watched = history if mode == "history" else empty_history()
                started = time.perf_counter()
                page = next_page(view, cursor, 20, None, lambda u=user: view.batch_vector(u), policy)
                out[mode].append(1000 * (time.perf_counter() - started))
                assert len(page.items) == 20 and page.source == "live"
                again = sum(item.video_id in watched for item in page.items)
                if mode == "history":
                    assert not again, f"{user}: {again} watched videos served again"
                else:
                    out["re-served"].append(again)
    finally:
        view.watched = history
        view.close()
    return out


def continuation_rows(data: Path) -> list[BenchRow]:
    times = continuation_pages_in_process(data)
    sizes = times["sizes"]
    note = f"in process, the {len(sizes)} longest histories ({min(sizes):,}-{max(sizes):,} videos)"
    rows = []
    for mode in ("history", "no history"):
        p50, p99 = np.percentile(times[mode], [50, 99])
        what = "leaving out the watch history" if mode == "history" else "without it (before)"
        rows.append(BenchRow(NAME, f"first live page past a feed p99, {what}", p99, "ms", f"p50 {p50:.1f} ms, {note}"))
    rows.append(
        BenchRow(
            NAME,
            "watched videos served again per 20-item live page, without it",
            float(np.mean(times["re-served"])),
            "items",
            f"max {max(times['re-served'])}; none with it (asserted on every page)",
        )
    )
    return rows


def fresh_rows(data: Path) -> list[BenchRow]:
    times = fresh_pages_in_process(data)
    build = served_snapshot(data).read_build()
    note = f"in process, {FRESH_USERS} users, ranker {build.ranker['objective'] if build.ranker else None}"
    rows = []
    for mode in ("on", "off"):
        p50, p99 = np.percentile(times[mode], [50, 99])
        rows.append(BenchRow(NAME, f"fresh-user first page p99, ranker {mode}", p99, "ms", f"p50 {p50:.1f} ms, {note}"))
    return rows


@contextlib.contextmanager
def serve(data: Path, server: str, **settings: str) -> Iterator[tuple[str, int, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("REC_")}
    env.update(REC_DATA_DIR=str(data), REC_API_PORT=str(port), REC_API_SERVER=server, REC_LOG_LEVEL="WARNING")
    env.update({f"REC_{k.upper()}": v for k, v in settings.items()})
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "feed_api"], env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"{server} exited with {proc.returncode}")
            time.sleep(0.5)
        else:
            raise TimeoutError(f"{server} not ready in 300 s")
        yield url, port, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def served_snapshot(data: Path) -> SnapshotPaths:
    """The live snapshot of the data root ``data`` (what the API started on it serves)."""
    live = live_snapshot(Settings.load().override(data_dir=data).paths)
    if live is None:
        raise RuntimeError(f"no snapshot has been published under {data}")
    return live


def rss_mib(pid: int) -> float:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def page_requests(users: list[str]) -> list[bytes]:
    return [http_request("POST", "/recommendations", json.dumps({"user_id": u, "limit": 20}).encode()) for u in users]


def second_page_requests(url: str, users: list[str]) -> list[bytes]:
    """Each user's second page: the first fetched once here, its cursor replayed (cursors are stateless)."""
    requests = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for user in users:
            first = client.post("/recommendations", json={"user_id": user, "limit": 20})
            first.raise_for_status()
            body = {"user_id": user, "limit": 20, "cursor": first.json()["next_cursor"]}
            requests.append(http_request("POST", "/recommendations", json.dumps(body).encode()))
    return requests


def checked(result: LoadResult, what: str) -> LoadResult:
    """Every measured run must have been answered: a rate of errors is no rate."""
    if result.errors:
        raise RuntimeError(f"{what}: {result.errors} of {result.requests} requests failed")
    return result


def measure(server: str, data: Path, users: list[str], videos: list[str]) -> dict[str, float]:
    rng = np.random.default_rng(0)
    health = [http_request("GET", "/health")]
    pages = page_requests(users)
    fresh = [f"bench-fresh-{i}" for i in range(FRESH_USERS)]
    with serve(data, server) as (url, port, pid):
        with httpx.Client(base_url=url, timeout=60) as client:
            for user in fresh:
                watched = rng.choice(videos, size=20, replace=False).tolist()
                body = {"user_id": user, "watched_videos": watched, "liked_videos": watched[:3]}
                client.post("/embeddings/user", json=body).raise_for_status()
        seconds = second_page_requests(url, users[:500])
        checked(run_load(closed_loop("127.0.0.1", port, pages, CONCURRENCY, 2.0)), "warm-up")
        h_rates, p_rates, c_rates = [], [], []
        for _ in range(ROUNDS):  # alternate, so drift of a shared machine hits all alike
            h = checked(run_load(closed_loop("127.0.0.1", port, health, CONCURRENCY, ROUND_S)), "/health peak")
            p = checked(run_load(closed_loop("127.0.0.1", port, pages, CONCURRENCY, ROUND_S)), "first-page peak")
            c = checked(run_load(closed_loop("127.0.0.1", port, seconds, CONCURRENCY, ROUND_S)), "cursor-page peak")
            h_rates.append(h.rate)
            p_rates.append(p.rate)
            c_rates.append(c.rate)
        peak_h, peak_p = float(np.median(h_rates)), float(np.median(p_rates))
        half = checked(run_load(open_loop("127.0.0.1", port, pages, 0.5 * peak_p, 8.0)), "half-peak pages")
        # The same schedule on /health: what the server plus this generator on 2 shared cores can do at that rate.
        half_health = checked(run_load(open_loop("127.0.0.1", port, health, 0.5 * peak_p, 8.0)), "half-peak health")
        # A fresh user's first page runs the user tower and a live search; the API then keeps the vector, so
        # later pages of the same user measure the search alone: each measured apart, and labelled.
        first = checked(run_load(one_pass("127.0.0.1", port, page_requests(fresh), 2)), "fresh first pages")
        cached = checked(
            run_load(closed_loop("127.0.0.1", port, page_requests(fresh), 2, 8.0)), "fresh pages, cached vector"
        )
        return {
            "health_rps": peak_h,
            "page_rps": peak_p,
            "cursor_page_rps": float(np.median(c_rates)),
            "ratio": peak_p / peak_h,
            "half_rate": half.rate,
            "half_p50": half.pct(50),
            "half_p99": half.pct(99),
            "half_health_p99": half_health.pct(99),
            "fresh_rps": first.rate,
            "fresh_p50": first.pct(50),
            "fresh_p99": first.pct(99),
            "fresh_cached_p50": cached.pct(50),
            "fresh_cached_p99": cached.pct(99),
            "rss_mib": rss_mib(pid),
        }


def impression_throughput(data: Path, users: list[str], rounds: int = 4) -> dict[str, float]:
    """Peak page throughput with impression logging on and off, in alternating rounds (the order flipped each
    round), medians compared. A Milvus Lite file opens in one process at a time, so each round starts its own
    server; the "on" one writes under ``<data>/impressions``."""
    from rec_core.data.inbox import iter_kind, read_new

    pages = page_requests(users)
    logged_dir = data / "impressions"
    before = {p.name: p.stat().st_size for p in logged_dir.glob("*.jsonl")} if logged_dir.is_dir() else {}
    rates: dict[str, list[float]] = {"on": [], "off": []}
    served_on = 0
    for i in range(rounds):
        for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
            with serve(data, "uvicorn", api_impressions=mode) as (_, port, _):
                checked(run_load(closed_loop("127.0.0.1", port, pages, CONCURRENCY, 2.0)), "warm-up")
                result = checked(
                    run_load(closed_loop("127.0.0.1", port, pages, CONCURRENCY, ROUND_S)), f"impressions {mode}"
                )
            rates[mode].append(result.rate)
            served_on += result.requests if mode == "on" else 0
    # Each "on" server stopped cleanly (SIGTERM: its log's last write done); count what they wrote.
    logged = sum(1 for _ in iter_kind(read_new(logged_dir, before), "impression"))
    on, off = float(np.median(rates["on"])), float(np.median(rates["off"]))
    return {"on_rps": on, "off_rps": off, "ratio": on / off, "logged": logged, "served_on": served_on}


def impression_rows(data: Path, users: list[str]) -> list[BenchRow]:
    r = impression_throughput(data, users)
    note = f"uvicorn, 1 worker, {CONCURRENCY} conns, 4 alternating rounds of {ROUND_S:.0f} s each"
    return [
        BenchRow(NAME, "page peak, impressions logged", r["on_rps"], "req/s", note),
        BenchRow(NAME, "page peak, impressions off", r["off_rps"], "req/s", note),
        BenchRow(
            NAME,
            "page throughput, impressions on / off",
            r["ratio"],
            "x",
            f"target >= 0.9; {r['logged']:,} pages logged, {r['served_on']:,} served in measured rounds (+ warm-ups)",
        ),
    ]


def in_process(data: Path, user: str, n: int = 5000) -> dict[str, float]:
    """Microseconds per request of the app itself, no server or socket: /health, a page through the fast path,
    and the same page through Litestar's generic handler (a body without Content-Length takes that path)."""
    from litestar.testing import AsyncTestClient

    from feed_api.app import create_app

    settings = Settings.load().override(data_dir=data)
    app = create_app(settings)
    body = json.dumps({"user_id": user, "limit": 20}).encode()

    def scope(method: str, path: str, length: int | None) -> dict:
        headers = [(b"host", b"bench"), (b"content-type", b"application/json")]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        return {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 3002), "state": {}, "app": app,
        }  # fmt: skip

    async def per_request(method: str, path: str, payload: bytes, length: int | None) -> float:
        async def receive() -> dict:
            return {"type": "http.request", "body": payload, "more_body": False}

        async def send(_: dict) -> None:
            return None

        started = time.perf_counter()
        for _ in range(n):
            await app(scope(method, path, length), receive, send)
        return (time.perf_counter() - started) / n * 1e6

    async def measure_all() -> dict[str, float]:
        async with AsyncTestClient(app) as client:
            while (await client.get("/ready")).status_code != 200:
                await asyncio.sleep(0.2)
            out: dict[str, list[float]] = {"health": [], "page": [], "page_litestar": []}
            for _ in range(3):  # interleaved rounds, the median of each
                out["health"].append(await per_request("GET", "/health", b"", None))
                out["page"].append(await per_request("POST", "/recommendations", body, len(body)))
                out["page_litestar"].append(await per_request("POST", "/recommendations", body, None))
            return {key: float(np.median(values)) for key, values in out.items()}

    return asyncio.run(measure_all())


def run() -> list[BenchRow]:
    settings = Settings.load()
    data = ensure_world(settings)
    ensure_ranked(settings, data)
    live = served_snapshot(data)
    feeds = pl.read_parquet(live.feeds_dir / "*.parquet", columns=["user_id"])
    users = feeds["user_id"].unique().sort().to_list()
    videos = pl.read_parquet(live.vectors_dir / "videos-*.parquet", columns=["video_id"])
    sample = np.random.default_rng(1).choice(users, size=min(2000, len(users)), replace=False).tolist()
    shape = f"{len(users):,} users x {len(feeds) // max(len(users), 1)} items, {len(videos):,} videos"
    rows: list[BenchRow] = []
    results = {}
    for server in SERVERS:
        r = results[server] = measure(server, data, sample, videos["video_id"].to_list())
        rows += [
            BenchRow(NAME, f"{server}: GET /health peak", r["health_rps"], "req/s", f"1 worker, {CONCURRENCY} conns"),
            BenchRow(NAME, f"{server}: 20-item precomputed page peak", r["page_rps"], "req/s", shape),
            BenchRow(
                NAME,
                f"{server}: 20-item second page peak (cursor)",
                r["cursor_page_rps"],
                "req/s",
                "500 users' cursors",
            ),
            BenchRow(NAME, f"{server}: page / health throughput", r["ratio"], "x", "target >= 0.7"),
            BenchRow(
                NAME,
                f"{server}: page p99 at half peak",
                r["half_p99"],
                "ms",
                f"p50 {r['half_p50']:.2f} ms, open loop, {r['half_rate']:.0f} req/s; target < 10",
            ),
            BenchRow(
                NAME,
                f"{server}: /health p99 at the same rate",
                r["half_health_p99"],
                "ms",
                "control: the harness's own tail at that rate",
            ),
            BenchRow(
                NAME,
                f"{server}: fresh-user first page p99 (user tower + live search)",
                r["fresh_p99"],
                "ms",
                f"p50 {r['fresh_p50']:.1f} ms, {FRESH_USERS} users once each, {r['fresh_rps']:.0f} req/s, 2 conns, "
                f"live search over {len(videos):,}; target < 50",
            ),
            BenchRow(
                NAME,
                f"{server}: fresh-user later page p99 (vector cached, live search)",
                r["fresh_cached_p99"],
                "ms",
                f"p50 {r['fresh_cached_p50']:.1f} ms, the same users again, 2 conns",
            ),
            BenchRow(NAME, f"{server}: resident memory", r["rss_mib"], "MiB", shape),
        ]
    rows += fresh_rows(data)
    rows += continuation_rows(data)
    rows += impression_rows(data, sample)
    us = in_process(data, sample[0])
    rows += [
        BenchRow(NAME, "in process: GET /health", us["health"], "µs", "the app alone, no server or socket"),
        BenchRow(NAME, "in process: page, fast path", us["page"], "µs", "feed_api/page_route.py"),
        BenchRow(NAME, "in process: page, Litestar handler", us["page_litestar"], "µs", "body without Content-Length"),
    ]
    rows.append(
        BenchRow(
            NAME,
            "granian / uvicorn page throughput",
            results["granian"]["page_rps"] / results["uvicorn"]["page_rps"],
            "x",
            "decides REC_API_SERVER's default",
        )
    )
    return rows


def serving_memory(data: Path, server: str = "uvicorn") -> dict[str, float]:
    """Resident memory of the API serving ``data``'s live snapshot, after one page of each kind has been served
    (a snapshot user's, a newcomer's trending page, and a fresh user's live search, which loads the Milvus side)."""
    live = served_snapshot(data)
    user = pl.read_parquet(live.feeds_dir / "*.parquet", columns=["user_id"], n_rows=1)[0, 0]
    video = pl.read_parquet(live.vectors_dir / "videos-*.parquet", columns=["video_id"])[0, 0]
    started = time.monotonic()
    with serve(data, server) as (url, _, pid):
        ready_s = time.monotonic() - started
        with httpx.Client(base_url=url, timeout=120) as client:
            client.post("/embeddings/user", json={"user_id": "bench-memory", "watched_videos": [video]})
            for body in ({"user_id": user}, {"user_id": "bench-nobody"}, {"user_id": "bench-memory"}):
                client.post("/recommendations", json=body).raise_for_status()
        return {"rss_mib": rss_mib(pid), "ready_s": ready_s}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory-of", type=Path, help="only the resident memory of the API serving this data root")
    parser.add_argument("--fresh-ranker", action="store_true", help="only the in-process fresh-user pages, on/off")
    parser.add_argument("--impressions", action="store_true", help="only page throughput, impression logging on/off")
    parser.add_argument(
        "--continuation", action="store_true", help="only the in-process live pages past a feed, history on/off"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.memory_of:
        print(serving_memory(args.memory_of.resolve()))
    elif args.fresh_ranker or args.impressions or args.continuation:
        world = ensure_world(Settings.load())
        ensure_ranked(Settings.load(), world)
        if args.fresh_ranker:
            for row in fresh_rows(world):
                print(row)
        if args.continuation:
            for row in continuation_rows(world):
                print(row)
        if args.impressions:
            live = served_snapshot(world)
            users = pl.read_parquet(live.feeds_dir / "*.parquet", columns=["user_id"])["user_id"].unique().sort()
            sample = np.random.default_rng(1).choice(users.to_list(), size=min(2000, len(users)), replace=False)
            for row in impression_rows(world, sample.tolist()):
                print(row)
    else:
        for row in run():
            print(row)
