"""A small HTTP/1.1 load generator: keep-alive connections, prebuilt requests, latencies per request.

No wrk/oha on these machines, and an HTTP client library would spend more CPU
per request than the server under test, so this writes raw requests on asyncio
streams. Two modes:

* closed loop (:func:`closed_loop`): ``concurrency`` connections each send the
  next request as soon as the last answer arrives: the peak rate.
* open loop (:func:`open_loop`): requests start on a fixed schedule whatever
  the answers do, and latency is measured from the scheduled start, so a slow
  answer cannot hide the queue behind it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np


def http_request(method: str, path: str, body: bytes = b"", host: str = "bench") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body or method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def closed_loop(host: str, port: int, requests: list[bytes], concurrency: int, seconds: float) -> LoadResult:
    cycle = itertools.cycle(requests)
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                status = await _exchange(reader, writer, next(cycle))
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += status != 200
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(len(latencies), errors, time.perf_counter() - started, np.asarray(latencies))


async def one_pass(host: str, port: int, requests: list[bytes], concurrency: int) -> LoadResult:
    """Every request of ``requests`` exactly once, ``concurrency`` at a time (first requests of fresh users: a
    second one would measure a cache)."""
    todo = iter(requests)
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for request in todo:
                t0 = time.perf_counter()
                status = await _exchange(reader, writer, request)
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += status != 200
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(len(latencies), errors, time.perf_counter() - started, np.asarray(latencies))


async def open_loop(
    host: str, port: int, requests: list[bytes], rate: float, seconds: float, connections: int = 32
) -> LoadResult:
    """``rate`` requests per second on a fixed schedule, dealt round-robin over keep-alive connections.

    Each connection sends its share when it is due, or as soon as its previous answer is in when that is late
    (as wrk2 does); latency counts from the due time either way. One coroutine per connection and no task per
    request keep the generator's own CPU small: it shares the machine with the server under test.
    """
    n = int(rate * seconds)
    cycle = itertools.cycle(requests)
    plan = [next(cycle) for _ in range(n)]
    latencies = np.zeros(n)
    errors = 0
    conns = [await asyncio.open_connection(host, port) for _ in range(connections)]
    start = time.perf_counter() + 0.05

    async def worker(c: int) -> None:
        nonlocal errors
        reader, writer = conns[c]
        for i in range(c, n, connections):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            status = await _exchange(reader, writer, plan[i])
            latencies[i] = (time.perf_counter() - due) * 1000
            errors += status != 200

    await asyncio.gather(*(worker(c) for c in range(connections)))
    elapsed = time.perf_counter() - start
    for _, writer in conns:
        writer.close()
    return LoadResult(n, errors, elapsed, latencies)


def run_load(coro: Coroutine[Any, Any, LoadResult]) -> LoadResult:
    """Run one load on uvloop when it is installed (it comes with uvicorn[standard]): a cheaper client."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
