"""The feed API's memory and the cost of a snapshot going live, on the API benchmark's default-scale world.

* **One worker on embedded Milvus Lite**: resident memory (RSS), proportional set size (PSS: shared pages split
  between the processes that map them) and unique memory (USS) of the API process and of its Milvus Lite process,
  after one page of each kind (a snapshot user's, a newcomer's trending page, a fresh user's live search).
* **Two workers against a Milvus server** (milvus-lite's server binary, started here, with the snapshot's vectors
  loaded into it): each worker's RSS and PSS, and the API processes' combined PSS against one worker's on the same
  server, the same pages served (target: at most 1.3; the serving index is mapped, so its pages are shared).
* **A snapshot going live**: ``load_view`` of the live snapshot (what the API does after a publish, before the new
  snapshot serves), and the serving index alone mapped from ``serve/`` against built on the heap from the same
  snapshot's Parquet (what every load cost before ``serve/``), alternated.
* **Swap to served, end to end**: where the root has an earlier published snapshot, a running API (one worker,
  Milvus Lite) is timed from ``LIVE``'s swap (a rollback to that snapshot) to its ``/ready`` naming it, polled every
  50 ms; then the snapshot that was live is published again, so the root ends as it began.

``python -m benchmarks.bench_serving_memory [--data ROOT]`` prints the rows; ``make bench`` includes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import psutil

from benchmarks.bench_api import ensure_ranked, ensure_world, serve, served_snapshot
from benchmarks.common import BenchRow, stopwatch
from rec_core.settings import Settings

NAME = "bench_serving_memory"
log = logging.getLogger(NAME)
MIB = 2**20
ROUNDS = 3


def process_memory(pid: int) -> list[dict[str, float | str]]:
    """RSS, PSS and USS (MiB) of ``pid`` and each of its descendants, each labelled ``api`` or ``milvus``."""
    root = psutil.Process(pid)
    out = []
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            info = p.memory_full_info()
            kind = "milvus" if "milvus" in p.name().lower() else "api"
            out.append(
                {"kind": kind, "pid": p.pid, "rss": info.rss / MIB, "pss": info.pss / MIB, "uss": info.uss / MIB}
            )
    return out


def serve_each_kind(url: str, live_user: str, video: str, tag: str) -> None:
    """One page of each kind, so the memory read after it includes what serving them loads."""
    with httpx.Client(base_url=url, timeout=120) as client:
        _post(client, "/embeddings/user", {"user_id": f"bench-{tag}", "watched_videos": [video]})
        for body in ({"user_id": live_user}, {"user_id": f"bench-nobody-{tag}"}, {"user_id": f"bench-{tag}"}):
            _post(client, "/recommendations", body)


def _post(client: httpx.Client, path: str, body: dict) -> None:
    """POST, waiting out 503s: /ready answered for one worker, and another may still be loading the snapshot."""
    deadline = time.monotonic() + 120
    while (r := client.post(path, json=body)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    r.raise_for_status()


def api_memory(data: Path, workers: int = 1, **settings: str) -> list[dict[str, float | str]]:
    live = served_snapshot(data)
    user = pl.read_parquet(live.feeds_dir / "*.parquet", columns=["user_id"], n_rows=1)[0, 0]
    video = pl.read_parquet(live.vectors_dir / "videos-*.parquet", columns=["video_id"], n_rows=1)[0, 0]
    with serve(data, "uvicorn", api_workers=str(workers), **settings) as (url, _, pid):
        # Enough pages that every worker has served each kind (connections are not pinned to a worker).
        for i in range(4 * workers):
            serve_each_kind(url, user, video, str(i))
        time.sleep(1.0)
        return process_memory(pid)


@contextlib.contextmanager
def milvus_server(folder: Path) -> Iterator[str]:
    """milvus-lite's server binary on a free loopback port (the Milvus gRPC protocol), stopped on exit."""
    from milvus_lite.server import Server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder.mkdir(parents=True, exist_ok=True)
    server = Server(str(folder / "server.db"), address=f"127.0.0.1:{port}")
    libs = str(Path(server.milvus_bin).parent)
    env = {**os.environ, "LD_LIBRARY_PATH": libs + os.pathsep + os.environ.get("LD_LIBRARY_PATH", "")}
    proc = subprocess.Popen([str(a) for a in server.args], env=env, cwd=folder, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited with {proc.returncode}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def load_times(data: Path) -> dict[str, float]:
    """Seconds to load the live snapshot's view, and its serving index mapped vs built on the heap (best of rounds)."""
    from feed_api.snapshot_load import load_view
    from rec_core.snapshot.serving_index import build_serving_index, open_serving_index

    paths = served_snapshot(data)
    build = paths.read_build()
    settings = Settings.load().override(data_dir=data)
    times: dict[str, list[float]] = {"view": [], "mapped": [], "heap": []}
    for _ in range(ROUNDS):
        with stopwatch() as t:
            view = load_view(settings.paths, paths)
        view.close()
        times["view"].append(t[0])
        with stopwatch() as t:
            open_serving_index(paths, build)
        times["mapped"].append(t[0])
        with stopwatch() as t:
            heap = build_serving_index(paths, build)
        times["heap"].append(t[0])
    return {k: min(v) for k, v in times.items()} | {"rows": float(len(heap.feeds.items))}


def swap_to_served(data: Path) -> tuple[str, str, float] | None:
    """(from, to, seconds): a rollback of ``data``'s live snapshot timed from the swap to the API serving the
    snapshot it names; None where there is no earlier snapshot to roll back to. Publishes the first one again."""
    from rec_core.snapshot.layout import SnapshotError
    from rec_core.snapshot.publish import publish, rollback

    settings = Settings.load().override(data_dir=data)
    paths = settings.paths
    live = served_snapshot(data).snapshot_id
    with serve(data, "uvicorn") as (url, _, _), httpx.Client(base_url=url, timeout=10) as client:
        try:
            target = rollback(paths)
        except SnapshotError as exc:
            log.warning("swap to served not measured: %s", exc)
            return None
        swapped = time.perf_counter()
        try:
            deadline = swapped + 60
            while client.get("/ready").json().get("snapshot_id") != target:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"the API did not serve {target} within 60 s of the swap")
                time.sleep(0.05)
            seconds = time.perf_counter() - swapped
        finally:
            publish(paths, live, keep=settings.batch.snapshots_keep)
    return live, target, seconds


def _sum(procs: list[dict[str, float | str]], kind: str, key: str) -> float:
    return sum(float(p[key]) for p in procs if p["kind"] == kind)


def run(data: Path | None = None) -> list[BenchRow]:
    settings = Settings.load()
    if data is None:
        data = ensure_world(settings)
        ensure_ranked(settings, data)
    live = served_snapshot(data)
    if not live.read_build().serving_index:
        raise RuntimeError(f"snapshot {live.snapshot_id} was built before serve/: publish a new one to measure")
    rows: list[BenchRow] = []
    lite = api_memory(data)
    shape = f"snapshot {live.snapshot_id}"
    rows += [
        BenchRow(NAME, "1 worker, Milvus Lite: API process RSS", _sum(lite, "api", "rss"), "MiB", shape),
        BenchRow(
            NAME,
            "1 worker, Milvus Lite: API process PSS",
            _sum(lite, "api", "pss"),
            "MiB",
            f"USS {_sum(lite, 'api', 'uss'):.0f} MiB",
        ),
        BenchRow(NAME, "1 worker, Milvus Lite: Milvus Lite process RSS", _sum(lite, "milvus", "rss"), "MiB", ""),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-milvus-") as scratch, milvus_server(Path(scratch)) as url:
        subprocess.run(
            [sys.executable, "-m", "jobs.load_vectors", "--snapshot", live.snapshot_id],
            env={**os.environ, "REC_DATA_DIR": str(data), "REC_MILVUS_URI": url},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        one = api_memory(data, 1, milvus_uri=url)
        two = api_memory(data, 2, milvus_uri=url)
    workers = sorted((p for p in two if p["kind"] == "api"), key=lambda p: -float(p["rss"]))
    one_pss, two_pss = _sum(one, "api", "pss"), _sum(two, "api", "pss")
    rows += [
        BenchRow(
            NAME, "Milvus server, 1 worker: API process PSS", one_pss, "MiB", f"RSS {_sum(one, 'api', 'rss'):.0f}"
        ),
        BenchRow(
            NAME,
            "Milvus server, 2 workers: API processes' PSS",
            two_pss,
            "MiB",
            "per process RSS/PSS/USS: " + ", ".join(f"{p['rss']:.0f}/{p['pss']:.0f}/{p['uss']:.0f}" for p in workers),
        ),
        BenchRow(NAME, "2 workers' PSS / 1 worker's", two_pss / one_pss, "x", "target <= 1.3"),
    ]
    t = load_times(data)
    rows += [
        BenchRow(NAME, "snapshot load (load_view), mapped index", t["view"], "s", f"best of {ROUNDS}; target < 5"),
        BenchRow(NAME, "serving index: mapped from serve/", t["mapped"], "s", f"{t['rows']:,.0f} feed rows"),
        BenchRow(
            NAME,
            "serving index: built on the heap from Parquet",
            t["heap"],
            "s",
            f"{t['rows'] / t['heap']:,.0f} feed rows/s; what a load cost before serve/",
        ),
    ]
    if (swap := swap_to_served(data)) is not None:
        was, now, seconds = swap
        rows.append(
            BenchRow(NAME, "LIVE swapped -> API serving it", seconds, "s", f"{was} -> {now}, 1 worker; target < 5")
        )
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a data root with a live snapshot (default: the API bench's world)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for row in run(args.data.resolve() if args.data else None):
        print(row)
