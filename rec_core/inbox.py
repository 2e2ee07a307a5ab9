"""The inbox: what the API accepts between two batch runs, durable before the reply.

Writers append JSON lines to their own segment file under ``<data root>/inbox/``
and fsync before acknowledging (ARCHITECTURE.md, invariant 6). The batch reads
every segment up to its last complete line, takes the records into the lake,
and only then records how far it read in ``inbox/consumed.json``. A crash
between the lake commit and that record makes the next run read the same lines
again, which is harmless: ingestion is idempotent (videos and users are
upserted by id, interactions deduplicated by (user, video, ts)).

One record per line::

    {"kind": "event", "at": "2026-11-28T12:00:00+00:00",
     "data": {"user_id": "u1", "video_id": "v9", "type": "like", "watch_time_s": 3.0, "completion": 0.4}}
    {"kind": "video", "at": ..., "data": {"video_id", "caption", "hashtags", "duration", "width", "height",
                                          "user_followers", "user_likes", "creator_id"?}}
    {"kind": "user", "at": ..., "data": {"user_id", "followed_users": [...]}}
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rec_core.atomic import fsync_dir, write_bytes_atomic

CONSUMED = "consumed.json"
EVENT_TYPES = ("watch", "like", "share", "comment", "skip")
KINDS = ("event", "video", "user")


@dataclass(frozen=True, slots=True)
class InboxRecord:
    kind: str
    at: dt.datetime
    data: dict[str, Any]


class InboxWriter:
    """Appends records to one segment file of this writer; thread-safe; fsyncs before returning."""

    def __init__(self, root: Path, writer_id: str | None = None, max_segment_bytes: int = 64 << 20) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.writer_id = writer_id or uuid.uuid4().hex[:12]
        self.max_segment_bytes = max_segment_bytes
        self._lock = threading.Lock()
        self._seq = 0
        self._fh = self._open_segment()

    def _open_segment(self):
        self._seq += 1
        path = self.root / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{self.writer_id}-{self._seq:06d}.jsonl"
        fh = path.open("ab")
        fsync_dir(self.root)  # the new file's name must survive a crash too
        return fh

    def append(self, kind: str, data: dict[str, Any], at: dt.datetime | None = None) -> None:
        self.append_many([(kind, data)], at)

    def append_many(self, records: list[tuple[str, dict[str, Any]]], at: dt.datetime | None = None) -> None:
        """Durably append ``records``; when this returns they survive a crash of the process or the machine."""
        stamp = (at or dt.datetime.now(dt.UTC)).isoformat()
        payload = b"".join(
            json.dumps({"kind": kind, "at": stamp, "data": data}, separators=(",", ":")).encode() + b"\n"
            for kind, data in records
        )
        with self._lock:
            if self._fh.tell() + len(payload) > self.max_segment_bytes and self._fh.tell() > 0:
                self._fh.close()
                self._fh = self._open_segment()
            self._fh.write(payload)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            self._fh.close()


@dataclass(frozen=True, slots=True)
class InboxBatch:
    records: list[InboxRecord]
    offsets: dict[str, int]  # segment name -> byte offset read up to (complete lines only)
    bad_lines: int


def read_new(root: Path, since: dict[str, int] | None = None) -> InboxBatch:
    """Every complete record after ``since`` (default: what the batch consumed), oldest segment first.

    A torn last line (a writer killed mid-write, or one writing right now) is left
    unread: the returned offsets stop before it, so the next read picks it up whole.
    Readers that follow the inbox (the API's workers) pass the offsets of their last read.
    """
    root = Path(root)
    consumed = consumed_offsets(root) if since is None else since
    records: list[InboxRecord] = []
    offsets: dict[str, int] = {}
    bad = 0
    for path in sorted(root.glob("*.jsonl")) if root.is_dir() else []:
        start = consumed.get(path.name, 0)
        if since is not None and path.stat().st_size <= start:
            offsets[path.name] = start
            continue
        with path.open("rb") as fh:
            fh.seek(start)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # only whole lines
        for line in data[:end].splitlines():
            record = _parse(line)
            if record is None:
                bad += 1
            else:
                records.append(record)
        offsets[path.name] = start + end
    return InboxBatch(records, offsets, bad)


def mark_consumed(root: Path, offsets: dict[str, int]) -> None:
    merged = {**consumed_offsets(Path(root)), **offsets}
    write_bytes_atomic(Path(root) / CONSUMED, json.dumps(merged, indent=1, sort_keys=True).encode())


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
