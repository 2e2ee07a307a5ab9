"""A narrow interface over one Milvus collection of L2-normalised vectors, searched by inner product.

The same class talks to Milvus Lite (``uri`` is a ``.db`` file) and to a Milvus
server (``uri`` is ``http://host:19530``); nothing else changes between the two
(docs/architecture.md, invariant 7). The primary key is the item id as a VARCHAR.

Milvus Lite facts this module designs around (measured with milvus-lite 2.5.1 and
pymilvus 3.0.2):

* A Lite file is locked by one process at a time. The lock belongs to a server
  process that pymilvus starts on first use and that ``MilvusClient.close()`` does
  NOT stop, so :meth:`VectorStore.close` releases it explicitly (reference-counted
  per file, so two stores on one file in one process do not pull the rug from
  under each other). Until then another process gets "Open local milvus failed".
* Lite supports FLAT, IVF_FLAT and AUTOINDEX only; FLAT (exact) is the fastest at
  catalogue sizes of 10^4-10^5. A server gets AUTOINDEX.
* Expression templates (``filter_params``) make Lite 2.5.1 fail every search, so
  exclusion filters are literal expressions.
* A Lite write request costs time quadratic in its rows (server side), so writes go
  in requests of 2,000 rows: 50,000 vectors load in about 2.5 s.
* pymilvus 3 shares one gRPC connection per address among all clients of a process
  (the first client's options win) and by default pings it every 10 s even when idle.
  A gRPC server with gRPC's default keepalive policy (milvus-lite's server binary on
  a TCP address, as tests/test_milvus_server.py runs it) answers the third idle ping
  with GOAWAY "too_many_pings", and a request that lands then fails with UNAVAILABLE.
  So every client opened here (:func:`open_client`) pings only during calls; a real
  Milvus server permits idle pings, and loses nothing but the idle ping without them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import ConnectionConfigException, MilvusException

from rec_core.ids import MAX_ID_BYTES, id_problem

log = logging.getLogger(__name__)

ID_FIELD = "video_id"
VECTOR_FIELD = "vector"
ID_MAX_LENGTH = MAX_ID_BYTES  # VARCHAR max_length counts UTF-8 bytes
# Milvus rejects a topk or a number of queries above 16384 in one request.
MAX_TOPK = 16_384
MAX_QUERIES = 16_384
# Exclusion lists up to this size go into the search as a filter expression; longer
# ones are handled by over-fetching and filtering here, because a huge "not in"
# expression is parsed and evaluated per request and gets slower than the extra hits.
FILTER_MAX_IDS = 512
# Rows per write request. Milvus Lite's cost per request grows with the square of its rows (5k rows 1 s,
# 10k 4.5 s, 20k 15 s); 2,000-row requests load 50,000 64-d vectors in about 2.5 s instead of 10-13 s with
# 10,000-row ones. Inserts into a fresh collection are cheaper still in smaller requests (100,000 64-d vectors:
# 2.4 s in 1,000-row inserts, 3.0 s in 2,000-row ones, 3.9 s as 2,000-row upserts; December 5, 2026), and upserts
# take as long either way. The byte bound keeps wide vectors far below gRPC's 64 MiB message cap.
WRITE_BATCH_ROWS = 1_000
WRITE_BATCH_BYTES = 4 << 20

# gRPC channel options of every client: no keepalive pings on an idle connection (see the module doc).
GRPC_OPTIONS = {"grpc.keepalive_permit_without_calls": False}

Hits = list[tuple[str, float]]


class VectorStoreError(RuntimeError):
    """The vector store cannot be opened, or a request to it is malformed."""


@dataclass(frozen=True, slots=True)
class Upserted:
    """What :meth:`VectorStore.upsert` did: rows written, and the ids it left out with the reason for each."""

    written: int
    skipped: dict[str, str]


def is_lite_uri(uri: str) -> bool:
    return uri.endswith(".db")


LITE_OPEN_ATTEMPTS = 3


def open_client(uri: str) -> MilvusClient:
    """A pymilvus client with this module's gRPC options; use it for every client of a product process."""
    return MilvusClient(uri=uri, grpc_options=GRPC_OPTIONS)


def _open(uri: str, attempts: int) -> MilvusClient:
    # Milvus Lite starts a server process and connects to its unix socket; on a loaded machine the first connection
    # can time out ("Fail connecting to server on unix:...") although a second attempt succeeds. A file held by
    # another process fails differently and is never retried.
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                # milvus-lite 2.5.1 imports pkg_resources on first use; the pin (setuptools<81) is deliberate.
                warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
                return open_client(uri)
        except MilvusException as exc:
            # Only a failed connection: "Open local milvus failed" (ConnectionConfigException) means another
            # process holds the file, and retrying would connect to that process's server instead.
            if attempt == attempts or isinstance(exc, ConnectionConfigException) or "Fail connecting" not in str(exc):
                raise
            log.warning("opening Milvus at %s failed (attempt %d of %d): %s; retrying", uri, attempt, attempts, exc)
            time.sleep(attempt)
    raise AssertionError("unreachable")


class VectorStore:
    """One collection: ``create``, ``upsert``, ``search``, ``count``, ``drop``; ``close`` when done."""

    def __init__(self, uri: str, collection: str, dim: int, *, index_type: str | None = None) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.uri, self.collection, self.dim = uri, collection, dim
        self.lite = is_lite_uri(uri)
        self.index_type = index_type or ("FLAT" if self.lite else "AUTOINDEX")
        self._lite_path: str | None = None
        if self.lite:
            path = Path(uri).expanduser().absolute()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lite_path = _acquire_lite(path)
        try:
            self._client: MilvusClient | None = _open(uri, attempts=LITE_OPEN_ATTEMPTS if self.lite else 1)
        except MilvusException as exc:
            if self._lite_path is not None:
                _release_lite(self._lite_path)
            hint = " (a Milvus Lite file is opened by one process at a time; is another one holding it?)"
            raise VectorStoreError(f"cannot open Milvus at {uri}: {exc}{hint if self.lite else ''}") from exc

    # ---- lifecycle ------------------------------------------------------
    def __enter__(self) -> VectorStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and, for Lite, stop the file's server so another process may open it. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            client.close()
        path, self._lite_path = self._lite_path, None
        if path is not None:
            _release_lite(path)

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            raise VectorStoreError(f"vector store {self.uri}#{self.collection} is closed")
        return self._client

    # ---- collection -----------------------------------------------------
    def exists(self) -> bool:
        return bool(self.client.has_collection(self.collection))

    def create(self, drop_existing: bool = True) -> None:
        """Create the collection (empty, indexed, loaded); an existing one is dropped first unless told not to."""
        if self.exists():
            if not drop_existing:
                return
            self.client.drop_collection(self.collection)
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=self.dim)
        index = self.client.prepare_index_params()
        index.add_index(VECTOR_FIELD, index_type=self.index_type, metric_type="IP")
        self.client.create_collection(self.collection, schema=schema, index_params=index)

    def drop(self) -> None:
        if self.exists():
            self.client.drop_collection(self.collection)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> Upserted:
        """Insert or replace ``vectors`` (n x dim, L2-normalised) under ``ids``.

        An id that breaks the id rule (:mod:`rec_core.ids`; over 128 bytes is one Milvus itself refuses) is
        skipped, logged and listed in the answer, and the others are written: one bad id that got past the
        API or the importer must not fail a whole load or publish. Malformed vectors still raise.
        """
        return self._write(ids, vectors, self.client.upsert)

    def insert(self, ids: Sequence[str], vectors: np.ndarray) -> Upserted:
        """:meth:`upsert` into a collection that holds none of ``ids`` (one just created, loaded with distinct ids).

        An upsert deletes each id before it inserts it, which Milvus Lite pays for per row; a whole snapshot's load
        into its fresh collection has nothing to replace. An id already there would be held twice: the caller
        promises it is not."""
        return self._write(ids, vectors, self.client.insert)

    def _write(self, ids: Sequence[str], vectors: np.ndarray, request: Callable[[str, list[dict]], object]) -> Upserted:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise VectorStoreError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        if len(ids) != len(vectors):
            raise VectorStoreError(f"{len(ids)} ids for {len(vectors)} vectors")
        ids = [i if isinstance(i, str) else str(i) for i in ids]
        problems = [id_problem(i) for i in ids]
        skipped = {i: p for i, p in zip(ids, problems, strict=True) if p is not None}
        if skipped:
            example, reason = next(iter(skipped.items()))
            log.warning(
                "%s#%s: skipping %d id(s) that cannot be indexed, e.g. %s: %s",
                self.uri,
                self.collection,
                len(skipped),
                ascii(example)[:200],  # ascii: a bidi or newline character must not garble the log line
                reason,
            )
            keep = [p is None for p in problems]
            ids = [i for i, k in zip(ids, keep, strict=True) if k]
            vectors = vectors[np.asarray(keep, dtype=bool)]
        batch = max(1, min(WRITE_BATCH_ROWS, WRITE_BATCH_BYTES // (4 * self.dim + ID_MAX_LENGTH)))
        for lo in range(0, len(ids), batch):
            rows = [
                {ID_FIELD: str(i), VECTOR_FIELD: v}
                for i, v in zip(ids[lo : lo + batch], vectors[lo : lo + batch], strict=True)
            ]
            request(self.collection, rows)
        return Upserted(written=len(ids), skipped=skipped)

    def delete(self, ids: Sequence[str]) -> None:
        """Remove ``ids`` (absent ones are ignored).

        As a filter we quote, not ``delete(ids=...)``: pymilvus writes those ids into the expression without
        escaping, so an id with a backslash or a quote was silently left in the collection."""
        if ids:
            self.client.delete(self.collection, filter=f"{ID_FIELD} in {_id_list([str(i) for i in ids])}")

    def flush(self) -> None:
        """Seal what was written so that a count or a reopen sees all of it."""
        self.client.flush(self.collection)

    def count(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    # ---- search ---------------------------------------------------------
    def search(
        self,
        vectors: np.ndarray,
        k: int,
        exclude_ids: Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        batch: int = 64,
    ) -> list[Hits]:
        """The ``k`` best (id, inner product) per query vector, best first.

        ``vectors`` is one vector or an (n, dim) array; the answer has one list per
        query either way. ``exclude_ids`` is a list of ids left out of every answer,
        or one such list per query. Up to :data:`FILTER_MAX_IDS` shared ids become a
        filter expression; anything else is answered by asking for ``k`` plus the
        longest exclusion list and dropping the excluded ids here, which is exact as
        long as that stays within Milvus' topk cap of 16384 (beyond it an answer may
        be short, and a warning says so).
        """
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise VectorStoreError(f"expected query vectors of shape (n, {self.dim}), got {queries.shape}")
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if exclude_ids is not None and not isinstance(exclude_ids, list | tuple):
            exclude_ids = list(exclude_ids)  # a numpy array has no truth value
        per_query = _per_query_exclusions(exclude_ids, len(queries))
        shared = per_query is None and bool(exclude_ids)
        expr, limit, drop = "", k, None
        if shared and len(exclude_ids) <= FILTER_MAX_IDS:  # type: ignore[arg-type]
            expr = f"{ID_FIELD} not in {_id_list(exclude_ids)}"  # type: ignore[arg-type]
        elif shared:
            drop = [set(exclude_ids)] * len(queries)  # type: ignore[arg-type]
        elif per_query is not None:
            drop = [set(e) for e in per_query]
        if drop is not None:
            limit = k + max(len(d) for d in drop)
            if limit > MAX_TOPK:
                log.warning(
                    "exclusion lists too long: over-fetching %d, capped at %d; answers may be short", limit, MAX_TOPK
                )
                limit = MAX_TOPK
        limit = min(limit, MAX_TOPK)
        step = max(1, min(batch, MAX_QUERIES))
        out: list[Hits] = []
        for lo in range(0, len(queries), step):
            chunk = queries[lo : lo + step]
            result = self.client.search(
                self.collection, data=list(chunk), limit=limit, filter=expr, anns_field=VECTOR_FIELD
            )
            for j, hits in enumerate(result):
                pairs = [(str(h["id"]), float(h["distance"])) for h in hits]
                if drop is not None:
                    excluded = drop[lo + j]
                    pairs = [p for p in pairs if p[0] not in excluded]
                out.append(pairs[:k])
        return out


def _per_query_exclusions(exclude_ids: Sequence[str] | Sequence[Sequence[str]] | None, n: int) -> list | None:
    """The exclusion lists, one per query, if ``exclude_ids`` is given per query; else None."""
    if not exclude_ids or isinstance(exclude_ids[0], str):
        return None
    if len(exclude_ids) != n:
        raise VectorStoreError(f"{len(exclude_ids)} exclusion lists for {n} queries")
    return [list(e) for e in exclude_ids]


def _id_list(ids: Sequence[str]) -> str:
    # Milvus string literals take JSON-style double quotes and backslash escapes.
    return "[" + ", ".join(json.dumps(str(i), ensure_ascii=False) for i in ids) + "]"


# ---- Milvus Lite server lifetime ------------------------------------------------

_lite_lock = threading.Lock()
_lite_refs: dict[str, int] = {}


def _acquire_lite(path: Path) -> str:
    key = str(path.resolve())
    with _lite_lock:
        _lite_refs[key] = _lite_refs.get(key, 0) + 1
    return key


def _release_lite(key: str) -> None:
    with _lite_lock:
        left = _lite_refs.get(key, 0) - 1
        if left > 0:
            _lite_refs[key] = left
            return
        _lite_refs.pop(key, None)
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:  # pragma: no cover - Lite not installed: nothing was started
        return
    # Stopping the server releases the file lock; without it the file stays ours until the process exits.
    server_manager_instance.release_server(key)
