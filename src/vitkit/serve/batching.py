"""Dynamic batching: concurrent requests share one forward pass.

A model forward on 16 images costs far less than 16 forwards on one image, so the batcher
holds requests for at most `max_wait` seconds to collect up to `max_batch` of them, then
runs them together on one worker thread. The wait counts from when the oldest request
arrived or the model became free, whichever is later: a request that already waited for a
running batch still gives the clients answered by that batch a moment to send their next
requests, instead of going alone into a forward pass of one. The event loop never runs the
model, so it keeps answering (health checks, uploads) meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

RunBatch = Callable[[str, Sequence[Any]], Sequence[Any]]


class BatcherClosed(RuntimeError):
    """Raised by submit() once the batcher is shutting down."""


@dataclass
class _Job:
    kind: str
    item: Any
    future: asyncio.Future
    arrived: float


@dataclass
class BatchStats:
    """Counts since start: forward passes, items, and how many batches had each size."""

    batches: int = 0
    items: int = 0
    sizes: collections.Counter = field(default_factory=collections.Counter)
    busy_s: float = 0.0  # time the worker spent running batches

    def to_dict(self) -> dict:
        return {"batches": self.batches, "items": self.items,
                "mean_batch": round(self.items / self.batches, 3) if self.batches else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
                "busy_s": round(self.busy_s, 3)}


class Batcher:
    """Collects submitted items into batches and runs `run_batch(kind, items)` on one thread.

    Items of different kinds (e.g. "predict" and "explain") may arrive together; each kind
    is run as its own batch. `run_batch` returns one result per item, in order.
    """

    def __init__(self, run_batch: RunBatch, max_batch: int = 16, max_wait: float = 0.005):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait}")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait)
        self.stats = BatchStats()
        self._pending: collections.deque[_Job] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._free_at = 0.0  # event-loop time when the last batch finished
        self._lock = threading.Lock()

    async def start(self) -> None:
        """Start collecting (call from the running event loop)."""
        if self._task is not None:
            return
        self._closing = False
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitkit-model")
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="vitkit-batcher")

    @property
    def pending(self) -> int:
        """Items waiting for a forward pass (not counting the batch running now)."""
        return len(self._pending)

    async def submit(self, kind: str, item: Any) -> Any:
        """Queue one item and wait for its result (the exception of its batch, if it failed)."""
        if self._task is None or self._closing:
            raise BatcherClosed("the server is shutting down")
        loop = asyncio.get_running_loop()
        job = _Job(kind, item, loop.create_future(), loop.time())
        self._pending.append(job)
        self._wake.set()
        return await job.future

    async def close(self) -> None:
        """Stop accepting items, finish every queued one, then stop the worker thread."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await self._task
        finally:
            self._task = None
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = max(self._pending[0].arrived, self._free_at) + self.max_wait
            while len(self._pending) < self.max_batch and not self._closing:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            await self._run(loop, batch)
            self._free_at = loop.time()

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        groups: dict[str, list[_Job]] = {}
        for job in batch:
            groups.setdefault(job.kind, []).append(job)
        for kind, jobs in groups.items():
            try:
                items = [j.item for j in jobs]
                results = await loop.run_in_executor(self._executor, self._timed, kind, items)
                if len(results) != len(jobs):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(jobs)} items")
            except Exception as e:  # the batch failed: every request in it gets the error
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            for j, r in zip(jobs, results, strict=True):
                if not j.future.done():
                    j.future.set_result(r)

    def _timed(self, kind: str, items: list[Any]) -> Sequence[Any]:
        t0 = time.perf_counter()
        try:
            return self.run_batch(kind, items)
        finally:
            with self._lock:
                self.stats.batches += 1
                self.stats.items += len(items)
                self.stats.sizes[len(items)] += 1
                self.stats.busy_s += time.perf_counter() - t0
