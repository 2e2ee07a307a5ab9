"""Micro-batching: concurrent requests share one call of a batch function.

Used where one call per batch is much cheaper than one per item: the text
encoder and video tower (one forward pass), and the inbox (one fsync for many
records, a group commit). While one batch runs in a worker thread, new items
queue up and form the next batch, so under load batches grow by themselves and
an idle server adds no delay.

Bounded (docs/architecture.md, invariant 9): at most ``max_waiting`` items wait for a batch; past it
:meth:`MicroBatcher.submit` refuses at once with :class:`Busy` (the API's 503), before anything is kept, so a slow
disk or encoder under a flood costs refusals, not memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Busy(Exception):
    """The batcher already holds its most waiting items; this one was not taken."""

    def __init__(self, name: str, waiting: int) -> None:
        super().__init__(f"{waiting} {name} writes are already waiting")
        self.name = name
        self.waiting = waiting


class MicroBatcher(Generic[T, R]):
    def __init__(
        self, fn: Callable[[list[T]], list[R]], *, max_batch: int = 64, max_waiting: int = 1024, name: str = "batch"
    ) -> None:
        self._fn = fn
        self._max = max_batch
        self._max_waiting = max_waiting
        self._name = name
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self._max_waiting)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def submit(self, item: T) -> R:
        """The result of ``fn`` for ``item``; raises what ``fn`` raised for its batch, or :class:`Busy` at once
        when ``max_waiting`` items already wait."""
        if self._queue is None:
            raise RuntimeError(f"{self._name} batcher is not running")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise Busy(self._name, self._max_waiting) from None
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            items = [item for item, _ in batch]
            try:
                results = await asyncio.to_thread(self._fn, items)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
