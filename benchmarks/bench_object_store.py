"""The pipeline with everything on an S3-compatible store (``REC_DATA_URI``) against the same pipeline on local
disk, side by side in one run, on the same world; then a machine that holds nothing bringing the live
snapshot over (what an API host or a new worker pays once per snapshot).

The store is moto's S3 server (a Python process on this machine, started here): slower per request than MinIO
or S3, and without their network, so the ratio is what the synchronisation itself costs here, not a forecast for
a real cluster. Reported per stage group with the bytes moved, so a regression points at its stage.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.common import BenchRow, stopwatch
from rec_core.settings import Settings
from rec_core.snapshot.remote import sync_live
from rec_core.stages import PIPELINE, run_stages
from rec_core.synthetic.commit import generate_data

NAME = "object_store"
ROUNDS = 2
USERS, VIDEOS = 2_000, 10_000  # a fifth of the default world: big enough that bytes, not requests, dominate
PARAMS = {"retrain": True, "epochs": 1, "video_shards": 2, "user_shards": 2, "caption_shards": 1}
GROUPS = {
    "ingest + features + model": ("ingest_inbox", "build_features", "train_or_reuse"),
    "snapshot: begin .. publish": (
        "begin_snapshot",
        "embed_videos",
        "embed_users",
        "load_vectors",
        "trending",
        "materialize",
        "validate",
        "publish",
    ),
    "warehouse": ("rebuild_warehouse",),
}


def run() -> list[BenchRow]:
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp, moto_server() as endpoint:
        base = Settings.load()
        local = base.override(data_dir=Path(tmp) / "local", ranker="off")
        store_env = _bucket(endpoint)
        remote = Settings.load({**store_env, "REC_DATA_DIR": str(Path(tmp) / "remote")}).override(ranker="off")
        for settings in (local, remote):
            generate_data(settings, "tiny", users=USERS, videos=VIDEOS, seed=3)
        # Two rounds, alternating, keeping each stage group's faster time: the first run of a process pays
        # for imports, the encoder's load and cold caches that whichever backend ran first would be charged.
        times: dict[str, dict[str, float]] = {"local": {}, "store": {}}
        for _ in range(ROUNDS):
            for label, settings in (("local", local), ("store", remote)):
                for group, seconds in _timed(settings).items():
                    times[label][group] = min(seconds, times[label].get(group, seconds))
        snapshot_mb = _folder_mb(max((Path(tmp) / "local" / "snapshots").glob("s*")))
        for group in GROUPS:
            a, b = times["local"][group], times["store"][group]
            rows.append(BenchRow(NAME, f"{group}: store / local", b / a, "x", f"{b:.1f} s vs {a:.1f} s"))
        fresh = Settings.load({**store_env, "REC_DATA_DIR": str(Path(tmp) / "fresh")})
        with stopwatch() as t:
            live = sync_live(fresh.paths)
        pulled = _folder_mb(fresh.paths.snapshots_dir / str(live))
        rows.append(BenchRow(NAME, "live snapshot to a machine that holds nothing", t[0], "s", f"{pulled:.1f} MB"))
        rows.append(BenchRow(NAME, "its transfer rate", pulled / t[0], "MB/s", "pull, sha256-checked"))
        rows.append(BenchRow(NAME, "snapshot size", snapshot_mb, "MB", f"{USERS:,} users, {VIDEOS:,} videos"))
    return rows


def _timed(settings: Settings) -> dict[str, float]:
    values: dict = dict(PARAMS)
    spent: dict[str, float] = {}
    for stage in PIPELINE:
        started = time.perf_counter()
        values = run_stages(settings, (stage,), values)
        spent[stage.name] = time.perf_counter() - started
    return {group: sum(spent[name] for name in names) for group, names in GROUPS.items()}


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def _bucket(endpoint: str) -> dict[str, str]:
    import boto3

    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    keys = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys).create_bucket(Bucket=bucket)
    return {
        "REC_DATA_URI": f"s3://{bucket}/bench",
        "REC_S3_ENDPOINT": endpoint,
        "REC_S3_ACCESS_KEY_ID": "bench",
        "REC_S3_SECRET_ACCESS_KEY": "bench",
    }


@contextmanager
def moto_server() -> Iterator[str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    for row in run():
        print(row)
