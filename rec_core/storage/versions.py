"""Immutable versions on an object store, one of them live, each read through a verified local cache.

Layout under a prefix (``lake`` for the lake)::

    <prefix>/CURRENT                 the live version's name
    <prefix>/<name>/manifest.json    what the version holds, with a sha256 per file
    <prefix>/<name>/<file>           the files

A store has no rename, so publishing a version is three steps, each safe to die after:

1. **claim** the name by writing its manifest with ``If-None-Match: *``: of two writers that picked the same name,
   exactly one gets it and the other fails having written nothing;
2. **upload** the files (a file that the previous version holds unchanged is copied inside the store);
3. **swap** the pointer with ``If-Match`` on the ETag read before the work began (``If-None-Match`` when there
   was none): a writer that another beat to it fails, and its claimed version is never live.

Readers follow the pointer only, so a writer killed after 1 or 2 leaves the previous version live; what it left
is an unpublished version that pruning removes once it falls behind the live one. Readers copy a version into
``<cache>/<name>/`` (each file checked against the manifest's sha256, the folder renamed into place only when
complete), so everything downstream (Parquet readers, DuckDB views, memory maps) reads local files, and a
version's name always means the same bytes: names are never reused (the next name is past every name claimed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rec_core.atomic import process_alive
from rec_core.storage.object_store import ObjectStore, StoreError

log = logging.getLogger(__name__)

POINTER = "CURRENT"
MANIFEST = "manifest.json"
_PULL = ".pull-"

# A version's manifest -> {file name: sha256} of the files it holds.
FilesOf = Callable[[Mapping], Mapping[str, str]]


class VersionError(StoreError):
    """A version is not in the store, or its files do not match its manifest."""


@dataclass(frozen=True, slots=True)
class Pointer:
    name: str
    etag: str


class RemoteVersions:
    def __init__(self, store: ObjectStore, prefix: str, cache: Path, files_of: FilesOf) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self.cache = Path(cache)
        self.files_of = files_of

    def where(self, name: str = "") -> str:
        return f"{self.store.location}/{self._key(name)}"

    # ---- reading -------------------------------------------------------
    def live(self) -> Pointer | None:
        blob = self.store.get(self._key(POINTER))
        return Pointer(blob.data.decode().strip(), blob.etag) if blob else None

    def names(self) -> list[str]:
        """Every version with a manifest in the store (live, older, or claimed and never published)."""
        suffix = f"/{MANIFEST}"
        start = len(self._key(""))
        return sorted(k[start:].removesuffix(suffix) for k in self.store.keys(self._key("")) if k.endswith(suffix))

    def local(self, name: str) -> Path:
        """``<cache>/<name>``, copied from the store first if this machine has not read it yet."""
        folder = self.cache / name
        if (folder / MANIFEST).is_file():
            return folder
        blob = self.store.get(self._key(f"{name}/{MANIFEST}"))
        if blob is None:
            raise VersionError(f"version {name} is not in {self.where()} (pruned, or never committed)")
        manifest = json.loads(blob.data)
        self.cache.mkdir(parents=True, exist_ok=True)
        self._drop_dead_pulls()
        pull = self.cache / f"{_PULL}{os.getpid()}-{name}"
        shutil.rmtree(pull, ignore_errors=True)
        pull.mkdir()
        try:
            for file, sha in self.files_of(manifest).items():
                self.store.download(self._key(f"{name}/{file}"), pull / file)
                if (got := sha256_file(pull / file)) != sha:
                    raise VersionError(
                        f"{self.where(f'{name}/{file}')} does not match its manifest (sha256 {got[:12]}, "
                        f"expected {sha[:12]}): the store's copy is damaged or was changed after its commit"
                    )
            (pull / MANIFEST).write_bytes(blob.data)
            try:
                os.rename(pull, folder)
            except OSError:  # another process finished the same pull first: its copy is the same bytes
                if not (folder / MANIFEST).is_file():
                    raise
        finally:
            shutil.rmtree(pull, ignore_errors=True)
        log.info("copied %s from %s into %s", name, self.where(), folder)
        self.drop_pruned_copies()  # a machine that only reads would otherwise keep every version it ever read
        return folder

    def drop_pruned_copies(self) -> list[str]:
        """Remove this machine's copies of versions the store no longer holds (pruned by a commit on another
        machine); returns their names. A process still reading one keeps the files it has open."""
        stored = set(self.names())
        gone = [
            p.name
            for p in self.cache.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file() and p.name not in stored
        ]
        for name in gone:
            shutil.rmtree(self.cache / name, ignore_errors=True)
            log.info("version %s was pruned from %s; removed this machine's copy", name, self.where())
        return gone

    # ---- writing -------------------------------------------------------
    def next_name(self, live: Pointer | None, pattern: Callable[[int], str], number: Callable[[str], int]) -> str:
        """The name after every version ever claimed, so a name is never reused for other bytes."""
        taken = [number(n) for n in self.names()] + ([number(live.name)] if live else [])
        return pattern(max(taken, default=0) + 1)

    def publish(
        self, name: str, stage: Path, manifest: bytes, copied: Mapping[str, str], expect: Pointer | None
    ) -> Path:
        """Claim ``name``, upload ``stage``'s files (those in ``copied`` are copied from the version it names),
        then make it live if the pointer is still ``expect``. Raises :class:`PreconditionFailed` if another writer
        claimed the name or moved the pointer. Returns the version's folder in the cache (``stage``, moved)."""
        self.store.put(self._key(f"{name}/{MANIFEST}"), manifest, create_only=True)
        for file in self.files_of(json.loads(manifest)):
            if file in copied:
                self.store.copy(self._key(f"{copied[file]}/{file}"), self._key(f"{name}/{file}"))
            else:
                self.store.upload(self._key(f"{name}/{file}"), stage / file)
        pointer = f"{name}\n".encode()
        if expect is None:
            self.store.put(self._key(POINTER), pointer, create_only=True)
        else:
            self.store.put(self._key(POINTER), pointer, if_etag=expect.etag)
        folder = self.cache / name
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(stage, folder)
        return folder

    def delete(self, name: str) -> None:
        """Remove a version from the store (its manifest first, so no reader starts on a half-deleted version)
        and from this machine's cache."""
        self.store.delete([self._key(f"{name}/{MANIFEST}")])
        self.store.delete(self.store.keys(self._key(f"{name}/")))
        shutil.rmtree(self.cache / name, ignore_errors=True)

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}"

    def _drop_dead_pulls(self) -> None:
        for leftover in self.cache.glob(f"{_PULL}*"):
            pid = leftover.name.removeprefix(_PULL).split("-", 1)[0]
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
