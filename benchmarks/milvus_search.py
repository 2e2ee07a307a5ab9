"""Milvus search latency with whatever pymilvus / milvus-lite this interpreter has.

Standalone on purpose (numpy and pymilvus only): ``benchmarks/milvus_versions.py``
runs this same file inside side venvs that pin other milvus-lite releases, so the
versions are compared side by side in one run. Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from pymilvus import DataType, MilvusClient

DIM = 64
TOP_K = 50
QUERIES = 50


def bench(n: int, index_type: str, tmp: Path) -> dict:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    client = MilvusClient(str(tmp / f"bench_{n}_{index_type}.db"))
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    params = {"HNSW": {"M": 16, "efConstruction": 100}, "IVF_FLAT": {"nlist": 256}}.get(index_type, {})
    index.add_index("vec", index_type=index_type, metric_type="IP", params=params)
    client.create_collection("bench", schema=schema, index_params=index)
    start = time.perf_counter()
    for lo in range(0, n, 10_000):
        chunk = vectors[lo : lo + 10_000]
        client.insert("bench", [{"id": lo + i, "vec": v} for i, v in enumerate(chunk)])
    client.flush("bench")
    client.load_collection("bench")
    insert_s = time.perf_counter() - start
    queries = rng.standard_normal((QUERIES, DIM)).astype(np.float32)
    search_params = {"HNSW": {"ef": 128}, "IVF_FLAT": {"nprobe": 16}}.get(index_type, {})
    client.search("bench", data=[queries[0].tolist()], limit=TOP_K, search_params=search_params)  # warm-up
    times = []
    for q in queries:
        t = time.perf_counter()
        client.search("bench", data=[q.tolist()], limit=TOP_K, search_params=search_params)
        times.append((time.perf_counter() - t) * 1000)
    client.close()
    return {
        "n": n,
        "index": index_type,
        "insert_s": round(insert_s, 2),
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p99_ms": round(float(np.percentile(times, 99)), 2),
    }


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [20_000, 100_000]
    out = {"milvus_lite": version("milvus-lite"), "pymilvus": version("pymilvus"), "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            for index_type in ("FLAT", "IVF_FLAT", "HNSW"):
                try:
                    out["results"].append(bench(n, index_type, Path(tmp)))
                except Exception as exc:  # an index type a release lacks is a result, not a crash
                    out["results"].append({"n": n, "index": index_type, "error": str(exc)[:200]})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
