"""VectorStore against a real Milvus Lite file: exact search, exclusions, upserts, and releasing the file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rec_core.snapshot.vector_store import FILTER_MAX_IDS, VectorStore, VectorStoreError

DIM = 8
N = 1_000


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# One id with a quote and a backslash, to prove exclusion filters escape ids.
IDS = [f"v{i:04d}" for i in range(N - 1)] + ['odd"id\\x']


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[tuple[VectorStore, np.ndarray]]:
    vectors = unit(np.random.default_rng(0), N)
    store = VectorStore(str(tmp_path / "vectors.db"), "videos", DIM)
    store.create()
    store.upsert(IDS, vectors)
    store.flush()
    yield store, vectors
    store.close()


def exact(vectors: np.ndarray, queries: np.ndarray, k: int, exclude: list[set[str]] | None = None) -> list[list[str]]:
    scores = queries @ vectors.T
    out = []
    for row, s in enumerate(scores):
        order = [IDS[j] for j in np.argsort(-s, kind="stable")]
        if exclude is not None:
            order = [i for i in order if i not in exclude[row]]
        out.append(order[:k])
    return out


def ids_of(hits: list[list[tuple[str, float]]]) -> list[list[str]]:
    return [[i for i, _ in h] for h in hits]


def test_search_is_exact_inner_product(filled: tuple[VectorStore, np.ndarray]) -> None:
    store, vectors = filled
    assert store.count() == N
    queries = unit(np.random.default_rng(1), 20)
    hits = store.search(queries, 10)
    assert ids_of(hits) == exact(vectors, queries, 10)
    for q, h in zip(queries, hits, strict=True):
        scores = [s for _, s in h]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, [float(q @ vectors[IDS.index(i)]) for i, _ in h], atol=1e-5)
    # A stored vector finds itself first, with score 1; one vector in, one answer list out.
    (single,) = store.search(vectors[5], 3)
    assert single[0][0] == IDS[5] and single[0][1] == pytest.approx(1.0, abs=1e-5)


def test_exclusions_shared_per_query_and_over_fetched(filled: tuple[VectorStore, np.ndarray]) -> None:
    store, vectors = filled
    queries = vectors[[0, 7, N - 1]]  # each query's best hit is itself
    # Small shared list: a filter expression (the quoted id must survive it).
    small = [IDS[0], IDS[7], IDS[N - 1]]
    assert ids_of(store.search(queries, 5, small)) == exact(vectors, queries, 5, [set(small)] * 3)
    # A shared list too long for an expression: over-fetch and filter here.
    nearest = exact(vectors, queries[:1], FILTER_MAX_IDS + 50)[0]
    assert ids_of(store.search(queries[:1], 5, nearest)) == exact(vectors, queries[:1], 5, [set(nearest)])
    # One list per query.
    per_query = [[IDS[0]], [], exact(vectors, queries[2:], 30)[0]]
    expected = exact(vectors, queries, 5, [set(e) for e in per_query])
    assert ids_of(store.search(queries, 5, per_query)) == expected
    with pytest.raises(VectorStoreError):
        store.search(queries, 5, [[IDS[0]]])


def test_upsert_replaces_and_create_drops(filled: tuple[VectorStore, np.ndarray]) -> None:
    store, vectors = filled
    moved = -vectors[:10]
    store.upsert(IDS[:10], moved)
    store.flush()
    assert store.count() == N
    assert store.search(moved[3], 1)[0][0][0] == IDS[3]
    store.create(drop_existing=False)  # keeps what is there
    assert store.count() == N
    store.create()  # drops and recreates
    assert store.exists() and store.count() == 0
    store.drop()
    assert not store.exists()


def test_deleted_ids_leave_search(filled: tuple[VectorStore, np.ndarray]) -> None:
    store, vectors = filled
    best = store.search(vectors[0], 1)[0][0][0]
    store.delete([best, "never-there"])
    assert best not in [i for i, _ in store.search(vectors[0], 10)[0]]


def test_rejects_malformed_input(filled: tuple[VectorStore, np.ndarray]) -> None:
    store, vectors = filled
    with pytest.raises(VectorStoreError):
        store.upsert(IDS[:2], vectors[:3])
    with pytest.raises(VectorStoreError):
        store.upsert(["x"], np.zeros((1, DIM + 1), dtype=np.float32))
    done = store.upsert(["x" * 200], vectors[:1])  # an id Milvus cannot hold is skipped and reported, not fatal
    assert done.written == 0 and "128 bytes" in done.skipped["x" * 200]
    with pytest.raises(VectorStoreError):
        store.search(np.zeros(DIM + 1, dtype=np.float32), 3)


def test_insert_into_a_fresh_collection_holds_what_upsert_holds(
    filled: tuple[VectorStore, np.ndarray], tmp_path: Path
) -> None:
    """The snapshot load inserts (no per-id delete first); the collection must answer as the upserted one does,
    and an id Milvus cannot hold is still skipped and reported, not fatal."""
    upserted, vectors = filled
    with VectorStore(str(tmp_path / "inserted.db"), "videos", DIM) as store:
        store.create()
        done = store.insert([*IDS, "y" * 200], np.vstack([vectors, vectors[:1]]))
        store.flush()
        assert done.written == N and "128 bytes" in done.skipped["y" * 200]
        assert store.count() == N
        queries = unit(np.random.default_rng(3), 20)
        assert ids_of(store.search(queries, 10)) == ids_of(upserted.search(queries, 10)) == exact(vectors, queries, 10)
        with pytest.raises(VectorStoreError):
            store.insert(IDS[:2], vectors[:3])


_COUNT_IN_CHILD = textwrap.dedent(
    """
    import sys
    from rec_core.snapshot.vector_store import VectorStore, VectorStoreError
    try:
        with VectorStore(sys.argv[1], "videos", 8) as store:
            print("count", store.count())
    except VectorStoreError as exc:
        print("refused", exc)
    """
)


def _count_in_child(uri: str) -> str:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _COUNT_IN_CHILD, uri], capture_output=True, text=True, cwd=root, timeout=120
    )
    return done.stdout.strip()


def test_close_releases_the_lite_file_to_other_processes(tmp_path: Path) -> None:
    uri = str(tmp_path / "owned.db")
    store = VectorStore(uri, "videos", DIM)
    store.create()
    store.upsert(["a", "b"], unit(np.random.default_rng(2), 2))
    store.flush()
    # A second store on the same file in this process shares the server; closing it must not stop the first.
    other = VectorStore(uri, "videos", DIM)
    other.close()
    assert store.count() == 2
    assert _count_in_child(uri).startswith("refused")
    store.close()
    store.close()  # idempotent
    assert _count_in_child(uri) == "count 2"
    with VectorStore(uri, "videos", DIM) as again:  # and this process can open it again
        assert again.count() == 2
    with pytest.raises(VectorStoreError):
        again.count()


def test_a_lite_start_that_fails_to_connect_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Milvus Lite's first connection to its own server can time out on a loaded machine (seen in `make chaos`);
    the open is retried, and a file that keeps failing still raises the one clear error."""
    from pymilvus.exceptions import ConnectionConfigException, MilvusException

    import rec_core.snapshot.vector_store as vs

    real, calls = vs.open_client, []

    def flaky(uri: str):  # the connection itself fails once, as the real one did; then the real client opens
        calls.append(uri)
        if len(calls) == 1:
            raise MilvusException(message="Fail connecting to server on unix:/tmp/x.sock, illegal connection params")
        return real(uri)

    monkeypatch.setattr(vs, "open_client", flaky)
    monkeypatch.setattr(vs.time, "sleep", lambda s: None)
    store = VectorStore(str(tmp_path / "a.db"), "videos", 4)
    try:
        store.create()
        assert len(calls) == 2
    finally:
        store.close()

    def down(uri: str):
        calls.append(uri)
        raise MilvusException(message="Fail connecting to server")

    calls.clear()
    monkeypatch.setattr(vs, "open_client", down)
    with pytest.raises(VectorStoreError, match="cannot open Milvus"):
        VectorStore(str(tmp_path / "b.db"), "videos", 4)
    assert len(calls) == vs.LITE_OPEN_ATTEMPTS
    # Another process holding the file is refused at once: a retry would connect to that process's server.
    calls.clear()

    def held(uri: str):
        calls.append(uri)
        raise ConnectionConfigException(message="Open local milvus failed")

    monkeypatch.setattr(vs, "open_client", held)
    with pytest.raises(VectorStoreError, match="another one holding it"):
        VectorStore(str(tmp_path / "b.db"), "videos", 4)
    assert len(calls) == 1
    monkeypatch.setattr(vs, "open_client", real)
    VectorStore(str(tmp_path / "b.db"), "videos", 4).close()  # the failed opens released the file's lock


def test_ids_that_need_escaping_are_deleted(filled: tuple[VectorStore, np.ndarray], tmp_path: Path) -> None:
    """``delete(ids=...)`` left an id with a backslash or a double quote in place without a word."""
    store, vectors = filled
    odd = ["back\\slash", 'double"quote', 'both\\"', "plain-one"]
    store.upsert(odd, vectors[:4])
    store.delete(odd)
    store.flush()
    assert store.count() == N
    hits = {i for i, _ in store.search(vectors[:4], 20)[0] + store.search(vectors[:4], 20)[1]}
    assert not hits & set(odd)


def test_no_id_reaches_milvus_lite_sql_unescaped(tmp_path: Path) -> None:
    """Milvus Lite puts an upsert's ids into SQL between single quotes, unescaped: ``x') OR ('1'='1`` deleted
    every row of the collection from its file (the running process kept answering; a restart found one row). The
    id rule refuses an apostrophe, and the store skips such an id, so the collection keeps its rows across a
    reopen."""
    path = str(tmp_path / "vectors.db")
    vectors = unit(np.random.default_rng(3), 50)
    store = VectorStore(path, "videos", DIM)
    store.create()
    store.insert([f"v{i}" for i in range(50)], vectors)
    store.flush()
    for evil in ["x') OR ('1'='1", "x') OR 1=1 --", "it's"]:
        done = store.upsert([evil], vectors[:1])
        assert done.written == 0 and "apostrophe" in done.skipped[evil]
    store.flush()
    store.close()
    reopened = VectorStore(path, "videos", DIM)
    try:
        assert reopened.count() == 50
        assert sorted(i for i, _ in reopened.search(vectors[0], 60)[0]) == sorted(f"v{i}" for i in range(50))
    finally:
        reopened.close()
