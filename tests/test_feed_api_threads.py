"""The API's requests stay on the one torch thread it sets: no request path launches a parallel numba kernel.

The API imports modules that hold numba's parallel kernels (the batch's top-k, through the ranker's retrieval and
the feed blocks), and numba's parallel launches share OpenMP with torch: each one sets torch's pool back to numba's
size, one thread per core (tests/test_dags.py shows it for a job). Online work is one user at a time, and one torch
thread per worker is what keeps several forked workers from oversubscribing the cores, so a request that launched
such a kernel would undo the API's setting for the rest of that worker's life.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from rec_core.runtime import THREAD_VARIABLES
from tests.conftest import ROOT

# Runs in its own process, so that nothing a test ran before launched a kernel in it. The requests cover the live
# paths: a fresh user's pages (the user tower online, Milvus, the ranker over their profile), a lake user's walk past
# the end of their precomputed feed into the live continuation, events, a posted video.
_SERVE = """
import json, sys
from pathlib import Path

import numba
import polars as pl
import torch
from litestar.testing import TestClient

from feed_api.app import create_app
from rec_core.settings import Settings

data = Path(sys.argv[1])
lake = data / "lake" / (data / "lake" / "CURRENT").read_text().strip()
videos = pl.read_parquet(lake / "videos.parquet")["video_id"].to_list()
live = data / "snapshots" / (data / "snapshots" / "LIVE").read_text().strip()
users = pl.read_parquet(live / "feeds" / "*.parquet")["user_id"].to_list()  # lake users with a feed of 200
pages = 0
with TestClient(create_app(Settings.of(data_dir=data))) as client:
    assert client.get("/ready").status_code == 200
    assert client.post("/embeddings/user", json={"user_id": "fresh", "watched_videos": videos[:5]}).status_code == 200
    events = [{"user_id": "fresh", "video_id": v, "type": "like", "watch_time_s": 9, "completion": 1.0}
              for v in videos[5:10]]
    assert client.post("/events", json={"events": events}).status_code == 200
    posted = {"video_id": "new-video", "creator_id": "someone", "caption": "a new video", "hashtags": ["new"],
              "duration": 15, "width": 720, "height": 1280, "user_followers": 3, "user_likes": 4}
    assert client.post("/embeddings/video", json=posted).status_code == 200
    for user in ("fresh", users[0], "nobody-at-all"):
        cursor = None
        for _ in range(4):
            r = client.post("/recommendations", json={"user_id": user, "limit": 100, "cursor": cursor})
            assert r.status_code == 200, r.text
            pages += 1
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
try:
    layer = numba.threading_layer()
except ValueError:  # no parallel kernel was ever launched in this process
    layer = None
print(json.dumps({"torch_threads": torch.get_num_threads(), "numba_layer": layer, "pages": pages}))
"""


def test_requests_never_launch_a_parallel_kernel(api_world: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(api_world.parent / "pristine", data)
    # Two threads for numba and OpenMP, whatever this test worker is capped to: a launch would then show.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REC_") and k not in THREAD_VARIABLES}
    env |= {"PYTHONPATH": str(ROOT), "NUMBA_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", _SERVE, str(data)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["pages"] >= 6, result
    assert result["numba_layer"] is None, f"a request launched a parallel kernel ({result})"
    assert result["torch_threads"] == 1, result
