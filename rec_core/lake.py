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
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rec_core.atomic import fsync_dir, write_bytes_atomic
from rec_core.schemas import TABLES, conform

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
MANIFEST = "manifest.json"


class LakeError(RuntimeError):
    """The lake is missing, empty, or a table is absent."""


@dataclass(frozen=True, slots=True)
class LakeVersion:
    name: str
    path: Path
    manifest: dict

    def table_path(self, table: str) -> Path:
        return self.path / f"{table}.parquet"


class Lake:
    def __init__(self, root: Path, keep_versions: int = 3) -> None:
        self.root = Path(root)
        self.keep_versions = keep_versions

    # ---- reading -------------------------------------------------------
    def current(self) -> LakeVersion:
        pointer = self.root / CURRENT
        if not pointer.is_file():
            raise LakeError(
                f"no lake at {self.root}: run `python -m jobs.generate_data` or `python -m jobs.import_dataset` first"
            )
        name = pointer.read_text().strip()
        path = self.root / name
        return LakeVersion(name, path, json.loads((path / MANIFEST).read_text()))

    def exists(self) -> bool:
        return (self.root / CURRENT).is_file()

    def path(self, table: str) -> Path:
        _check_name(table)
        path = self.current().table_path(table)
        if not path.is_file():
            raise LakeError(f"lake table {table!r} is absent from {path.parent}")
        return path

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(table), columns=columns)

    def has(self, table: str) -> bool:
        return self.exists() and self.current().table_path(table).is_file()

    # ---- writing -------------------------------------------------------
    def commit(self, tables: Mapping[str, pa.Table], *, source: str) -> LakeVersion:
        """Validate ``tables`` against their schemas and make them live together.

        Tables not named keep their current content. Raises ``SchemaError``
        before anything is written if a table does not conform.
        """
        conformed = {name: _sorted(name, conform(name, t)) for name, t in tables.items()}
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            previous = self.current() if self.exists() else None
            self._remove_orphans(previous)
            stage = self.root / f".staging-{os.getpid()}"
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir()
            try:
                manifest_tables: dict[str, dict] = {}
                for name, table in conformed.items():
                    target = stage / f"{name}.parquet"
                    pq.write_table(table, target, compression="zstd", row_group_size=256_000)
                    manifest_tables[name] = {"rows": table.num_rows, "sha256": _sha256(target)}
                if previous is not None:
                    for name, meta in previous.manifest["tables"].items():
                        if name not in manifest_tables:
                            os.link(previous.table_path(name), stage / f"{name}.parquet")
                            manifest_tables[name] = meta
                    if manifest_tables == previous.manifest["tables"]:
                        log.info("lake unchanged by %s; %s stays live", source, previous.name)
                        return previous
                name = _next_version(previous)
                manifest = {
                    "version": name,
                    "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "source": source,
                    "parent": previous.name if previous else None,
                    "tables": dict(sorted(manifest_tables.items())),
                }
                (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
                for f in stage.iterdir():
                    with f.open("rb") as fh:
                        os.fsync(fh.fileno())
                fsync_dir(stage)
                final = self.root / name
                os.replace(stage, final)
                fsync_dir(self.root)
                write_bytes_atomic(self.root / CURRENT, f"{name}\n".encode())
            finally:
                shutil.rmtree(stage, ignore_errors=True)
            self._prune(keep=name)
            log.info("lake %s committed by %s: %s", name, source, {k: v["rows"] for k, v in manifest["tables"].items()})
            return LakeVersion(name, final, manifest)

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
        for name in [v for v in self.versions()[: -self.keep_versions] if v != keep]:
            shutil.rmtree(self.root / name, ignore_errors=True)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with (self.root / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _check_name(table: str) -> None:
    if table not in TABLES:
        raise LakeError(f"unknown lake table {table!r}; known: {', '.join(TABLES)}")


def _sorted(name: str, table: pa.Table) -> pa.Table:
    # A stable order makes the bytes (and so the checksums) a function of content only.
    return table.sort_by([(c, "ascending") for c in TABLES[name].sort_by])


def _next_version(previous: LakeVersion | None) -> str:
    number = int(previous.name[1:]) + 1 if previous else 1
    return f"v{number:06d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
