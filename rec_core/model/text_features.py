"""Text embeddings of videos, cached so that a rerun encodes only new or changed videos.

Cache layout: ``<data root>/features/text/<model slug>/embeddings.parquet`` with
columns ``key`` (sha256 hex) and ``embedding`` (``fixed_size_list<float32>[dim]``).
A key is the sha256 of the model id and the exact encoder input
(:func:`rec_core.model.text_encoder.video_text` of caption and hashtags), so a changed
caption, changed hashtags, another model (or its int8 variant), or a change of the
text format all miss, while unchanged videos hit no matter their ``video_id``.

Readers never lock: the file is only ever replaced by an atomic rename. Writers
encode without a lock (that is the slow part) and then, holding an ``fcntl`` lock
on ``embeddings.parquet.lock``, re-read the file, add the keys still missing and
rename the result into place, so concurrent runs never lose each other's entries.
An edited caption or hashtag list, or a data set imported over another, leaves entries that no video carries any
more; :func:`compact_cache` (run by ``build_features`` over the whole live lake) drops them once they pass
:data:`COMPACT_SLACK` of the lake's videos, so the file stays within that bound of the lake.

A whole lookup (every video of a table, as the release, the embedding shards and the batch make it) reads the
whole cache and hashes every text: seconds at the large scale, paid by each of a run's dozen processes. So the
result of a complete lookup is also kept as one aligned array, ``aligned-<digest>.npy`` beside the cache, under
a digest of the model id, the text format and the exact caption and hashtag columns in row order; the next lookup
of the same table maps that array (read-only) and reads nothing else: read whole, its 768 MB at the large scale
took ~2 s of every embedding shard and as much memory; mapped, a shard reads the pages of the rows it uses, and
the processes share them. Cache entries never change, so such an array never goes stale; the newest
:data:`ALIGNED_KEPT` are kept (the live lake's and the one before it; a process that maps one being pruned keeps
reading it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rec_core.atomic import exclusive_lock, remove_dead_temps, write_with
from rec_core.model.text_cache_sync import FILES_KEPT, SharedTextCache
from rec_core.model.text_encoder import RUNTIMES, TextEncoder, resolve_model, video_text
from rec_core.settings import ModelSettings, PathSettings, SettingsError
from rec_core.storage.object_store import StoreError
from rec_core.storage.versions import VersionError

log = logging.getLogger(__name__)

CACHE_FILE = "embeddings.parquet"
# Entries beyond the lake's videos that the cache may hold before compact_cache rewrites it without those of texts
# no video carries: a rewrite is GBs at the large scale, so not at every edit.
COMPACT_SLACK = 0.25
ALIGNED_KEPT = 2  # aligned arrays kept per model (760 MB each at 495,000 videos): the live lake's and the last one
# What video_text makes of a few inputs: in every aligned array's digest, so a change of the text format, which
# changes the cache's keys, also retires the aligned arrays made under the old one.
_FORMAT_PROBES = (("A  caption", ["#tag", "Tag", " two words "]), (None, None), ("", ["x"]), ("only", []))


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int  # videos whose vector came from the cache
    misses: int  # videos whose vector had to be computed
    seconds: float  # wall time of the whole call
    encoded: int = 0  # distinct texts run through the model (misses after dedupe)


def cache_dir(paths: PathSettings, model_id: str, label: str) -> Path:
    """Folder of the cache of one model id: a readable label plus a hash of the full id."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "model"
    suffix = next((sfx for sfx in RUNTIMES.values() if sfx and model_id.endswith(sfx)), "")
    readable += suffix.replace("+", "-")
    digest = hashlib.sha256(model_id.encode()).hexdigest()[:12]
    return paths.data_dir / "features" / "text" / f"{readable}-{digest}"


def text_key(model_id: str, text: str) -> str:
    return hashlib.sha256(f"{model_id}\x00{text}".encode()).hexdigest()


def text_part(key: str, parts: int) -> int:
    """Which of ``parts`` parts a text's cache key falls in: by its hash, so a text (and every video carrying it)
    belongs to one part whatever the order of the videos."""
    return int(key[:15], 16) % parts


def encode_text_part(videos: pa.Table, paths: PathSettings, model: ModelSettings, part: int, parts: int) -> CacheStats:
    """Encode into the cache the missing texts of ``videos`` that fall in ``part`` of ``parts``
    (:func:`text_part`): what one mapped ``build_features`` task does, so workers share the encoding and each
    distinct text is encoded once. ``embed_videos_text`` after every part has run is a full cache hit."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} outside 0..{parts - 1}")
    _, stats = _embed(videos, paths, model, None, (part, parts))
    return stats


def embed_videos_text(
    videos: pa.Table, paths: PathSettings, model: ModelSettings, encoder: TextEncoder | None = None
) -> tuple[np.ndarray, CacheStats]:
    """Embed each row's caption+hashtags: ``(videos.num_rows, dim)`` float32, rows aligned with ``videos``.

    The cache lives under ``paths.data_dir``. ``encoder`` defaults to ``model.text_model`` (fp32) and is only
    constructed if some video is not cached; a given encoder decides the model id (and so the cache folder)
    instead of the setting.
    """
    return _embed(videos, paths, model, encoder, None)


def _embed(
    videos: pa.Table,
    paths: PathSettings,
    model: ModelSettings,
    encoder: TextEncoder | None,
    part: tuple[int, int] | None,
) -> tuple[np.ndarray, CacheStats]:
    """The cache lookup and the encoding of what it lacks; with ``part``, only that part's texts are encoded
    (the rows of the others' missing texts are left unset: a part's caller wants the cache, not the vectors)."""
    started = time.perf_counter()
    source = encoder.source if encoder is not None else resolve_model(model.text_model)
    model_id = encoder.model_id if encoder is not None else source.model_id()
    dim = encoder.dim if encoder is not None else source.dim()
    path = cache_dir(paths, model_id, source.label) / CACHE_FILE

    aligned = _aligned_path(path.parent, model_id, videos) if part is None and videos.num_rows else None
    if aligned is not None and (known := _read_aligned(aligned, videos.num_rows, dim)) is not None:
        stats = CacheStats(videos.num_rows, 0, time.perf_counter() - started)
        log.info("text embeddings for %d videos (%s): an aligned copy, %.1fs", len(known), model_id, stats.seconds)
        return known, stats

    texts, keys = _texts_and_keys(videos, model_id)
    out = np.empty((len(keys), dim), dtype=np.float32)
    if not keys:
        return out, CacheStats(0, 0, time.perf_counter() - started)

    key_array = pa.array(keys, pa.string())
    found = _look_up(key_array, _read_cache(path, dim), out, dim)
    # On an object store, what other machines encoded (another caption part, say) is merged before encoding.
    shared = SharedTextCache.of(paths, path.parent) if not found.all() else None
    if shared is not None and _merge_shared(shared, path, dim):
        found = _look_up(key_array, _read_cache(path, dim), out, dim)
    hits = int(found.sum())
    misses = len(keys) - hits

    encoded = 0
    if misses:
        # One encode per distinct text: duplicate captions (reposts, templates) are common.
        todo: dict[str, str] = {}
        for i in np.flatnonzero(~found):
            if part is None or text_part(keys[i], part[1]) == part[0]:
                todo.setdefault(keys[i], texts[i])
        encoded = len(todo)
        if todo:
            if encoder is None:
                encoder = TextEncoder(
                    model.text_model, graph_cache=paths.text_graphs_dir, engine=model.text_batch_engine
                )
            new_vectors = encoder.encode(list(todo.values()))
            slot = {k: j for j, k in enumerate(todo)}
            missing_rows = [i for i in np.flatnonzero(~found) if keys[i] in slot]
            out[missing_rows] = new_vectors[[slot[keys[i]] for i in missing_rows]]
            fresh = _entries(pa.array(list(todo), pa.string()), new_vectors, dim)
            _append(path, dim, fresh)
            if shared is not None:
                _share(shared, fresh)
    if aligned is not None:  # every row is known now: the whole lookup is this table's aligned array
        _write_aligned(aligned, out)

    stats = CacheStats(hits, misses, time.perf_counter() - started, encoded)
    log.info(
        "text embeddings for %d videos (%s%s): %d cached, %d missing, %d texts encoded, %.1fs",
        len(keys),
        model_id,
        "" if part is None else f", part {part[0] + 1} of {part[1]}",
        hits,
        misses,
        encoded,
        stats.seconds,
    )
    return out, stats


def compact_cache(videos: pa.Table, paths: PathSettings, model: ModelSettings) -> int:
    """Rewrite the cache of ``model.text_model`` without the entries of texts that no row of ``videos`` (the whole
    live lake) carries, once it holds more than (1 + :data:`COMPACT_SLACK`) entries per video; returns how many
    were dropped. A run on another lake whose texts go is not harmed: it encodes them again. Torn temporary files
    of killed writes in the cache's folder go too."""
    model_id, dim, path = _cache_of(paths, model)
    for torn in remove_dead_temps(path.parent):  # a rewrite of the cache or an aligned array killed mid-write
        log.warning("removed %s, left by a write that was killed", torn)
    limit = int(videos.num_rows * (1 + COMPACT_SLACK))
    if _cached_rows(path) <= limit:  # the footer only: this check runs at every build_features
        return 0
    live = _live_keys(videos, model_id)
    try:
        with _writer_lock(path):
            current = _read_cache(path, dim)
            if current is None or current.num_rows <= limit:
                return 0
            kept = current.filter(pc.is_in(current.column("key"), value_set=live))
            write_with(path, lambda tmp: pq.write_table(kept, tmp, compression="none"))
    except (OSError, pa.ArrowException) as exc:  # a full disk, say: the cache stays as it was, the encoding done
        log.warning("could not compact the text embedding cache %s (%s); left as it is", path, exc)
        return 0
    dropped = current.num_rows - kept.num_rows
    log.info("text embedding cache %s: dropped %d entries no video carries, kept %d", path, dropped, kept.num_rows)
    return dropped


def fold_shared_cache(videos: pa.Table, paths: PathSettings, model: ModelSettings) -> int:
    """Where the lake is on an object store and the shared cache of ``model.text_model`` holds more than
    :data:`FILES_KEPT` pushed files: merge them all here, then push one file of the texts ``videos`` (the whole live
    lake) carries in their place. Returns how many files were replaced. If the merge fails nothing is folded (this
    machine's cache would lack what the others pushed); a store that fails is logged and left as it was."""
    model_id, dim, path = _cache_of(paths, model)
    shared = SharedTextCache.of(paths, path.parent)
    if shared is None:
        return 0
    try:
        files = shared.files()  # before the merge: what is folded must be here first
        if len(files) <= FILES_KEPT:
            return 0
        _pull_shared(shared, path, dim)
        cached = _read_cache(path, dim)
        if cached is None:
            return 0
        shared.replace(files, cached.filter(pc.is_in(cached.column("key"), value_set=_live_keys(videos, model_id))))
        return len(files)
    except (OSError, StoreError, VersionError, pa.ArrowException) as exc:
        log.warning("could not fold the text embeddings on %s (%s); left as they are", shared.where(), exc)
        return 0


def _cache_of(paths: PathSettings, model: ModelSettings) -> tuple[str, int, Path]:
    """The model id, the vector width and the cache file of ``model.text_model``."""
    source = resolve_model(model.text_model)
    return source.model_id(), source.dim(), cache_dir(paths, source.model_id(), source.label) / CACHE_FILE


def _live_keys(videos: pa.Table, model_id: str) -> pa.Array:
    return pa.array(sorted(set(_texts_and_keys(videos, model_id)[1])), pa.string())


def drop_unused_caches(paths: PathSettings, text_models: Iterable[str], older_than_s: float = 86_400.0) -> list[str]:
    """Remove the cache folders under ``features/text/`` of text models that none of ``text_models`` is (the
    setting's, and those the kept model versions were trained with), once untouched for ``older_than_s``: a changed
    text model or an upgraded wheel otherwise leaves a whole cache behind, a GB at the large scale. A text model
    that no longer resolves (its folder gone) needs nothing. Returns the folders' names."""
    root = paths.data_dir / "features" / "text"
    if not root.is_dir():
        return []
    keep = set()
    for text_model in set(text_models):
        try:
            source = resolve_model(text_model)
        except SettingsError:
            continue
        keep.add(cache_dir(paths, source.model_id(), source.label).name)
    cutoff = time.time() - older_than_s
    gone = []
    for folder in root.iterdir():
        if folder.is_dir() and folder.name not in keep and _last_touched(folder) < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder.name)
            log.info("removed the text embedding cache %s: no kept model version reads it", folder)
    return gone


def _last_touched(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for child in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):
            times.append(child.stat().st_mtime)
    return max(times)


def _cached_rows(path: Path) -> int:
    try:
        return pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException):  # none yet, or damaged: the next lookup rebuilds it
        return 0


def _texts_and_keys(videos: pa.Table, model_id: str) -> tuple[list[str], list[str]]:
    """Each row's encoder input and its cache key."""
    captions = videos.column("caption").to_pylist()
    hashtags = videos.column("hashtags").to_pylist()
    texts = [video_text(c, h) for c, h in zip(captions, hashtags, strict=True)]
    return texts, [text_key(model_id, t) for t in texts]


def _aligned_path(folder: Path, model_id: str, videos: pa.Table) -> Path:
    """Where the vectors of exactly these rows' texts, in this order, are kept once a whole lookup found them."""
    digest = hashlib.sha256(f"{model_id}\x00".encode())
    for caption, hashtags in _FORMAT_PROBES:
        digest.update(f"{video_text(caption, hashtags)}\x00".encode())
    # One Arrow type for the same values: polars hands over string views, the lake's Parquet plain strings.
    columns = [
        videos.column("caption").cast(pa.large_string()),
        videos.column("hashtags").cast(pa.large_list(pa.large_string())),
    ]
    table = pa.Table.from_arrays(columns, names=["caption", "hashtags"]).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    digest.update(sink.getvalue())
    return folder / f"aligned-{digest.hexdigest()[:40]}.npy"


def _read_aligned(path: Path, rows: int, dim: int) -> np.ndarray | None:
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return _drop_aligned(path, f"unreadable ({exc})")
    if vectors.shape != (rows, dim) or vectors.dtype != np.float32:
        return _drop_aligned(path, f"{vectors.dtype} {vectors.shape}, not ({rows}, {dim})")
    with contextlib.suppress(OSError):
        os.utime(path)  # the newest are kept
    return vectors


def _drop_aligned(path: Path, why: str) -> None:
    """Outside damage (writes are atomic): remove it, so that the lookup this falls back to writes it again."""
    log.warning("aligned text embeddings %s are %s; looking the texts up instead", path, why)
    path.unlink(missing_ok=True)


def _write_aligned(path: Path, vectors: np.ndarray) -> None:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_with(path, lambda tmp: _save_npy(tmp, vectors))
    kept = sorted(path.parent.glob("aligned-*.npy"), key=_mtime, reverse=True)
    for old in kept[ALIGNED_KEPT:]:
        if old != path:
            old.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # another process pruned it since the listing
        return 0.0


def _save_npy(path: Path, vectors: np.ndarray) -> None:
    with path.open("wb") as fh:  # a handle: np.save would add ".npy" to the temporary file's name
        np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)


def _read_cache(path: Path, dim: int) -> pa.Table | None:
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path, columns=["key", "embedding"])
    except (OSError, pa.ArrowException) as exc:
        # Writes are atomic, so this is outside damage; it is only a cache, so rebuild it.
        log.warning("text embedding cache %s is unreadable (%s); re-encoding", path, exc)
        return None
    kind = table.schema.field("embedding").type
    if not pa.types.is_fixed_size_list(kind) or kind.list_size != dim:
        log.warning("text embedding cache %s holds %s, expected %d-d vectors; re-encoding", path, kind, dim)
        return None
    return table


def _vectors(table: pa.Table, dim: int) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(-1, dim)


def _look_up(keys: pa.Array, cached: pa.Table | None, out: np.ndarray, dim: int) -> np.ndarray:
    """Fill ``out``'s rows whose key ``cached`` holds; returns which rows were found."""
    found = np.zeros(len(keys), dtype=bool)
    if cached is not None:
        where = pc.fill_null(pc.index_in(keys, value_set=cached.column("key")), -1)
        idx = where.to_numpy(zero_copy_only=False).astype(np.int64)
        found = idx >= 0
        if found.any():
            out[found] = _vectors(cached, dim)[idx[found]]
    return found


def _cache_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def _entries(keys: pa.Array, vectors: np.ndarray, dim: int) -> pa.Table:
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    return pa.Table.from_arrays([keys, embedding], schema=_cache_schema(dim))


def _merge_shared(shared: SharedTextCache, path: Path, dim: int) -> bool:
    """Merge what other machines pushed into the local cache (one rewrite for all of it); whether anything came.
    A store that cannot be read is logged and skipped: the texts are then encoded here, as without a store."""
    try:
        return _pull_shared(shared, path, dim) > 0
    except (OSError, StoreError, VersionError, pa.ArrowException) as exc:
        log.warning("could not merge the text embeddings on %s (%s); encoding what is missing", shared.where(), exc)
        return False


def _pull_shared(shared: SharedTextCache, path: Path, dim: int) -> int:
    """Merge the files pushed that this machine has not merged yet; returns how many there were."""
    with shared.merging():
        pulled = shared.unmerged()
        if not pulled:
            return 0
        _append(path, dim, pa.concat_tables([table.cast(_cache_schema(dim)) for _, table in pulled]))
        shared.record_merged([sha for sha, _ in pulled])
    log.info("merged %d text embeddings from %s", sum(t.num_rows for _, t in pulled), shared.where())
    return len(pulled)


def _share(shared: SharedTextCache, fresh: pa.Table) -> None:
    try:
        shared.push(fresh)
    except (OSError, StoreError, VersionError) as exc:  # they are in this machine's cache; others encode them too
        log.warning("could not share %d text embeddings on %s (%s)", fresh.num_rows, shared.where(), exc)


def _append(path: Path, dim: int, fresh: pa.Table) -> None:
    schema = _cache_schema(dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _writer_lock(path):
        # Re-read under the lock: another run may have written since we looked.
        current = _read_cache(path, dim)
        fresh = _first_of_each_key(fresh)  # merged files from several machines may overlap
        if current is not None:
            fresh = fresh.filter(pc.invert(pc.is_in(fresh.column("key"), value_set=current.column("key"))))
            if fresh.num_rows == 0:  # nothing new: the file (GBs at the large scale) is not rewritten
                return
            merged = pa.concat_tables([current.cast(schema), fresh])
        else:
            merged = fresh
        # Float vectors and hex keys barely compress; skipping it keeps reads and writes fast.
        write_with(path, lambda tmp: pq.write_table(merged, tmp, compression="none"))


def _first_of_each_key(table: pa.Table) -> pa.Table:
    keys = table.column("key").to_numpy(zero_copy_only=False)
    _, first = np.unique(keys, return_index=True)
    return table if len(first) == len(keys) else table.take(np.sort(first))


def _writer_lock(path: Path) -> AbstractContextManager[None]:
    return exclusive_lock(path.with_name(path.name + ".lock"))
