"""Progress reporting that reads well both in a terminal and in Airflow task logs.

Airflow captures the ``logging`` module, not carriage-return progress bars, so
progress is logged as plain lines at most every ``every_s`` seconds (and at the end).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    def __init__(self, what: str, total: int, *, every_s: float = 5.0, logger: logging.Logger | None = None) -> None:
        self.what, self.total, self.every_s = what, total, every_s
        self.log = logger or logging.getLogger("rec.progress")
        self.done = 0
        self.started = self.last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            self._report(now)

    def _report(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        self.log.info(
            "%s: %d/%d (%.0f%%) %.1f/s, %.0fs elapsed, eta %.0fs",
            self.what,
            self.done,
            self.total,
            pct,
            rate,
            elapsed,
            eta,
        )


def track(items: Iterable[T], what: str, total: int, every_s: float = 5.0) -> Iterator[T]:
    progress = Progress(what, total, every_s=every_s)
    for item in items:
        yield item
        progress.advance()


def setup_logging(level: str = "INFO") -> None:
    """Console logging for ``python -m jobs.*``; under Airflow its own handlers already exist."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
