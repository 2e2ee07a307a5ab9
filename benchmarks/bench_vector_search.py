"""Candidate retrieval for feed materialization: Milvus Lite search against an exact torch matmul + topk.

50,000 64-d unit vectors, the top 500 for 1,000 users, through
``rec_core.snapshot.vector_store.VectorStore`` (FLAT, inner product, batched queries) and
through one matrix product per chunk of users with ``torch.topk``. Both are timed
alternately in the same run (best of ``ROUNDS``), so the ratio survives the drift
of a shared machine. Also reported: what loading the collection costs, a single
query's latency (the API's online path), and how far the two answers agree.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import BenchRow, stopwatch
from rec_core.snapshot.vector_store import VectorStore

NAME = "bench_vector_search"
N_VECTORS = 50_000
DIM = 64
N_USERS = 1_000
TOP_K = 500
MILVUS_BATCH = 64  # queries per search request (VectorStore.search default)
TORCH_CHUNK = 250  # users per matmul: a 250 x 50,000 score block is 50 MB
ROUNDS = 2
SINGLE_QUERIES = 50


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_topk(items: torch.Tensor, users: torch.Tensor, k: int, chunk: int = TORCH_CHUNK) -> torch.Tensor:
    """Indices of the ``k`` best items per user by inner product, best first."""
    out = []
    with torch.inference_mode():
        for lo in range(0, len(users), chunk):
            out.append(torch.topk(users[lo : lo + chunk] @ items.T, k, dim=1).indices)
    return torch.cat(out)


def run() -> list[BenchRow]:
    rng = np.random.default_rng(0)
    vectors, users = _unit(rng, N_VECTORS), _unit(rng, N_USERS)
    ids = [f"v{i:06d}" for i in range(N_VECTORS)]
    items_t, users_t = torch.from_numpy(vectors), torch.from_numpy(users)
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory() as tmp, VectorStore(str(Path(tmp) / "bench.db"), "videos", DIM) as store:
        with stopwatch() as t_load:
            store.create()
            store.upsert(ids, vectors)
            store.flush()
        store.search(users[:MILVUS_BATCH], TOP_K, batch=MILVUS_BATCH)  # warm-up
        exact_topk(items_t, users_t[:TORCH_CHUNK], TOP_K)
        milvus_s, torch_s = [], []
        hits: list = []
        exact = torch.zeros(0)
        for _ in range(ROUNDS):
            with stopwatch() as t:
                hits = store.search(users, TOP_K, batch=MILVUS_BATCH)
            milvus_s.append(t[0])
            with stopwatch() as t:
                exact = exact_topk(items_t, users_t, TOP_K)
            torch_s.append(t[0])
        single = []
        for q in users[:SINGLE_QUERIES]:
            start = time.perf_counter()
            store.search(q, TOP_K)
            single.append((time.perf_counter() - start) * 1000)

    index = {v: i for i, v in enumerate(ids)}
    agreement = np.mean(
        [len({index[i] for i, _ in h} & set(e.tolist())) / TOP_K for h, e in zip(hits, exact.numpy(), strict=True)]
    )
    milvus_rate, torch_rate = N_USERS / min(milvus_s), N_USERS / min(torch_s)
    shape = f"{N_VECTORS:,} x {DIM}-d, top-{TOP_K}"
    rows += [
        BenchRow(NAME, f"Milvus Lite FLAT search ({shape}, {MILVUS_BATCH} queries/request)", milvus_rate, "users/s"),
        BenchRow(NAME, f"exact torch matmul + topk ({shape}, {TORCH_CHUNK} users/chunk)", torch_rate, "users/s"),
        BenchRow(NAME, "exact matmul speed-up over Milvus Lite", torch_rate / milvus_rate, "x", "same run, best of 2"),
        BenchRow(NAME, "top-500 overlap, Milvus vs exact", float(agreement), "share", "FLAT is exact; ties aside 1.0"),
        BenchRow(NAME, f"Milvus Lite load of {N_VECTORS:,} vectors", N_VECTORS / t_load[0], "rows/s"),
        BenchRow(
            NAME, f"Milvus Lite single query, top-{TOP_K}, p50", float(np.percentile(single, 50)), "ms", "online path"
        ),
    ]
    return rows


if __name__ == "__main__":
    from benchmarks.run import to_markdown

    print(to_markdown(run()))
