"""The lake: versioned Parquet tables under ``<data root>/lake/``.

Layout::

    lake/CURRENT            the name of the live version, e.g. ``v000003``
    lake/v000003/videos.parquet, users.parquet, follows.parquet, interactions.parquet
    lake/v000003/manifest.json   row counts and sha256 of each table

A commit writes a whole new version folder (tables it does not change are
hard-linked from the previous version, so that costs nothing), fsyncs it, and
then swaps ``CURRENT`` with one atomic rename. A crash at any moment therefore
leaves the previous version live and complete, and a multi-table import either
lands whole or not at all. Committing content identical to the live version is
a no-op, which makes every writer idempotent.

Two things keep other parties' work safe from a commit:

- Pins. After a commit the lake prunes all but the newest ``keep_versions``
  versions, EXCEPT versions a caller-supplied ``pinned()`` names. Feed snapshots
  read the lake version they were built from by name (``rec_core.model.inference``),
  at build time, at publish, on an API restart and after a rollback, so
  :func:`lake_for` pins the version of every snapshot folder under the data
  root (live, kept for rollback, or being built). Pruning a snapshot frees its
  version at the next commit. If the pins cannot be read, nothing is pruned:
  disk is cheaper than a snapshot that cannot load.
- Compare-and-swap. A read-modify-write writer (the inbox merge) reads a
  fixed version through :meth:`Lake.at`, then commits with ``expect=`` that
  version's name; if another writer committed in between, the commit raises
  :class:`LakeConflict` and writes nothing, so the writer re-reads instead of
  silently reverting the other commit. Whole-lake replacements (imports,
  ``generate_data``) need no ``expect``.
"""

from __future__ import annotations

import copy
import datetime as dt
import enum
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from rec_core.atomic import exclusive_lock, fsync_dir, write_bytes_atomic
from rec_core.data.tables import LAKE_TABLES, conform, with_added_columns
from rec_core.settings import BatchSettings, PathSettings
from rec_core.snapshot.layout import BUILD_FILE, SNAPSHOT_ID
from rec_core.storage.versions import sha256_file

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
MANIFEST = "manifest.json"


class LakeError(RuntimeError):
    """The lake is missing, empty, or a table is absent."""


class LakeConflict(LakeError):
    """A commit based on one lake version found another one live: re-read and try again."""


class _Unchecked(enum.Enum):
    UNCHECKED = "unchecked"


# ``commit(expect=UNCHECKED)``: replace whatever is live (the default, for whole-lake writers).
UNCHECKED = _Unchecked.UNCHECKED
Pins = Callable[[], Iterable[str]]


@dataclass(frozen=True, slots=True)
class LakeVersion:
    name: str
    path: Path
    manifest: dict

    def table_path(self, table: str) -> Path:
        return self.path / f"{table}.parquet"


class Lake:
    def __init__(self, root: Path, keep_versions: int = 3, pinned: Pins | None = None) -> None:
        """``pinned`` names versions other parties still read; pruning keeps them (see the module doc)."""
        self.root = Path(root)
        self.keep_versions = keep_versions
        self.pinned = pinned
        # Set on a view made by ``at``: which version it reads ("" = the empty lake); None = follow CURRENT.
        self._fixed: str | None = None

    def at(self, version: str | None) -> Lake:
        """A read-only view of one version (None: the empty lake), unaffected by later commits."""
        view = copy.copy(self)  # the same kind of lake (here, or on an object store)
        view._fixed = version or ""
        return view

    # ---- reading -------------------------------------------------------
    def current(self) -> LakeVersion:
        if self._fixed is not None:
            return self._version(self._fixed)
        pointer = self.root / CURRENT
        if not pointer.is_file():
            raise LakeError(
                f"no lake at {self.root}: run `python -m jobs.generate_data` or `python -m jobs.import_dataset` first"
            )
        return self._version(pointer.read_text().strip())

    def current_name(self) -> str | None:
        """The live version's name, or None for an empty lake: what to pass as ``commit(expect=...)``."""
        return self.current().name if self.exists() else None

    def exists(self) -> bool:
        if self._fixed is not None:
            return self._fixed != ""
        return (self.root / CURRENT).is_file()

    def _version(self, name: str) -> LakeVersion:
        path = self.root / name
        if not name or not (path / MANIFEST).is_file():
            raise LakeError(f"lake version {name or '(empty)'} is not in {self.root} (pruned, or never committed)")
        return LakeVersion(name, path, json.loads((path / MANIFEST).read_text()))

    def path(self, table: str) -> Path:
        _check_name(table)
        path = self.current().table_path(table)
        if not path.is_file():
            raise LakeError(f"lake table {table!r} is absent from {path.parent}")
        return path

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        path = self.path(table)
        absent = set(LAKE_TABLES[table].added) - set(pq.read_schema(path).names)
        if not absent:
            return pq.read_table(path, columns=columns)
        # Written before a column was added to the table: it reads as nulls.
        data = with_added_columns(
            table, pq.read_table(path, columns=[c for c in columns or [] if c not in absent] or None)
        )
        return data.select(columns) if columns is not None else data

    def has(self, table: str) -> bool:
        return self.exists() and self.current().table_path(table).is_file()

    # ---- writing -------------------------------------------------------
    def commit(
        self,
        tables: Mapping[str, pa.Table],
        *,
        source: str,
        expect: str | Literal[_Unchecked.UNCHECKED] | None = UNCHECKED,
    ) -> LakeVersion:
        """Validate ``tables`` against their schemas and make them live together.

        Tables not named keep their current content. Raises ``SchemaError``
        before anything is written if a table does not conform. With ``expect``
        (the version name the tables were derived from, None for an empty lake),
        raises :class:`LakeConflict`, writing nothing, if another version is live.
        """
        if self._fixed is not None:
            raise LakeError(f"a view of lake version {self._fixed or '(empty)'} is read-only; commit through the lake")
        conformed = {name: _sorted(name, conform(name, t)) for name, t in tables.items()}
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            previous, head = self._head()
            if expect is not UNCHECKED and (live := previous.name if previous else None) != expect:
                raise LakeConflict(
                    f"lake moved while {source} worked: it read {expect or 'an empty lake'}, "
                    f"but {live or 'nothing'} is live now; re-read and retry"
                )
            self._remove_orphans(previous)
            # Only the lock's holder stages here (an object lake too: the lock and the stage are this machine's),
            # so any staging folder is a killed writer's, as big as a version.
            for leftover in self.root.glob(".staging-*"):
                log.warning("removing %s left by an interrupted commit", leftover.name)
                shutil.rmtree(leftover, ignore_errors=True)
            stage = self.root / f".staging-{os.getpid()}"
            stage.mkdir()
            try:
                manifest_tables: dict[str, dict] = {}
                for name, table in conformed.items():
                    target = stage / f"{name}.parquet"
                    pq.write_table(table, target, compression="zstd", row_group_size=256_000)
                    manifest_tables[name] = {"rows": table.num_rows, "sha256": sha256_file(target)}
                kept: dict[str, str] = {}  # file -> the version it is kept from unchanged
                if previous is not None:
                    for name, meta in previous.manifest["tables"].items():
                        if name not in manifest_tables:
                            os.link(previous.table_path(name), stage / f"{name}.parquet")
                            manifest_tables[name] = meta
                            kept[f"{name}.parquet"] = previous.name
                    if manifest_tables == previous.manifest["tables"]:
                        log.info("lake unchanged by %s; %s stays live", source, previous.name)
                        return previous
                name = self._next_name(previous, head)
                manifest = {
                    "version": name,
                    "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "source": source,
                    "parent": previous.name if previous else None,
                    "tables": dict(sorted(manifest_tables.items())),
                }
                (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
                final = self._make_live(stage, name, kept, head, source)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
            self._prune(keep=name)
            log.info("lake %s committed by %s: %s", name, source, {k: v["rows"] for k, v in manifest["tables"].items()})
            return LakeVersion(name, final, manifest)

    # ---- where versions live: the data root here, an object store in rec_core.data.object_lake ----------------
    def _head(self) -> tuple[LakeVersion | None, object]:
        """The live version, and what ``_make_live`` needs to know it is still live (a lock holds it here)."""
        return (self.current() if self.exists() else None), None

    def _next_name(self, previous: LakeVersion | None, head: object) -> str:
        return _next_version(previous)

    def _make_live(self, stage: Path, name: str, kept: Mapping[str, str], head: object, source: str) -> Path:
        """Make the staged folder version ``name``, live; returns where it now lies."""
        for f in stage.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(stage)
        final = self.root / name
        os.replace(stage, final)
        fsync_dir(self.root)
        write_bytes_atomic(self.root / CURRENT, f"{name}\n".encode())
        return final

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith("v"))

    def _remove_orphans(self, live: LakeVersion | None) -> None:
        # A writer killed after renaming its version folder but before swapping
        # CURRENT leaves a complete but never-published version: drop it.
        for name in self.versions():
            if live is None or name > live.name:
                log.warning("removing unpublished lake version %s left by an interrupted commit", name)
                shutil.rmtree(self.root / name, ignore_errors=True)

    def _prune(self, keep: str) -> None:
        # Versions are numbered in commit order, so the newest K include the live one.
        doomed = [v for v in self.versions()[: -self.keep_versions] if v != keep]
        if not doomed:
            return
        try:
            pinned = set(self.pinned()) if self.pinned else set()
        except Exception as exc:  # not knowing what snapshots read, deleting anything could break one
            log.warning("lake not pruned: cannot tell which versions snapshots still read (%s)", exc)
            return
        for name in doomed:
            if name in pinned:
                log.info("lake %s kept past REC_LAKE_VERSIONS_KEEP: a snapshot still reads it", name)
                continue
            shutil.rmtree(self.root / name, ignore_errors=True)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with exclusive_lock(self.root / ".lock"):
            yield


def lake_for(paths: PathSettings, batch: BatchSettings) -> Lake:
    """THE way jobs open the lake (under the data root, or on the object store ``REC_DATA_URI`` names): pruning
    keeps every version a snapshot under the data root reads."""
    if paths.object_store:
        from rec_core.data.object_lake import object_lake

        return object_lake(paths, batch.lake_versions_keep, pinned=lambda: snapshot_lake_versions(paths))
    return Lake(paths.lake_dir, batch.lake_versions_keep, pinned=lambda: snapshot_lake_versions(paths))


def lake_version_dir(paths: PathSettings, version: str) -> Path:
    """The folder of one lake version by name (a snapshot's), copied from the object store first where the lake
    lives there. A version that is gone gives a folder that does not exist, for the caller to explain."""
    if paths.object_store:
        from rec_core.data.object_lake import object_lake

        try:
            return object_lake(paths, 1).at(version).current().path
        except LakeError:
            pass
    return paths.lake_dir / version


def snapshot_lake_versions(paths: PathSettings) -> set[str]:
    """The lake version of every snapshot folder (live, kept for rollback, or being built).

    A folder without ``build.json`` pins nothing (a build killed before it had a lake version).
    An unreadable ``build.json`` raises: the caller must then assume anything may be in use.
    """
    return {str(build["lake_version"]) for build in snapshot_builds(paths)}


def snapshot_builds(paths: PathSettings) -> list[dict]:
    """The ``build.json`` of every snapshot folder (live, kept for rollback, or being built), as read.

    A folder without one is left out (a build killed before it wrote it, or a folder just moved to the trash);
    an unreadable one raises, so a caller deciding what is still in use never guesses. With snapshots on the
    object store, every snapshot there counts, not only those this machine holds a copy of.
    """
    if paths.object_store:
        from rec_core.snapshot.remote import remote_snapshots

        remote = remote_snapshots(paths)
        assert remote is not None
        found = (remote.folder(name).read(BUILD_FILE) for name in remote.ids())
        return [json.loads(body) for body in found if body is not None]
    root = paths.snapshots_dir
    if not root.is_dir():
        return []
    builds = []
    for folder in root.iterdir():
        if not SNAPSHOT_ID.match(folder.name):
            continue  # LIVE, history.json, .trash-<id> (being deleted), temp files
        try:
            builds.append(json.loads((folder / BUILD_FILE).read_text()))
        except FileNotFoundError:
            continue
    return builds


def _check_name(table: str) -> None:
    if table not in LAKE_TABLES:
        raise LakeError(f"unknown lake table {table!r}; known: {', '.join(LAKE_TABLES)}")


def _sorted(name: str, table: pa.Table) -> pa.Table:
    # A stable order makes the bytes (and so the checksums) a function of content only.
    return table.sort_by([(c, "ascending") for c in LAKE_TABLES[name].sort_by])


def _next_version(previous: LakeVersion | None) -> str:
    return version_name(version_number(previous.name) + 1 if previous else 1)


def version_name(number: int) -> str:
    return f"v{number:06d}"


def version_number(name: str) -> int:
    return int(name[1:])
