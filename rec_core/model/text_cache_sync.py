"""The caption cache shared through the object store, where ``REC_DATA_URI`` names one.

Each machine keeps its own cache file (:mod:`rec_core.model.text_features`). On a store, what a machine encodes is
also pushed, as one Parquet file of keys and vectors, into a :class:`~rec_core.storage.synced_folder.SyncedFolder`
under ``features/text/<cache folder>/``; a lookup that misses first merges the files other machines pushed. So the
mapped ``build_features`` parts, run on several Celery workers, fill every worker's cache, and a text is encoded
once whichever worker then needs it (without this, each worker re-encoded the parts the others had encoded).

A merged file is recorded by its checksum in ``merged.json`` beside the local cache (the cache holds its entries);
one process of a machine merges at a time (a lock beside it), and files are read from the store into memory, never
through a folder two processes share. A file is named at random when pushed, so two pushes never replace each
other; overlapping files only cost the merge time (the cache's append keeps one entry per key).

Every run that encodes something pushes a file, so past :data:`FILES_KEPT` of them ``build_features`` folds them
into one file of the live lake's texts (:meth:`SharedTextCache.replace`): the folder, the blobs it leaves
behind and each machine's ``merged.json`` stay bounded by the live lake, whatever the number of runs and edits.
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from contextlib import AbstractContextManager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rec_core.atomic import exclusive_lock, write_bytes_atomic
from rec_core.settings import PathSettings
from rec_core.storage.synced_folder import SyncedFolder
from rec_core.storage.versions import VersionError

log = logging.getLogger(__name__)

PREFIX = "features/text"  # under the object store's prefix
MERGED = "merged.json"
FILES_KEPT = 8  # pushed files the folder may hold before build_features folds them into one
# A blob no manifest names, younger than this, may be a push between its upload and its manifest swap: kept.
BLOB_GRACE_S = 3600.0


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

    def where(self) -> str:
        return self.folder.where()

    def merging(self) -> AbstractContextManager[None]:
        """One process of this machine at a time between reading ``merged.json`` and recording a merge."""
        return exclusive_lock(self.merged_file.with_name(MERGED + ".lock"))

    def unmerged(self) -> list[tuple[str, pa.Table]]:
        """The files pushed (by other machines) that this one has not merged yet: (checksum, keys and vectors),
        read from the store into memory. Call within :meth:`merging`."""
        merged = self._merged()
        wanted = {sha: name for name, sha in self.folder.files().items() if sha not in merged}
        out = []
        for sha, name in wanted.items():
            try:
                data = self.folder.read(name)  # checked against its checksum
            except VersionError as exc:  # its blob gone or changed: skipped, not a reason to merge nothing
                log.warning("skipped %s: %s", name, exc)
                continue
            if data is not None:
                out.append((sha, pq.read_table(pa.BufferReader(data))))
        return out

    def record_merged(self, shas: list[str]) -> None:
        """These files (checksums from :meth:`unmerged`) are in the local cache now; files the folder no longer
        holds are forgotten. Call within :meth:`merging`."""
        self._write_merged((self._merged() | set(shas)) & set(self.folder.files().values()))

    def files(self) -> list[str]:
        """The names of the files pushed that the folder holds now."""
        return list(self.folder.files())

    def replace(self, files: list[str], entries: pa.Table, grace_s: float = BLOB_GRACE_S) -> None:
        """Put ``entries`` in place of ``files`` (listed before this machine merged them, so a file pushed since
        stays beside it) in one manifest swap, then delete the blobs left unnamed for ``grace_s``."""
        name = self._push(entries, remove=files)
        pruned = self.folder.prune_blobs(grace_s)
        log.info(
            "folded %d text embedding files on %s into %s (%d entries); %d old blobs deleted",
            len(files),
            self.where(),
            name,
            entries.num_rows,
            pruned,
        )

    def push(self, entries: pa.Table) -> None:
        """Share what this machine encoded (keys and vectors, the cache's schema), from a folder of this process's
        own; this machine's cache has them, so the file is recorded as merged here."""
        self._push(entries)
        log.info("shared %d text embeddings on %s", entries.num_rows, self.where())

    def _push(self, entries: pa.Table, remove: list[str] | None = None) -> str:
        name = f"{uuid.uuid4().hex}.parquet"
        with tempfile.TemporaryDirectory(prefix="text-push-") as scratch:
            pq.write_table(entries, Path(scratch) / name, compression="none")
            SyncedFolder(self.folder.store, self.folder.prefix, Path(scratch)).push([name], remove=remove or [])
        sha = self.folder.files().get(name)
        if sha is not None:
            with self.merging():
                self.record_merged([sha])
        return name

    def _merged(self) -> set[str]:
        try:
            return set(json.loads(self.merged_file.read_text()))
        except (OSError, ValueError):  # none yet, or outside damage: merging again costs time, not correctness
            return set()

    def _write_merged(self, shas: set[str]) -> None:
        write_bytes_atomic(self.merged_file, json.dumps(sorted(shas)).encode())
