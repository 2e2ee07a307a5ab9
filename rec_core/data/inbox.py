"""The inbox: what the API accepts between two batch runs, durable before the reply.

Writers append JSON lines to their own segment file under ``<data root>/inbox/``
and fsync before acknowledging (docs/architecture.md, invariant 6). The batch reads
every segment up to its last complete line, takes the records into the lake,
and only then records how far it read in ``inbox/consumed.json``. A crash
between the lake commit and that record makes the next run read the same lines
again, which is harmless: ingestion is idempotent (videos and users are
upserted by id, interactions deduplicated by (user, video, ts)).

One record per line::

    {"kind": "event", "at": "2026-11-28T12:00:00+00:00",
     "data": {"user_id": "u1", "video_id": "v9", "type": "like", "watch_time_s": 3.0, "completion": 0.4,
              "request_id": "<the page it was shown on>"?}}
    {"kind": "video", "at": ..., "data": {"video_id", "caption", "hashtags", "duration", "width", "height",
                                          "user_followers", "user_likes", "creator_id"?}}
    {"kind": "user", "at": ..., "data": {"user_id", "followed_users": [...]}}
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rec_core.atomic import fsync_dir, write_bytes_atomic

log = logging.getLogger(__name__)

CONSUMED = "consumed.json"
# A writer starts a new segment at least this often (when it appends), so a segment untouched for longer is one
# no writer will append to again: once consumed it can go (prune_consumed).
SEGMENT_MAX_AGE_S = 3600.0
EVENT_TYPES = ("watch", "like", "share", "comment", "skip")
KINDS = ("event", "video", "user", "impression")  # impressions have their own folder (rec_core.data.impressions)


@dataclass(frozen=True, slots=True)
class InboxRecord:
    kind: str
    at: dt.datetime
    data: dict[str, Any]


class InboxWriteError(OSError):
    """An append that did not become durable; nothing of it is kept, so the caller may retry it whole."""


class InboxWriter:
    """Appends records to one segment file of this writer; thread-safe; fsyncs before returning.

    A failed append (a full disk, an I/O error) raises :class:`InboxWriteError` and leaves the segment as it
    was before the append: the file is truncated back, so a torn line can never glue onto the next record,
    and, if any of its bytes had reached the file, the segment is closed: the next append starts a new one. A
    reader that caught the refused lines before the truncation (the batch, or a shipper copying them to the
    object store) may have taken them in, but nothing written later can sit at the offsets it read past. Should
    even the truncation fail, the torn tail is never read (it has no newline, and nothing is appended after it),
    though whole lines of the refused append before it would be. The segment file is opened lazily, so a failed
    open is retried by the next append.
    """

    def __init__(
        self,
        root: Path,
        writer_id: str | None = None,
        max_segment_bytes: int = 64 << 20,
        max_segment_age_s: float = SEGMENT_MAX_AGE_S,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.writer_id = writer_id or uuid.uuid4().hex[:12]
        self.max_segment_bytes = max_segment_bytes
        self.max_segment_age_s = max_segment_age_s
        self._opened_at = 0.0  # time.monotonic() when the open segment was created
        self._lock = threading.Lock()
        self._seq = 0
        # Raw file descriptor, no Python buffer: after a failed write a buffer could hold bytes that a later
        # flush would write after all.
        self._fd: int | None = None
        self._size = 0  # bytes durably in the open segment

    def owns(self, segment_name: str) -> bool:
        """Whether this writer wrote the segment named ``segment_name``."""
        return f"-{self.writer_id}-" in segment_name

    def _open_segment(self) -> None:
        self._seq += 1
        path = self.root / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{self.writer_id}-{self._seq:06d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fsync_dir(self.root)  # the new file's name must survive a crash too
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._fd, self._size, self._opened_at, self._opened_wall = fd, 0, time.monotonic(), time.time()

    def append(self, kind: str, data: dict[str, Any], at: dt.datetime | None = None) -> None:
        self.append_many([(kind, data)], at)

    def append_many(self, records: list[tuple[str, dict[str, Any]]], at: dt.datetime | None = None) -> None:
        """Durably append ``records``; when this returns they survive a crash of the process or the machine.

        Raises :class:`InboxWriteError` when they could not be made durable; then none of them is kept (but
        for a failed truncation, which the message says).
        """
        stamp = (at or dt.datetime.now(dt.UTC)).isoformat()
        payload = b"".join(
            json.dumps({"kind": kind, "at": stamp, "data": data}, separators=(",", ":")).encode() + b"\n"
            for kind, data in records
        )
        self.append_lines(payload, len(records))

    def append_lines(self, payload: bytes, count: int) -> None:
        """:meth:`append_many` for records already encoded: ``payload`` is ``count`` whole JSON lines, each
        ``{"kind", "at", "data"}`` and ending in a newline (a writer with its own fast encoder uses this)."""
        with self._lock:
            if self._fd is not None and (
                (self._size > 0 and self._size + len(payload) > self.max_segment_bytes)
                or time.monotonic() - self._opened_at > self.max_segment_age_s
                # The wall clock too: the name carries it, and shippers and the batch judge a segment's age by
                # that name, so a machine resumed after days must not go on appending to a days-old segment.
                or abs(time.time() - self._opened_wall) > self.max_segment_age_s
            ):
                self._abandon()
            try:
                if self._fd is None:
                    self._open_segment()
            except OSError as exc:
                raise InboxWriteError(exc.errno, f"cannot open a new inbox segment in {self.root}: {exc}") from exc
            assert self._fd is not None
            view = memoryview(payload)
            try:
                while view:  # os.write may write part of it (a nearly full disk) and fail on the rest
                    view = view[os.write(self._fd, view) :]
                os.fsync(self._fd)
            except OSError as exc:
                kept = self._roll_back()
                if len(view) < len(payload):
                    # Bytes reached the file: closed, so that bytes once at an offset never become other bytes there,
                    # which a reader that saw the refused append before its truncation (a shipper, the batch) relies
                    # on. A write that wrote nothing (the usual full disk) keeps the segment: no file per refusal.
                    self._abandon()
                raise InboxWriteError(
                    exc.errno,
                    f"inbox append of {count} record(s) failed: {exc.strerror or exc}; "
                    + ("nothing of it was kept" if kept else "its segment was abandoned with a torn tail"),
                ) from exc
            self._size += len(payload)

    def _roll_back(self) -> bool:
        """Cut the segment back to its last durable size; False if that fails too."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._size)
            os.fsync(self._fd)
            return True
        except OSError:
            log.exception("inbox: cannot truncate a failed append away; abandoning segment of %s", self.writer_id)
            return False

    def _abandon(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._abandon()


@dataclass(frozen=True, slots=True)
class InboxBatch:
    records: list[InboxRecord]
    offsets: dict[str, int]  # segment name -> byte offset read up to (complete lines only)
    bad_lines: int
    more: bool = False  # stopped at ``max_bytes``: read again from ``offsets`` for the rest


def read_new(
    root: Path,
    since: dict[str, int] | None = None,
    *,
    max_bytes: int | None = None,
    skip: Callable[[str], bool] | None = None,
) -> InboxBatch:
    """Every complete record after ``since`` (default: what the batch consumed), oldest segment first.

    A torn last line (a writer killed mid-write, or one writing right now) is left
    unread: the returned offsets stop before it, so the next read picks it up whole.
    Readers that follow the inbox (the API's workers) pass the offsets of their last read.

    ``max_bytes`` bounds one read (the API replays a big inbox in passes, so its memory stays flat): it
    stops at a line boundary once that many bytes are read (a single longer line is still read whole, so
    every pass makes progress) and sets ``more``. Segments for which ``skip(name)`` is true are left out.
    """
    root = Path(root)
    consumed = consumed_offsets(root) if since is None else since
    records: list[InboxRecord] = []
    offsets: dict[str, int] = {}
    bad = 0
    budget = max_bytes  # bytes this pass may still read; None: no bound
    more = False
    for path in sorted(root.glob("*.jsonl")) if root.is_dir() else []:
        if skip is not None and skip(path.name):
            continue
        start = consumed.get(path.name, 0)
        if path.stat().st_size <= start:
            offsets[path.name] = start
            continue
        if budget is not None and budget <= 0:
            more = True
            break
        data, complete = _read_lines(path, start, budget, at_least_one=not records and not bad)
        end = data.rfind(b"\n") + 1  # only whole lines
        for line in data[:end].splitlines():
            record = _parse(line)
            if record is None:
                bad += 1
            else:
                records.append(record)
        offsets[path.name] = start + end
        if budget is not None:
            budget -= end
            if not complete:
                more = True
                break
    return InboxBatch(records, offsets, bad, more)


def _read_lines(path: Path, start: int, budget: int | None, *, at_least_one: bool) -> tuple[bytes, bool]:
    """The bytes of ``path`` from ``start`` (all, or whole lines within ``budget``), and whether that is all of it.

    With ``at_least_one``, a first line longer than the budget is read whole: otherwise no pass ever reads past it.
    """
    with path.open("rb") as fh:
        fh.seek(start)
        if budget is None:
            return fh.read(), True
        data = fh.read(budget + 1)  # one byte more tells whether the file goes on
        if len(data) <= budget:
            return data, True
        data = data[:budget]
        end = data.rfind(b"\n") + 1
        if end or not at_least_one:
            return data[:end], False
        fh.seek(start + budget)
        while chunk := fh.read(1 << 16):
            newline = chunk.find(b"\n")
            if newline >= 0:
                return data + chunk[: newline + 1], False
            data += chunk
        return data, True


def mark_consumed(root: Path, offsets: dict[str, int]) -> None:
    merged = {**consumed_offsets(Path(root)), **offsets}
    write_bytes_atomic(Path(root) / CONSUMED, json.dumps(merged, indent=1, sort_keys=True).encode())


def prune_consumed(
    root: Path,
    idle_s: float = 24 * SEGMENT_MAX_AGE_S,
    covered_by: Iterable[dict[str, int]] = (),
    sealed: Mapping[str, int] | None = None,
) -> list[str]:
    """Delete the segments the batch has consumed whole and no writer has touched for ``idle_s`` seconds (past
    :data:`SEGMENT_MAX_AGE_S`, a writer appends to a new segment instead), so the folder does not grow with
    traffic; returns their names.

    ``covered_by``: offsets that readers may still replay from (the event inbox: each snapshot's ``build.json``
    offsets, from which the API rebuilds its user state); a segment goes only once every one of them is past its
    end, so a replay never misses a record that a deleted segment held.

    ``sealed``: for a copy of segments written elsewhere (the object store's, :mod:`rec_core.data.log_shipping`),
    whose files' times say when the copy changed, not when the writer last wrote: only segments their shipper
    has sealed (segment -> its final length) may go, once consumed to that length.
    """
    if idle_s <= SEGMENT_MAX_AGE_S:
        raise ValueError(f"idle_s must exceed a segment's longest life ({SEGMENT_MAX_AGE_S:g} s), got {idle_s:g}")
    covered_by = list(covered_by)
    root = Path(root)
    consumed = consumed_offsets(root)
    cutoff = time.time() - idle_s
    gone = []
    for name, offset in consumed.items():
        path = root / name
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            replayed = any(since.get(name, 0) < stat.st_size for since in covered_by)
            final = sealed is None or (name in sealed and offset >= sealed[name])
            if offset >= stat.st_size and final and stat.st_mtime < cutoff and not replayed:
                path.unlink()
                gone.append(name)
    if gone:
        fsync_dir(root)
        # After the deletions: a crash between leaves names of missing files, which every reader passes over.
        kept = {name: offset for name, offset in consumed.items() if name not in gone}
        write_bytes_atomic(root / CONSUMED, json.dumps(kept, indent=1, sort_keys=True).encode())
    return gone


def iter_kind(batch: InboxBatch, kind: str) -> Iterator[InboxRecord]:
    return (r for r in batch.records if r.kind == kind)


def consumed_offsets(root: Path) -> dict[str, int]:
    """How far the batch has taken each segment into the lake (a snapshot records this when it begins)."""
    path = Path(root) / CONSUMED
    return json.loads(path.read_text()) if path.is_file() else {}


def _parse(line: bytes) -> InboxRecord | None:
    try:
        raw = json.loads(line)
        kind, data = raw["kind"], raw["data"]
        at = dt.datetime.fromisoformat(raw["at"])
    except (ValueError, KeyError, TypeError):
        return None
    if kind not in KINDS or not isinstance(data, dict):
        return None
    return InboxRecord(kind, at if at.tzinfo else at.replace(tzinfo=dt.UTC), data)
