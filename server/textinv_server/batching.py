"""Micro-batching: compatible requests that arrive within a short window run as one batch.

Requests wait in a bounded queue; past ``max_queue`` they are refused at once
(``OverloadedError`` → ``RESOURCE_EXHAUSTED``) rather than left to time out. A single worker
forms batches: it takes the oldest waiting request, then gathers requests with the same key (shape,
steps, scheduler) for up to ``wait_s``, up to ``max_batch``, and runs them on one thread, so the
model runs one batch at a time while the event loop keeps accepting calls. A request whose caller
goes away is flagged; the runtime checks the flag every denoising step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from textinv.errors import OverloadedError
from textinv_server import metrics


class Cancellable(Protocol):
    """What the batcher needs of a request: to flag it cancelled when its caller goes away (the
    runtime polls the flag every denoising step), and to see the flag while it waits."""

    def cancel(self) -> None: ...

    def cancelled(self) -> bool: ...


Request = TypeVar("Request", bound=Cancellable)
Result = TypeVar("Result")

# Runs a batch; returns one result or exception per request, in order.
BatchRunner = Callable[[Sequence[Request]], Sequence[Result | BaseException]]


@dataclass
class _Waiting(Generic[Request, Result]):
    request: Request
    future: asyncio.Future[Result]
    key: Hashable
    enqueued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[Request, Result]):
    def __init__(
        self,
        run_batch: BatchRunner[Request, Result],
        key: Callable[[Request], Hashable],
        *,
        max_batch: int,
        wait_s: float,
        max_queue: int,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or wait_s < 0:
            raise ValueError(
                f"max_batch ({max_batch}) and max_queue ({max_queue}) must be ≥ 1, "
                f"batch wait ({wait_s}) ≥ 0"
            )
        self._run_batch = run_batch
        self._key = key
        self.max_batch, self.wait_s, self.max_queue = max_batch, wait_s, max_queue
        self._waiting: list[_Waiting[Request, Result]] = []
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._busy = False  # a batch is running on the executor

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work())

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (not counting the batch that runs)."""
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        """A batch is running on the model."""
        return self._busy

    async def submit(self, request: Request) -> Result:
        """Queue ``request`` and wait for its result; refuse at once when the queue is full."""
        if self._closed:
            raise OverloadedError("the server is shutting down and accepts no new requests")
        if len(self._waiting) >= self.max_queue:
            metrics.REJECTED.labels(reason="queue_full").inc()
            raise OverloadedError(
                f"generation queue is full ({self.max_queue} waiting); retry later"
            )
        waiting = _Waiting(request, asyncio.get_running_loop().create_future(), self._key(request))
        self._waiting.append(waiting)
        metrics.QUEUE_DEPTH.set(len(self._waiting))
        self._arrived.set()
        try:
            return await asyncio.shield(waiting.future)
        except asyncio.CancelledError:
            # The caller went away (cancel or deadline): stop its work within one step.
            request.cancel()
            self._drop(waiting)
            raise

    async def close(self, grace_s: float) -> None:
        """Refuse new work, let queued and running batches finish for ``grace_s``, then cancel."""
        self._closed = True
        deadline = time.monotonic() + grace_s
        while (self._waiting or self._busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for waiting in list(self._waiting):
            waiting.request.cancel()
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            metrics.BATCH_SIZE.observe(len(batch))
            self._busy = True
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, [w.request for w in batch]
                )
            except BaseException as error:  # the runner itself failed: fail each request
                results = [error] * len(batch)
            finally:
                self._busy = False
            for waiting, result in zip(batch, results, strict=True):
                _resolve(waiting.future, result)

    async def _next_batch(self) -> list[_Waiting[Request, Result]]:
        """The oldest request, plus compatible ones arriving within ``wait_s``."""
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        key = self._waiting[0].key
        window_ends = time.perf_counter() + self.wait_s
        while len(self._compatible(key)) < self.max_batch:
            remaining = window_ends - time.perf_counter()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        batch = self._compatible(key)[: self.max_batch]
        for waiting in batch:
            self._waiting.remove(waiting)
        metrics.QUEUE_DEPTH.set(len(self._waiting))
        return batch

    def _compatible(self, key: Hashable) -> list[_Waiting[Request, Result]]:
        return [w for w in self._waiting if w.key == key and not w.request.cancelled()]

    def _drop(self, waiting: _Waiting[Request, Result]) -> None:
        if waiting in self._waiting:
            self._waiting.remove(waiting)
            metrics.QUEUE_DEPTH.set(len(self._waiting))


def _resolve(future: asyncio.Future[Result], result: object) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)  # type: ignore[arg-type]
