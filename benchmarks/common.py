"""The one result record every benchmark returns, and a timer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BenchRow:
    benchmark: str  # e.g. "generate_data"
    metric: str  # e.g. "wall time, default scale"
    value: float
    unit: str  # e.g. "s", "rows/s", "ms", "x"
    note: str = ""


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` is the elapsed wall time in seconds."""
    out: list[float] = []
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - start)
