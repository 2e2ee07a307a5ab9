"""The caption cache shared through the object store, where ``REC_DATA_URI`` names one.

Each machine keeps its own cache file (:mod:`rec_core.model.text_features`). On a store, what a machine encodes is
also pushed, as one Parquet file of keys and vectors, into a :class:`~rec_core.storage.synced_folder.SyncedFolder`
under ``features/text/<cache folder>/``; a lookup that misses first merges the files other machines pushed. So the
mapped ``build_features`` parts, run on several Celery workers, fill every worker's cache, and a text is encoded
once whichever worker then needs it (without this, each worker re-encoded the parts the others had encoded).

A merged file is recorded by its checksum in ``merged.json`` beside the local cache, and its local copy removed:
the cache holds its entries. Two processes of one machine may merge the same file; the cache's append drops keys it
already holds, so that costs time only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rec_core.atomic import write_bytes_atomic
from rec_core.settings import PathSettings
from rec_core.storage.synced_folder import SyncedFolder

log = logging.getLogger(__name__)

PREFIX = "features/text"  # under the object store's prefix
MERGED = "merged.json"


class SharedTextCache:
    """One text model's cache entries on the store, and which of them this machine has merged."""

    def __init__(self, folder: SyncedFolder, merged_file: Path) -> None:
        self.folder = folder
        self.merged_file = merged_file

    @classmethod
    def of(cls, paths: PathSettings, cache_folder: Path) -> SharedTextCache | None:
        """The store's copy of the cache kept in ``cache_folder``; None when the lake is not on a store."""
        if not paths.object_store:
            return None
        from rec_core.storage.object_store import open_store

        folder = SyncedFolder(open_store(paths), f"{PREFIX}/{cache_folder.name}", cache_folder / "shared")
        return cls(folder, cache_folder / MERGED)

    def unmerged(self) -> list[tuple[str, pa.Table]]:
        """The files other machines pushed that this one has not merged yet, read (name, keys and vectors)."""
        merged = self._merged()
        names = [name for name, sha in self.folder.files().items() if sha not in merged]
        if not names:
            return []
        self.folder.pull(names)
        return [(name, pq.read_table(self.folder.local / name)) for name in names]

    def record_merged(self, names: list[str]) -> None:
        """``names`` (from :meth:`unmerged`) are in the local cache now: remember them, drop their copies."""
        files = self.folder.files()
        self._write_merged(self._merged() | {files[name] for name in names if name in files})
        for name in names:
            (self.folder.local / name).unlink(missing_ok=True)

    def push(self, entries: pa.Table) -> None:
        """Share what this machine encoded (keys and vectors, the cache's schema)."""
        digest = hashlib.sha256("\n".join(entries.column("key").to_pylist()).encode()).hexdigest()[:32]
        name = f"{digest}.parquet"
        target = self.folder.local / name
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(entries, target, compression="none")
        try:
            self.folder.push([name])
            self.record_merged([name])  # this machine's cache has them already
        finally:
            target.unlink(missing_ok=True)
        log.info("shared %d text embeddings on %s", entries.num_rows, self.folder.where())

    def _merged(self) -> set[str]:
        try:
            return set(json.loads(self.merged_file.read_text()))
        except FileNotFoundError:
            return set()
        except (OSError, ValueError):  # outside damage: merging again costs time, not correctness
            return set()

    def _write_merged(self, shas: set[str]) -> None:
        write_bytes_atomic(self.merged_file, json.dumps(sorted(shas)).encode())
