"""A snapshot's manifest: what validation found, and the checksums publish re-hashes against it.

:func:`rec_core.snapshot.validate.validate_snapshot` writes ``manifest.json`` once a
snapshot passes; :mod:`rec_core.snapshot.publish` reads it back and refuses a
snapshot whose files no longer match it (docs/architecture.md, invariant 3).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields

from rec_core.snapshot.layout import MANIFEST_FILE, SnapshotError, SnapshotPaths, expected_files
from rec_core.storage.versions import sha256_file


@dataclass(frozen=True, slots=True)
class Manifest:
    """What validation found; ``checksums`` maps paths relative to the snapshot folder to sha256."""

    snapshot_id: str
    model_version: str
    lake_version: str
    lake_watermark: str | None  # newest interaction time in the lake version the snapshot was built from
    as_of: str
    created_at: str
    validated_at: str
    feed_length: int
    embedding_dim: int
    video_shards: int
    user_shards: int
    counts: dict[str, int]
    checksums: dict[str, str]
    milvus_uri: str  # a server URL, or the Lite file relative to the snapshot folder ("milvus.db")
    milvus_collection: str
    # build.json's ranker record (applied, objective, N): which ordering the feeds carry. None: built before rankers.
    ranker: dict | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        # Fields with a default were added later: a manifest written before them still reads.
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw or f.default is MISSING})


def read_manifest(paths: SnapshotPaths) -> Manifest:
    if not paths.manifest_file.is_file():
        raise SnapshotError(
            f"snapshot {paths.snapshot_id} has not been validated (no {MANIFEST_FILE}): "
            f"run `python -m jobs.publish --validate-only --snapshot {paths.snapshot_id}`"
        )
    try:
        return Manifest.from_json(paths.manifest_file.read_text())
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot {paths.snapshot_id} has a malformed {MANIFEST_FILE}: {exc}") from None


def verify_checksums(paths: SnapshotPaths, manifest: Manifest, *, skip: frozenset[str] = frozenset()) -> list[str]:
    """Files that are missing or differ from the manifest (names relative to the snapshot), empty when intact."""
    build = paths.read_build()
    bad = [
        f"{rel} (not covered by the manifest)"
        for rel in (str(f.relative_to(paths.root)) for f in expected_files(paths, build))
        if rel not in manifest.checksums
    ]
    for rel, digest in sorted(manifest.checksums.items()):
        if rel in skip:
            continue
        path = paths.root / rel
        if not path.is_file():
            bad.append(f"{rel} (missing)")
        elif sha256_file(path) != digest:
            bad.append(f"{rel} (checksum mismatch)")
    return bad


def try_manifest(paths: SnapshotPaths) -> Manifest | None:
    """The manifest, or None when the snapshot has none (or a malformed one)."""
    try:
        return read_manifest(paths)
    except SnapshotError:
        return None
