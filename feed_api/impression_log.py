"""The impression log: what every page showed, written off the request path, a few times a second.

A page costs the request path one msgspec encoding (a few microseconds) and one
append of the bytes to a bounded in-memory list, no I/O: :meth:`ImpressionLog.record`.
Bytes, not the page's objects, wait in the list, so each waiting page is one
object for the garbage collector to walk, not twenty. A background thread takes
the list every ``REC_API_IMPRESSION_FLUSH_MS`` (200 ms by default), wraps each
page in its inbox line, writes them as one append to this worker's segment under
``<data root>/impressions/`` and fsyncs it (:class:`rec_core.data.inbox.InboxWriter`,
the inbox's own durable append). So a kill loses at most the pages served in the
last interval plus the one write in flight; a clean stop writes everything. When
the disk stalls or fails, pages keep being served: the list holds up to
``REC_API_IMPRESSIONS_PENDING_MAX`` pages, and past that a page is served
unlogged and counted (``feed_api_impressions_dropped_total``), never blocked.

The next batch takes the segments into the lake's ``impressions`` table
(:mod:`rec_core.data.impressions`), one row per item.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path

import msgspec

from feed_api.pager import Item
from feed_api.telemetry import Metrics
from rec_core.data.impressions import KIND
from rec_core.data.inbox import InboxWriteError, InboxWriter

log = logging.getLogger(__name__)


class PageShown(msgspec.Struct, frozen=True):
    """One page as served: the request path builds this and nothing more; it is the logged line's ``data``
    as is (:mod:`rec_core.data.impressions` reads it back)."""

    request_id: str
    user_id: str
    snapshot_id: str
    model_version: str
    experiment: str | None
    arm: str | None
    ts_ms: int
    first_position: int  # the walk's position of items[0]
    items: list[Item]
    from_list: int  # items[:from_list] came from the precomputed list, the rest from live search
    list_source: str  # "precomputed" (the user's feed) or "trending"


class ImpressionLog:
    """Bounded, batched, durable logging of pages served; thread-safe."""

    def __init__(self, root: Path, *, flush_s: float, pending_max: int, metrics: Metrics) -> None:
        self._writer = InboxWriter(root)
        self._flush_s = flush_s
        self._pending_max = pending_max
        self._metrics = metrics
        self._pending: list[bytes] = []  # each an encoded PageShown
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one write at a time: the final flush may race the thread's last one
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._encoder = msgspec.json.Encoder()

    def record(self, page: PageShown) -> None:
        if len(self._pending) < self._pending_max:  # racy, but only ever off by the pages of one flush
            encoded = self._encoder.encode(page)
            with self._lock:
                if len(self._pending) < self._pending_max:
                    self._pending.append(encoded)
                    return
        self._metrics.count("impressions_dropped")

    def owns(self, segment_name: str) -> bool:
        """Whether this log wrote the segment named ``segment_name`` (sealed at shutdown once closed)."""
        return self._writer.owns(segment_name)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="impression-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._flush_s):
            self.flush()

    def flush(self) -> int:
        """Write and fsync every page recorded so far; the number of pages written."""
        with self._flush_lock:
            with self._lock:
                pages, self._pending = self._pending, []
            if not pages:
                return 0
            started = time.perf_counter()
            head = f'{{"kind":"{KIND}","at":"{dt.datetime.now(dt.UTC).isoformat()}","data":'.encode()
            payload = b"".join(b"%s%s}\n" % (head, page) for page in pages)
            try:
                self._writer.append_lines(payload, len(pages))
            except InboxWriteError as exc:
                # Kept for the next try while they fit under the bound, so a short stall loses nothing.
                with self._lock:
                    room = max(self._pending_max - len(self._pending), 0)
                    self._pending = pages[:room] + self._pending
                kept = min(room, len(pages))
                if kept < len(pages):
                    self._metrics.count("impressions_dropped", len(pages) - kept)
                log.warning(
                    "impression log: write failed (%s); %d of %d page(s) kept for the next try", exc, kept, len(pages)
                )
                return 0
            self._metrics.count("impression_pages_logged", len(pages))
            if (took := time.perf_counter() - started) > self._flush_s:
                log.warning("impression log: writing %d page(s) took %.3f s", len(pages), took)
            return len(pages)

    def close(self) -> None:
        """Stop the thread and write what is left (a clean shutdown loses nothing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.flush()
        self._writer.close()
