"""A batch's candidates at the large world's width: the product and the top-k, each two ways, alternated.

One batch of 512 users against 495,000 random 64-d videos (the large world's catalogue; the selection's cost does
not depend on what a model learnt):

- the product into a fresh tensor each batch (``users @ videos.T``) against one reused buffer (``torch.mm(...,
  out=)``, what ``rec_core.feed.candidates.iter_top_k`` does);
- the top-k of its rows by ``torch.topk`` against the compiled selection (``rec_core.feed.top_k_kernel``), at the
  batch's k of 1,500 and the evaluations' 50; the two must agree exactly (values; indices where there are no ties);
- the product and the selection together, at k = 1,500: the whole product into the buffer, then the compiled
  selection, against the product in tiles each selected from while in cache (``rec_core.feed.tiled_top_k``, what
  ``iter_top_k`` does now); the two must agree exactly (indices and values).

Best of ``ROUNDS`` alternated rounds, per user.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.common import BenchRow
from rec_core.feed.tiled_top_k import product_top_k
from rec_core.feed.top_k_kernel import top_k_rows

NAME = "top_k"
USERS, VIDEOS, DIM = 512, 495_000, 64
ROUNDS = 3


def _ms_per_user(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - started) / USERS


def run() -> list[BenchRow]:
    rng = np.random.default_rng(0)
    users = torch.from_numpy(rng.standard_normal((USERS, DIM), dtype=np.float32))
    videos_t = torch.from_numpy(rng.standard_normal((VIDEOS, DIM), dtype=np.float32)).T.contiguous()
    buffer = torch.empty((USERS, VIDEOS), dtype=torch.float32)
    scores = buffer.numpy()  # the same memory: each round's product
    no_rows, no_videos = np.zeros(USERS + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)  # nothing excluded
    top_k_rows(np.zeros((2, 4096), dtype=np.float32), 8)  # compiled (or loaded from numba's cache) first
    product_top_k(users[:2], videos_t[:, :4096], 8, no_rows[:3], no_videos)
    times: dict[str, list[float]] = {}
    with torch.inference_mode():
        for _ in range(ROUNDS):
            times.setdefault("product, fresh tensor", []).append(_ms_per_user(lambda: users @ videos_t))
            times.setdefault("product, reused buffer", []).append(
                _ms_per_user(lambda: torch.mm(users, videos_t, out=buffer))
            )
            for k in (1500, 50):
                out: dict[str, tuple[np.ndarray, np.ndarray]] = {}

                def by_torch(k: int = k, out: dict = out) -> None:
                    values, indices = torch.topk(buffer, k, dim=1)
                    out["torch"] = (values.numpy(), indices.numpy())

                def compiled(k: int = k, out: dict = out) -> None:
                    indices, values, _ = top_k_rows(scores, k)
                    out["compiled"] = (values, indices)

                times.setdefault(f"top {k}, torch.topk", []).append(_ms_per_user(by_torch))
                times.setdefault(f"top {k}, compiled", []).append(_ms_per_user(compiled))
                if not np.array_equal(out["torch"][0], out["compiled"][0]):
                    raise AssertionError(f"the compiled top {k} differs from torch.topk's")
            together: dict[str, tuple[np.ndarray, np.ndarray]] = {}

            def whole(out: dict = together) -> None:
                torch.mm(users, videos_t, out=buffer)
                out["whole"] = top_k_rows(scores, 1500)[:2]

            def tiled(out: dict = together) -> None:
                out["tiled"] = product_top_k(users, videos_t, 1500, no_rows, no_videos)[:2]

            times.setdefault("product + top 1500, whole product", []).append(_ms_per_user(whole))
            times.setdefault("product + top 1500, tiles", []).append(_ms_per_user(tiled))
            if not all(np.array_equal(a, b) for a, b in zip(together["whole"], together["tiled"], strict=True)):
                raise AssertionError("the tiles' top 1500 differs from the whole product's")
    best = {name: min(values) for name, values in times.items()}
    shape = f"{USERS} users x {VIDEOS:,} videos, {DIM}-d, best of {ROUNDS} alternated"
    rows = [BenchRow(NAME, name, ms, "ms/user", shape) for name, ms in best.items()]
    rows.append(
        BenchRow(NAME, "product: reused / fresh", best["product, fresh tensor"] / best["product, reused buffer"], "x")
    )
    for k in (1500, 50):
        ratio = best[f"top {k}, torch.topk"] / best[f"top {k}, compiled"]
        rows.append(BenchRow(NAME, f"top {k}: compiled / torch.topk", ratio, "x", "speed-up"))
    tiles = best["product + top 1500, whole product"] / best["product + top 1500, tiles"]
    rows.append(BenchRow(NAME, "product + top 1500: tiles / whole product", tiles, "x", "speed-up"))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
