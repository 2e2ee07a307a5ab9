"""The inbox and the impression log on the object store (``REC_DATA_URI``): the API ships, the batch reads.

The API keeps appending to local segment files and fsyncing before it replies (:mod:`rec_core.data.inbox`:
that is the acknowledgement, and it does not wait on the network). A shipper then copies each segment's new
whole lines to the store, where the batch, on whatever machine it runs, reassembles the segments byte for byte
(:func:`pull_log`), so segment names and offsets mean the same everywhere: ``consumed.json``, a snapshot's
``inbox_offsets`` and the API's replay from them work unchanged. Layout under ``<prefix>/<log>/``::

    <segment>/<start:012d>-<end:012d>    bytes [start, end) of a segment: whole lines
    <segment>/sealed-<end:012d>          the segment is final at ``end`` bytes: no chunk will follow
    consumed.json                        how far the batch has taken each segment in (as the local file)

One process per machine ships at a time (a lock file), recording what it shipped in ``.shipped.json`` after each
upload. Killed between the two, the next shipper uploads an overlapping chunk again; the reader writes each
chunk at its offset, so an overlap is harmless (every chunk is a slice of the same append-only file).
Lines the API acknowledged reach the batch one shipping interval later; lost with the machine before that, they
are lost as a local disk's would be: the store is the durable copy once shipped.

The batch prunes a segment only once its shipper has *sealed* it, after shipping all of it and seeing no writer
touch it for :data:`SEAL_AFTER_S` (writers start a new segment every :data:`SEGMENT_MAX_AGE_S`). Without the
seal, an API machine that could not reach the store for a day would find its segment pruned from under the
lines it had not shipped yet, and those would start past a gap that no reader crosses. A segment that shrank
below what was shipped (an append refused after the shipper copied part of it: the writer truncated it and
moved to a new segment) is sealed at once at its true length, and the reader cuts its copy back to that.

A host that dies for good leaves its last segments unsealed, which would keep them on the store forever. A
segment's name starts with the time its writer opened it, so every machine can tell its age without asking the
store: the batch seals, with a warning, a segment opened :data:`ABANDONED_AFTER_S` ago that is still unsealed, at
what the store holds. A shipper adds no chunk to a segment opened :data:`SHIP_INTO_BEFORE_S` ago (a day earlier,
for clocks and slow ticks), so the two never race: a host that comes back after days ships what it still has of
such a segment as a segment of its own, ``<segment stem>_after-<length>.jsonl``, sealed at once, whether the batch
has sealed or even pruned the original meanwhile. :func:`batch_consumed` folds that name back into the original's
offsets for the API's replay, which reads the host's own unsplit file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rec_core.atomic import fsync_dir, write_bytes_atomic
from rec_core.data.inbox import CONSUMED, SEGMENT_MAX_AGE_S, consumed_offsets
from rec_core.settings import PathSettings
from rec_core.storage.object_store import ObjectStore

log = logging.getLogger(__name__)

INBOX, IMPRESSIONS = "inbox", "impressions"
SHIPPED, SEALED = ".shipped.json", ".sealed.json"  # the shipper's records: segment -> bytes shipped / final length
MIRROR_SEALED = "sealed.json"  # the reader's: the store's sealed segments and their final lengths
_LOCK = ".ship.lock"
_KEY = re.compile(r"^(?P<segment>[^/]+\.jsonl)/(?:(?P<start>\d{12})-(?P<end>\d{12})|sealed-(?P<final>\d{12}))$")
# Twice a segment's longest life: an append that began just before the writer's age check still lands first.
SEAL_AFTER_S = 2 * SEGMENT_MAX_AGE_S
# A torn tail past the sealed length (never shipped) is expected; a segment grown further than this is not.
SEALED_SLACK = 64 << 10
# An unsealed segment opened this long ago has lost its shipper (its host is gone); the batch seals it.
ABANDONED_AFTER_S = 7 * 24 * 3600
# No chunk is added to a segment opened this long ago: the margin keeps shippers clear of the batch's seal.
SHIP_INTO_BEFORE_S = ABANDONED_AFTER_S - 24 * 3600
_AFTER = re.compile(r"^(?P<stem>.+)_after-(?P<start>\d{12})\.jsonl$")
# A local segment fully shipped, untouched this long and gone from the store (the batch pruned it) is deleted.
IDLE_S = 24 * SEGMENT_MAX_AGE_S


class LogShipper:
    """Copies the new whole lines of every segment under ``root`` to ``<log>/`` on the store."""

    def __init__(self, store: ObjectStore, log_name: str, root: Path, *, idle_s: float = IDLE_S) -> None:
        self.store = store
        self.log_name = log_name
        self.root = Path(root)
        self.idle_s = idle_s

    def ship(self, *, wait: bool = False, closed: Callable[[str], bool] | None = None) -> int:
        """Ship what is new, and seal what is final; the bytes shipped (0 when another process of this machine is
        shipping now, unless ``wait``: a process shutting down waits its turn, so its last lines leave with it).

        ``closed(name)``: the segment's writer is closed for good (this process shutting down), so it is sealed as
        soon as it is shipped, not after :data:`SEAL_AFTER_S`: a host that never comes back leaves nothing unsealed.
        """
        if not self.root.is_dir():
            return 0
        with (self.root / _LOCK).open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            shipped, sealed = _read_json(self.root / SHIPPED), _read_json(self.root / SEALED)
            total = 0
            for path in sorted(self.root.glob("*.jsonl")):
                if path.name in sealed:
                    if path.stat().st_size > sealed[path.name] + SEALED_SLACK:
                        log.error(
                            "%s grew past its seal at %d bytes: those lines are not shipped", path, sealed[path.name]
                        )
                    continue
                if _opened_at(path.name) < time.time() - SHIP_INTO_BEFORE_S:
                    self._ship_late(path, shipped, sealed)
                    continue
                start = shipped.get(path.name, 0)
                with path.open("rb") as fh:
                    stat = os.fstat(fh.fileno())
                    fh.seek(start)
                    data = fh.read()
                size = stat.st_size
                if size < start:
                    log.warning(
                        "%s shrank to %d bytes after %d were shipped (an append refused and truncated); "
                        "sealing it at %d",
                        path,
                        size,
                        start,
                        size,
                    )
                    self._seal(path.name, size, sealed)
                    continue
                end = data.rfind(b"\n") + 1  # a torn or in-progress last line waits for its newline
                if end:
                    key = f"{self.log_name}/{path.name}/{start:012d}-{start + end:012d}"
                    self.store.put(key, data[:end])
                    shipped[path.name] = start + end
                    _write_json(self.root / SHIPPED, shipped)
                    total += end
                # No writer appends to it any more: what is shipped is all of it.
                if stat.st_mtime < time.time() - SEAL_AFTER_S or (closed is not None and closed(path.name)):
                    self._seal(path.name, shipped.get(path.name, 0), sealed)
            return total

    def _seal(self, segment: str, length: int, sealed: dict[str, int]) -> None:
        self.store.put(f"{self.log_name}/{segment}/sealed-{length:012d}", b"")
        sealed[segment] = length
        _write_json(self.root / SEALED, sealed)

    def _ship_late(self, path: Path, shipped: dict[str, int], sealed: dict[str, int]) -> None:
        """A segment too old to add chunks to (its host was away for days): the whole lines past what the store got
        of it go out as a segment of their own, sealed, and the original is sealed at its length on the store (the
        length the batch seals it at, were it first) or, pruned already, at what this host recorded shipping."""
        stored = _listing(self.store, self.log_name, path.name).get(path.name)
        if stored is not None and stored.sealed is not None:
            final = stored.sealed
        else:
            final = max([shipped.get(path.name, 0), *(end for _, end in (stored.chunks if stored else []))])
        if shipped.get(path.name) != final:  # first, so that a kill below still finds the length after a prune
            shipped[path.name] = final
            _write_json(self.root / SHIPPED, shipped)
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(final)
            data = fh.read()
        tail = data[: data.rfind(b"\n") + 1]
        if tail:
            name = f"{path.stem}_after-{final:012d}.jsonl"  # "_" sorts it after its segment
            log.warning("%s: shipping its last %d bytes as %s (opened too long ago)", path, len(tail), name)
            self.store.put(f"{self.log_name}/{name}/{0:012d}-{len(tail):012d}", tail)
            self.store.put(f"{self.log_name}/{name}/sealed-{len(tail):012d}", b"")
        # Recorded before the original's seal: killed after the tail went out, the next tick does not send it again.
        shipped[path.name] = final + len(tail)
        _write_json(self.root / SHIPPED, shipped)
        sealed[path.name] = final + len(tail)
        _write_json(self.root / SEALED, sealed)
        if stored is not None and stored.sealed is None:
            # Shorter on disk than on the store: an append refused after part of it was shipped (see ship()).
            self.store.put(f"{self.log_name}/{path.name}/sealed-{min(final, size):012d}", b"")

    def drop_pruned(self) -> list[str]:
        """Delete local segments that are sealed, idle for ``idle_s`` and gone from the store (the batch pruned
        them); their names."""
        shipped, sealed = _read_json(self.root / SHIPPED), _read_json(self.root / SEALED)
        cutoff = time.time() - self.idle_s
        old = [name for name in sealed if (path := self.root / name).is_file() and path.stat().st_mtime < cutoff]
        if not old:
            return []
        stored = set(_listing(self.store, self.log_name))
        gone = [name for name in old if name not in stored]
        for name in gone:
            (self.root / name).unlink(missing_ok=True)
        if gone:
            fsync_dir(self.root)
            for record, name in ((shipped, SHIPPED), (sealed, SEALED)):
                kept = {segment: offset for segment, offset in record.items() if segment not in gone}
                _write_json(self.root / name, kept)
        return gone


def pull_log(store: ObjectStore, log_name: str, local: Path, *, now: float | None = None) -> Path:
    """Reassemble the store's segments of ``log_name`` (and its ``consumed.json``) under ``local``; returns it.

    Only chunks past what ``local`` holds are fetched, so a pull is cheap when little is new; segments the store
    no longer has (pruned) are deleted here too. ``sealed.json`` lists the sealed ones with their final length,
    for :func:`rec_core.data.inbox.prune_consumed`; an unsealed segment opened :data:`ABANDONED_AFTER_S` ago is
    sealed here first (``now``: the time ages are judged at, the clock's by default)."""
    local.mkdir(parents=True, exist_ok=True)
    listing = _listing(store, log_name)
    _seal_abandoned(store, log_name, listing, time.time() if now is None else now)
    for segment, parts in list(listing.items()):
        target = local / segment
        have = target.stat().st_size if target.is_file() else 0
        if _pruned_remnant(parts) and not target.exists():
            log.warning(
                "%s/%s/%s: a sealed segment without its first bytes (a prune cut short); deleting the rest",
                store.location,
                log_name,
                segment,
            )
            store.delete(store.keys(f"{log_name}/{segment}/"))
            del listing[segment]
            continue
        for start, end in sorted(parts.chunks):
            if end <= have:
                continue
            if start > have:
                log.error(
                    "%s/%s/%s: bytes %d..%d are missing (a chunk deleted by hand?); read up to there",
                    store.location,
                    log_name,
                    segment,
                    have,
                    start,
                )
                break
            blob = store.get(f"{log_name}/{segment}/{start:012d}-{end:012d}")
            if blob is None:  # pruned between the listing and now
                break
            # Written at its own offset, not appended: two pulls at once write the same bytes to the same place.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, blob.data, start)
                os.fsync(fd)
            finally:
                os.close(fd)
            have = end
        if parts.sealed is not None and (have > parts.sealed or not target.exists()):
            _cut_to_seal(target, have, parts.sealed)
    for stale in local.glob("*.jsonl"):
        if stale.name not in listing:
            stale.unlink()
    sealed = {segment: parts.sealed for segment, parts in listing.items() if parts.sealed is not None}
    _write_json(local / MIRROR_SEALED, sealed)
    consumed = store.get(f"{log_name}/{CONSUMED}")
    if consumed is not None:
        write_bytes_atomic(local / CONSUMED, consumed.data)
    else:
        (local / CONSUMED).unlink(missing_ok=True)
    return local


def _seal_abandoned(store: ObjectStore, log_name: str, listing: dict[str, _Stored], now: float) -> None:
    """Seal, at what they hold, the unsealed segments opened :data:`ABANDONED_AFTER_S` ago: their host stopped for
    good without sealing them (a crash), and unsealed they could never be pruned. No shipper adds to them any more
    (:data:`SHIP_INTO_BEFORE_S`), so what the listing holds is all of them. The name's time is the host's clock:
    the newest chunk must also be a day old by the store's, so a host whose clock is days behind keeps shipping."""
    for segment, parts in listing.items():
        if parts.sealed is None and parts.chunks and _opened_at(segment) < now - ABANDONED_AFTER_S:
            start, end = max(parts.chunks, key=lambda chunk: chunk[1])
            shipped_at = store.modified(f"{log_name}/{segment}/{start:012d}-{end:012d}")  # old names only: rare
            if shipped_at is None or shipped_at > now - (ABANDONED_AFTER_S - SHIP_INTO_BEFORE_S):
                continue
            log.warning(
                "%s/%s/%s: opened over %d days ago and never sealed (its host is gone?); sealing it at %d bytes",
                store.location,
                log_name,
                segment,
                ABANDONED_AFTER_S // 86400,
                end,
            )
            store.put(f"{log_name}/{segment}/sealed-{end:012d}", b"")
            parts.sealed = end


def _opened_at(segment: str) -> float:
    """When a segment's writer opened it, from its name (:class:`rec_core.data.inbox.InboxWriter`'s); a name
    without that time reads as opened now, so it is never taken for abandoned."""
    try:
        return dt.datetime.strptime(segment[:15], "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return time.time()


def _pruned_remnant(parts: _Stored) -> bool:
    """A seal whose segment cannot be read from its start: what a prune deleting chunk by chunk left behind."""
    if parts.sealed is None or parts.sealed == 0:  # unsealed, or sealed with no line: nothing to start from
        return False
    return not parts.chunks or min(start for start, _ in parts.chunks) > 0


def _cut_to_seal(target: Path, have: int, final: int) -> None:
    """Bring a sealed segment's copy to its final length: cut a refused append the shipper had copied part of,
    or create a segment sealed with no line in it, so that the batch consumes and prunes it too."""
    if have > final:
        log.warning("%s: cutting %d bytes of a refused append (sealed at %d bytes)", target, have - final, final)
    with target.open("ab") as fh:
        fh.truncate(final)
        os.fsync(fh.fileno())


def sealed_segments(paths: PathSettings, root: Path) -> dict[str, int] | None:
    """The segments under ``root`` (from :func:`batch_log_root`) the batch may prune once consumed to their
    length: None locally (the writers' own files, judged by their age), the sealed ones of the store's copy."""
    return _read_json(root / MIRROR_SEALED) if paths.object_store else None


def push_consumed(store: ObjectStore, log_name: str, local: Path, pruned: Iterable[str] = ()) -> None:
    """Delete the chunks of ``pruned``, then record the batch's offsets on the store (after its lake commit).
    Killed between the two, the old offsets name segments that are gone, which every reader passes over."""
    for segment in pruned:
        store.delete(store.keys(f"{log_name}/{segment}/"))
    path = local / CONSUMED
    if path.is_file():
        store.put(f"{log_name}/{CONSUMED}", path.read_bytes())


def stored_consumed(store: ObjectStore, log_name: str) -> dict[str, int]:
    blob = store.get(f"{log_name}/{CONSUMED}")
    return json.loads(blob.data) if blob else {}


def log_mirror(paths: PathSettings, log_name: str) -> Path:
    """Where this machine reassembles the store's copy of a log (apart from the API's own segments)."""
    return paths.data_dir / "cache" / "logs" / log_name


@dataclass(slots=True)
class _Stored:
    chunks: list[tuple[int, int]] = field(default_factory=list)
    sealed: int | None = None


def _listing(store: ObjectStore, log_name: str, segment: str | None = None) -> dict[str, _Stored]:
    """What the store holds of each segment of ``log_name`` (of ``segment`` alone, if named)."""
    found: dict[str, _Stored] = {}
    start = len(f"{log_name}/")
    for key in store.keys(f"{log_name}/{segment}/" if segment else f"{log_name}/"):
        if match := _KEY.match(key[start:]):
            stored = found.setdefault(match["segment"], _Stored())
            if match["final"] is not None:
                stored.sealed = int(match["final"])
            else:
                stored.chunks.append((int(match["start"]), int(match["end"])))
    return found


def _write_json(path: Path, record: dict[str, int]) -> None:
    write_bytes_atomic(path, json.dumps(record, sort_keys=True).encode())


def _read_json(path: Path) -> dict[str, int]:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return json.loads(path.read_text())
    return {}


def batch_log_root(paths: PathSettings, log_name: str) -> Path:
    """The folder the batch reads ``log_name`` from: the local one, or this machine's reassembly of the store's."""
    if not paths.object_store:
        return paths.inbox_dir if log_name == INBOX else paths.impressions_dir
    from rec_core.storage.object_store import open_store

    return pull_log(open_store(paths), log_name, log_mirror(paths, log_name))


def record_consumed(paths: PathSettings, log_name: str, root: Path, pruned: Iterable[str]) -> None:
    """After the batch marked and pruned ``root`` (from :func:`batch_log_root`): the same on the store."""
    if paths.object_store:
        from rec_core.storage.object_store import open_store

        push_consumed(open_store(paths), log_name, root, pruned)


def batch_consumed(paths: PathSettings) -> dict[str, int]:
    """How far the batch has taken in the event inbox: what a new snapshot records for the API's replay."""
    if not paths.object_store:
        return consumed_offsets(paths.inbox_dir)
    from rec_core.storage.object_store import open_store

    return with_local_names(stored_consumed(open_store(paths), INBOX))


def with_local_names(offsets: dict[str, int]) -> dict[str, int]:
    """``offsets`` plus, for each late segment a shipper split off (``<stem>_after-<start>.jsonl``: its host's bytes
    from ``start``), the same point in the host's own file ``<stem>.jsonl``, which is what the API replays."""
    out = dict(offsets)
    for name, offset in offsets.items():
        if match := _AFTER.match(name):
            original = f"{match['stem']}.jsonl"
            out[original] = max(out.get(original, 0), int(match["start"]) + offset)
    return out


def log_shippers(paths: PathSettings) -> list[LogShipper]:
    """The API's shippers of its inbox and impression log; none when the lake is local (the batch reads them
    where they are)."""
    if not paths.object_store:
        return []
    from rec_core.storage.object_store import open_store

    store = open_store(paths)
    return [LogShipper(store, INBOX, paths.inbox_dir), LogShipper(store, IMPRESSIONS, paths.impressions_dir)]
