"""HopBatcher: concurrent calls for one version become one call; each gets its rows."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from router.batcher import HopBatcher
from serve.errors import UpstreamError


class Recorder:
    def __init__(self, fail: bool = False, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail, self.delay = fail, delay

    async def __call__(self, version: str, batch: np.ndarray, timeout_s: float) -> np.ndarray:
        self.calls.append((version, len(batch)))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise UpstreamError("down", reason="unavailable")
        return batch.reshape(len(batch), -1)[:, :1] * 10  # row i -> its first value * 10


def rows(*values: float) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(-1, 1, 1)


def test_concurrent_calls_merge_and_split_in_order() -> None:
    rec = Recorder()
    batcher = HopBatcher(rec, max_rows=64)

    async def go() -> list[np.ndarray]:
        return await asyncio.gather(
            batcher("v1", rows(1), 1.0), batcher("v1", rows(2, 3), 1.0), batcher("v1", rows(4), 1.0)
        )

    a, b, c = asyncio.run(go())
    assert rec.calls == [("v1", 4)]
    assert a.ravel().tolist() == [10] and b.ravel().tolist() == [20, 30]
    assert c.ravel().tolist() == [40]
    assert (batcher.requests, batcher.calls) == (3, 1)


def test_versions_are_batched_separately() -> None:
    rec = Recorder()
    batcher = HopBatcher(rec)

    async def go() -> None:
        await asyncio.gather(batcher("v1", rows(1), 1), batcher("v2", rows(2), 1),
                             batcher("v1", rows(3), 1))

    asyncio.run(go())
    assert sorted(rec.calls) == [("v1", 2), ("v2", 1)]


def test_max_rows_splits_groups() -> None:
    rec = Recorder()
    batcher = HopBatcher(rec, max_rows=3)

    async def go() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher("v1", rows(i), 1) for i in range(7)))

    out = asyncio.run(go())
    assert [len(o) for o in out] == [1] * 7
    assert [o.item() for o in out] == [i * 10 for i in range(7)]
    assert [n for _, n in rec.calls] == [3, 3, 1]


def test_a_lone_call_is_not_delayed_and_sequential_calls_do_not_merge() -> None:
    rec = Recorder()
    batcher = HopBatcher(rec)

    async def go() -> None:
        for i in range(3):
            await batcher("v1", rows(i), 1)

    asyncio.run(go())
    assert rec.calls == [("v1", 1)] * 3


def test_failure_reaches_every_caller() -> None:
    batcher = HopBatcher(Recorder(fail=True))

    async def go() -> list[object]:
        return await asyncio.gather(
            batcher("v1", rows(1), 1), batcher("v1", rows(2), 1), return_exceptions=True
        )

    results = asyncio.run(go())
    assert all(isinstance(r, UpstreamError) for r in results)


def test_cancelled_caller_does_not_break_the_group() -> None:
    rec = Recorder(delay=0.01)
    batcher = HopBatcher(rec, wait_s=0.005)

    async def go() -> np.ndarray:
        doomed = asyncio.ensure_future(batcher("v1", rows(1), 1))
        kept = asyncio.ensure_future(batcher("v1", rows(2), 1))
        await asyncio.sleep(0)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return await kept

    assert asyncio.run(go()).item() == 20
    assert rec.calls == [("v1", 1)]


def test_adaptive_wait_holds_only_while_requests_are_dense() -> None:
    """wait_s 50 ms: a lone request is not held; a stream 1 ms apart is merged."""
    rec = Recorder()
    batcher = HopBatcher(rec, wait_s=0.05)

    async def go() -> tuple[float, list[tuple[str, int]]]:
        started = asyncio.get_running_loop().time()
        await batcher("v1", rows(1), 1.0)  # nothing seen before: sent on the next loop turn
        alone = asyncio.get_running_loop().time() - started
        rec.calls.clear()
        pending = []
        for i in range(30):  # 1 ms apart: the mean gap falls under 50 ms, later ones wait
            pending.append(asyncio.ensure_future(batcher("v1", rows(i), 1.0)))
            await asyncio.sleep(0.001)
        await asyncio.gather(*pending)
        return alone, list(rec.calls)

    alone, calls = asyncio.run(go())
    assert alone < 0.04
    assert sum(n for _, n in calls) == 30 and len(calls) < 10, calls


def test_fixed_wait_holds_even_a_lone_request() -> None:
    rec = Recorder()
    batcher = HopBatcher(rec, wait_s=0.05, adaptive=False)

    async def go() -> float:
        started = asyncio.get_running_loop().time()
        await batcher("v1", rows(1), 1.0)
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(go()) >= 0.045
