"""The micro-batcher: grouping by key, the bounded queue, and cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from textinv.errors import OverloadedError
from textinv_server.batching import MicroBatcher


@dataclass(frozen=True)
class Item:
    """A request as the batcher needs one: a value, and a cancellation flag."""

    value: int
    flag: threading.Event = field(default_factory=threading.Event, compare=False)

    def cancel(self) -> None:
        self.flag.set()

    def cancelled(self) -> bool:
        return self.flag.is_set()


def submit(batcher: MicroBatcher[Item, int], value: int) -> Any:
    return batcher.submit(Item(value))


class Recorder:
    """A batch runner that records each batch and doubles each request."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: Sequence[Item]) -> list[int | BaseException]:
        self.release.wait(5)
        self.batches.append([item.value for item in items])
        return [ValueError("odd") if item.value == 13 else item.value * 2 for item in items]


def run(coroutine):
    return asyncio.run(coroutine)


def test_compatible_requests_share_a_batch_and_others_wait() -> None:
    async def scenario() -> tuple[list[int], list[list[int]]]:
        recorder = Recorder()
        batcher = MicroBatcher(
            recorder, key=lambda r: r.value % 2, max_batch=3, wait_s=0.2, max_queue=10
        )
        batcher.start()
        results = await asyncio.gather(*(submit(batcher, r) for r in [2, 4, 5, 6, 8]))
        await batcher.close(1)
        return list(results), recorder.batches

    results, batches = run(scenario())
    assert results == [4, 8, 10, 12, 16]
    assert batches[0] == [2, 4, 6]  # the oldest key first, up to max_batch
    assert sorted(map(sorted, batches[1:])) == [[5], [8]]


def test_full_queue_is_refused_at_once() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        recorder.release.clear()  # hold the first batch so the queue fills
        batcher = MicroBatcher(recorder, key=lambda r: r.value, max_batch=1, wait_s=0, max_queue=2)
        batcher.start()
        first = asyncio.ensure_future(submit(batcher, 1))
        await asyncio.sleep(0.05)  # the worker has taken it
        queued = [asyncio.ensure_future(submit(batcher, r)) for r in (2, 3)]
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError, match="queue is full"):
            await submit(batcher, 4)
        recorder.release.set()
        assert await first == 2 and [await q for q in queued] == [4, 6]
        await batcher.close(1)

    run(scenario())


def test_an_error_fails_only_its_request() -> None:
    async def scenario() -> None:
        batcher = MicroBatcher(Recorder(), key=lambda r: 0, max_batch=4, wait_s=0.05, max_queue=8)
        batcher.start()
        results = await asyncio.gather(
            submit(batcher, 1), submit(batcher, 13), return_exceptions=True
        )
        assert results[0] == 2 and isinstance(results[1], ValueError)
        await batcher.close(1)

    run(scenario())


def test_cancelled_caller_flags_its_item() -> None:
    async def scenario() -> None:
        seen: list[Item] = []

        def runner(items: Sequence[Item]) -> list[int | BaseException]:
            seen.extend(items)
            for _ in range(200):
                if items[0].cancelled():
                    break
                threading.Event().wait(0.01)
            return [0 for _ in items]

        batcher = MicroBatcher(runner, key=lambda r: 0, max_batch=1, wait_s=0, max_queue=8)
        batcher.start()
        task = asyncio.ensure_future(submit(batcher, 1))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen and seen[0].cancelled()
        await batcher.close(1)

    run(scenario())


def test_a_request_cancelled_while_it_waits_never_runs() -> None:
    async def scenario() -> list[list[int]]:
        recorder = Recorder()
        recorder.release.clear()  # hold the first batch: the second request waits
        batcher = MicroBatcher(recorder, key=lambda r: 0, max_batch=1, wait_s=0, max_queue=8)
        batcher.start()
        first = asyncio.ensure_future(submit(batcher, 1))
        await asyncio.sleep(0.05)
        waiting = Item(2)
        second = asyncio.ensure_future(batcher.submit(waiting))
        await asyncio.sleep(0.01)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert waiting.cancelled() and batcher.depth == 0
        recorder.release.set()
        assert await first == 2
        await batcher.close(1)
        return recorder.batches

    assert run(scenario()) == [[1]]
