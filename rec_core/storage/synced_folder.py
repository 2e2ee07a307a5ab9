"""A folder whose files live on an object store, several machines adding to it, each reading a verified copy.

Unlike a lake version (:mod:`rec_core.storage.versions`: written once, whole), some folders change after they
are made: a model version gets its ranker, its metrics and its report from later steps, which may run on other
machines. Layout under a prefix::

    <prefix>/manifest.json        {"files": {relative path: sha256}} : what the folder holds now
    <prefix>/blobs/<sha256>       each file's bytes, under its checksum

A push uploads the new bytes first (a blob's key is its checksum, so an upload never changes what another
reader sees) and then swaps the manifest with ``If-Match`` on the ETag it read, merging its files into whatever
the manifest holds by then (another machine's push in between is re-read and kept, not overwritten). The
manifest is the commit: a pusher killed before it changed nothing, one killed after it changed everything. A
pull copies each file whose checksum differs from the local copy's, checked before it is renamed into place.
Blobs that no manifest names any more are left for :meth:`SyncedFolder.delete` (a folder is small and short-lived
compared with the data it describes), or for :meth:`SyncedFolder.prune_blobs` where a folder lives on and sheds
files (the shared caption cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from rec_core.storage.object_store import Blob, ObjectStore, PreconditionFailed
from rec_core.storage.versions import VersionError, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PULLING = ".pull-"  # in the name of a file a pull is copying
ATTEMPTS = 8  # manifest swaps lost to other pushers before giving up (each loss means someone else progressed)


class SyncedFolder:
    def __init__(self, store: ObjectStore, prefix: str, local: Path) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self.local = Path(local)

    def where(self) -> str:
        return f"{self.store.location}/{self.prefix}"

    def exists(self) -> bool:
        return self._manifest() is not None

    def modified(self) -> float | None:
        """When the folder last changed (its manifest's last write), or None when it does not exist."""
        return self.store.modified(self._key(MANIFEST))

    def files(self) -> dict[str, str]:
        """Relative path -> sha256 of what the folder holds now (empty if it does not exist)."""
        blob = self._manifest()
        return dict(json.loads(blob.data)["files"]) if blob else {}

    def read(self, name: str) -> bytes | None:
        """One file's bytes straight from the store (checked against the manifest), without a local copy; None
        when the folder does not hold it."""
        sha = self.files().get(name)
        if sha is None:
            return None
        blob = self.store.get(self._blob(sha))
        if blob is None or hashlib.sha256(blob.data).hexdigest() != sha:
            raise VersionError(f"{self.where()}/{name} does not match its manifest (the store's copy changed)")
        return blob.data

    def pull(self, names: Iterable[str] | None = None) -> Path:
        """Bring the local copy up to date with the store: every file, or only ``names`` (files the local copy
        holds that the store does not are left alone)."""
        blob = self._manifest()
        if blob is None:
            raise VersionError(f"{self.where()} is not in the store")
        files = json.loads(blob.data)["files"]
        wanted = files if names is None else {n: files[n] for n in names if n in files}
        for name, sha in wanted.items():
            target = self.local / name
            if target.is_file() and sha256_file(target) == sha:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(f".{target.name}{PULLING}{os.getpid()}")
            try:
                self.store.download(self._blob(sha), part)
                if sha256_file(part) != sha:
                    raise VersionError(f"{self.where()}/{name} does not match its manifest (the store's copy changed)")
                os.replace(part, target)
            finally:
                part.unlink(missing_ok=True)
        return self.local

    def push(self, names: Iterable[str] | None = None, *, remove: Iterable[str] = (), exclusive: bool = False) -> None:
        """Upload the named local files (default: every file under the folder) and make them, and the removal
        of ``remove``, part of the folder in one manifest swap. ``exclusive``: the folder must not exist yet
        (:class:`PreconditionFailed` if another machine made it first)."""
        names = sorted(names) if names is not None else self._local_files()
        mine = {name: sha256_file(self.local / name) for name in names}
        known = set(self.files().values())
        for name, sha in mine.items():
            if sha not in known:
                self.store.upload(self._blob(sha), self.local / name)
        gone = set(remove)
        for _ in range(ATTEMPTS):
            blob = self._manifest()
            if exclusive and blob is not None:
                raise PreconditionFailed(f"{self.where()} was made by another writer first")
            files = dict(json.loads(blob.data)["files"]) if blob else {}
            files = {k: v for k, v in files.items() if k not in gone} | mine
            body = json.dumps({"files": dict(sorted(files.items()))}, indent=1).encode()
            try:
                if blob is None:
                    self.store.put(self._key(MANIFEST), body, create_only=True)
                else:
                    self.store.put(self._key(MANIFEST), body, if_etag=blob.etag)
                return
            except PreconditionFailed:
                if exclusive:
                    raise PreconditionFailed(f"{self.where()} was made by another writer first") from None
                log.info("%s changed while pushing; merging again", self.where())
        raise PreconditionFailed(f"{self.where()}: the manifest kept changing for {ATTEMPTS} attempts")

    def prune_blobs(self, older_than_s: float) -> int:
        """Delete the blobs the manifest no longer names, once older than ``older_than_s`` (a younger one may be
        a push's, uploaded before its manifest swap); returns how many went. A reader still holding the manifest
        from before they were dropped fails its read of them with :class:`VersionError`."""
        named = set(self.files().values())
        now = time.time()
        stale = []
        for key in self.store.keys(self._key("blobs/")):
            written = None if key.rsplit("/", 1)[-1] in named else self.store.modified(key)
            if written is not None and now - written >= older_than_s:
                stale.append(key)
        self.store.delete(stale)
        return len(stale)

    def delete(self) -> None:
        """Remove the folder from the store (its manifest first, so no reader starts on a half-deleted folder)."""
        self.store.delete([self._key(MANIFEST)])
        self.store.delete(self.store.keys(f"{self.prefix}/"))

    def _local_files(self) -> list[str]:
        # Not a pull's half-copied file, should one have been killed here.
        return sorted(
            str(p.relative_to(self.local)) for p in self.local.rglob("*") if p.is_file() and PULLING not in p.name
        )

    def _manifest(self) -> Blob | None:
        return self.store.get(self._key(MANIFEST))

    def _blob(self, sha: str) -> str:
        return self._key(f"blobs/{sha}")

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}"
