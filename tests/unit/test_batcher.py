"""HopBatcher: concurrent calls for one version become one call; each gets its rows.

Every test runs on a virtual-time event loop: time stands still while any task can
run and jumps to the next timer when all of them wait, so a 1 ms sleep is exactly
1 ms and the timings asserted below are exact, whatever else the machine is doing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest

from router.dataplane.batcher import HopBatcher
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


T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when nothing is ready to run."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def _run_once(self) -> None:
        if not self._ready:  # type: ignore[attr-defined]
            due = [h.when() for h in self._scheduled  # type: ignore[attr-defined]
                   if not h.cancelled()]
            if due:
                self._now = max(self._now, min(due))
        super()._run_once()  # type: ignore[misc]


def run(coro: Coroutine[Any, Any, T], loop: VirtualTimeLoop | None = None) -> T:
    loop = loop or VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_virtual_time_is_exact() -> None:
    async def go() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(0.001)
        await asyncio.gather(asyncio.sleep(0.03), asyncio.sleep(0.002))
        return loop.time() - t0

    assert run(go()) == pytest.approx(0.031, abs=1e-12)


def rows(*values: float) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(-1, 1, 1)


def test_concurrent_calls_merge_and_split_in_order() -> None:
    rec = Recorder()
    batcher = HopBatcher(rec, max_rows=64)

    async def go() -> list[np.ndarray]:
        return await asyncio.gather(
            batcher("v1", rows(1), 1.0), batcher("v1", rows(2, 3), 1.0), batcher("v1", rows(4), 1.0)
        )

    a, b, c = run(go())
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

    run(go())
    assert sorted(rec.calls) == [("v1", 2), ("v2", 1)]


def test_max_rows_splits_groups() -> None:
    rec = Recorder()
    batcher = HopBatcher(rec, max_rows=3)

    async def go() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher("v1", rows(i), 1) for i in range(7)))

    out = run(go())
    assert [len(o) for o in out] == [1] * 7
    assert [o.item() for o in out] == [i * 10 for i in range(7)]
    assert [n for _, n in rec.calls] == [3, 3, 1]


def test_a_lone_call_is_not_delayed_and_sequential_calls_do_not_merge() -> None:
    rec = Recorder()
    batcher = HopBatcher(rec)

    async def go() -> None:
        for i in range(3):
            await batcher("v1", rows(i), 1)

    run(go())
    assert rec.calls == [("v1", 1)] * 3


def test_failure_reaches_every_caller() -> None:
    batcher = HopBatcher(Recorder(fail=True))

    async def go() -> list[object]:
        return await asyncio.gather(
            batcher("v1", rows(1), 1), batcher("v1", rows(2), 1), return_exceptions=True
        )

    results = run(go())
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

    assert run(go()).item() == 20
    assert rec.calls == [("v1", 1)]


def test_adaptive_wait_holds_only_while_requests_are_dense() -> None:
    """wait_s 50 ms: a lone request is not held; a stream 1 ms apart is merged."""
    rec = Recorder()
    loop = VirtualTimeLoop()
    batcher = HopBatcher(rec, wait_s=0.05, clock=loop.time)

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

    alone, calls = run(go(), loop)
    assert alone == 0.0  # not held at all
    # The stream's first request sees a mean gap under 50 ms and holds its group 50 ms:
    # the whole 30 ms stream joins it.
    assert calls == [("v1", 30)], calls


def test_fixed_wait_holds_even_a_lone_request() -> None:
    rec = Recorder()
    batcher = HopBatcher(rec, wait_s=0.05, adaptive=False)

    async def go() -> float:
        started = asyncio.get_running_loop().time()
        await batcher("v1", rows(1), 1.0)
        return asyncio.get_running_loop().time() - started

    assert run(go()) == pytest.approx(0.05, abs=1e-9)


class Timed(Recorder):
    """Records when each call started and how many were out at once."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay=delay)
        self.starts: list[float] = []
        self.out = self.most_out = 0

    async def __call__(self, version: str, batch: np.ndarray, timeout_s: float) -> np.ndarray:
        self.starts.append(asyncio.get_running_loop().time())
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        try:
            return await super().__call__(version, batch, timeout_s)
        finally:
            self.out -= 1


def test_gated_lone_request_goes_at_once_despite_a_long_wait() -> None:
    rec = Timed(delay=0.0)
    batcher = HopBatcher(rec, wait_s=1.0, max_in_flight=lambda v: 1)

    async def go() -> float:
        started = asyncio.get_running_loop().time()
        await batcher("v1", rows(1), 1.0)
        return asyncio.get_running_loop().time() - started

    assert run(go()) == 0.0
    assert rec.calls == [("v1", 1)]


def test_gated_requests_gather_while_busy_and_go_when_the_call_returns() -> None:
    """One call out (30 ms); ten requests arrive meanwhile: one call of ten, at its return."""
    rec = Timed(delay=0.03)
    batcher = HopBatcher(rec, wait_s=1.0, max_in_flight=lambda v: 1)

    async def go() -> list[np.ndarray]:
        first = asyncio.ensure_future(batcher("v1", rows(0), 1.0))
        await asyncio.sleep(0.002)
        rest = []
        for i in range(1, 11):
            rest.append(asyncio.ensure_future(batcher("v1", rows(i), 1.0)))
            await asyncio.sleep(0.001)
        return [await first, *await asyncio.gather(*rest)]

    out = run(go())
    assert [o.item() for o in out] == [i * 10 for i in range(11)]
    assert rec.calls == [("v1", 1), ("v1", 10)]
    assert rec.most_out == 1
    gap = rec.starts[1] - rec.starts[0]
    assert gap == pytest.approx(0.03, abs=1e-9)  # when the first returned, not after wait_s
    assert batcher.in_flight("v1") == 0


def test_gated_limit_is_per_version_and_asked_each_time() -> None:
    rec = Timed(delay=0.03)
    limits = {"v1": 2, "v2": 1}
    batcher = HopBatcher(rec, wait_s=1.0, max_in_flight=lambda v: limits[v])

    async def go() -> None:
        pending = []
        for version in ("v1", "v1", "v1", "v2", "v2"):
            pending.append(asyncio.ensure_future(batcher(version, rows(1), 1.0)))
            await asyncio.sleep(0.002)  # each in its own loop turn
        await asyncio.gather(*pending)

    run(go())
    v1 = [n for v, n in rec.calls if v == "v1"]
    v2 = [n for v, n in rec.calls if v == "v2"]
    assert v1 == [1, 1, 1] and v2 == [1, 1]
    # v1: two went at once, the third when one returned; v2: the second waited.
    starts = {v: [t for (ver, _), t in zip(rec.calls, rec.starts, strict=True) if ver == v]
              for v in ("v1", "v2")}
    assert starts["v1"][1] - starts["v1"][0] == pytest.approx(0.002, abs=1e-9)  # at once
    assert starts["v1"][2] - starts["v1"][0] == pytest.approx(0.03, abs=1e-9)  # at a return
    assert starts["v2"][1] - starts["v2"][0] == pytest.approx(0.03, abs=1e-9)


def test_gated_wait_bounds_the_hold_when_the_version_is_slow() -> None:
    """The call out takes 300 ms; a waiting group goes after wait_s (20 ms) anyway."""
    rec = Timed(delay=0.3)
    batcher = HopBatcher(rec, wait_s=0.02, max_in_flight=lambda v: 1)

    async def go() -> None:
        first = asyncio.ensure_future(batcher("v1", rows(1), 1.0))
        await asyncio.sleep(0.002)
        await asyncio.gather(first, batcher("v1", rows(2), 1.0))

    run(go())
    assert rec.calls == [("v1", 1), ("v1", 1)]
    # Arrived 2 ms after the first, held wait_s (20 ms), not the first call's 300 ms.
    assert rec.starts[1] - rec.starts[0] == pytest.approx(0.022, abs=1e-9)
    assert rec.most_out == 2


def test_gated_failure_frees_the_slot() -> None:
    rec = Recorder(fail=True)
    batcher = HopBatcher(rec, wait_s=1.0, max_in_flight=lambda v: 1)

    async def go() -> float:
        with pytest.raises(UpstreamError):
            await batcher("v1", rows(1), 1.0)
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamError):
            await batcher("v1", rows(2), 1.0)
        return asyncio.get_running_loop().time() - started

    assert run(go()) == 0.0  # not held for wait_s: the failed call is not out
    assert batcher.in_flight("v1") == 0


def test_a_hold_is_taken_from_the_timeout_not_added_to_it() -> None:
    """The version is busy (a 300 ms call out); a request arriving 2 ms later is held
    wait_s (20 ms), so its call gets 1.0 - 0.020 s: it waits at most its timeout in all.
    A request that was not held gets its whole timeout."""
    timeouts: list[float] = []

    class Slow(Timed):
        async def __call__(self, version: str, batch: np.ndarray, timeout_s: float) -> np.ndarray:
            timeouts.append(timeout_s)
            return await super().__call__(version, batch, timeout_s)

    rec = Slow(delay=0.3)
    batcher = HopBatcher(rec, wait_s=0.02, max_in_flight=lambda v: 1)

    async def go() -> None:
        first = asyncio.ensure_future(batcher("v1", rows(1), 1.0))
        await asyncio.sleep(0.002)
        await asyncio.gather(first, batcher("v1", rows(2), 1.0))

    run(go())
    assert timeouts == [pytest.approx(1.0, abs=1e-9), pytest.approx(0.98, abs=1e-9)]


def test_a_merged_call_gets_what_is_left_of_its_oldest_request_timeout() -> None:
    """Timed merging: requests at 0, 10 and 30 ms of a 50 ms hold share one call at 50 ms,
    whose timeout is the oldest's 0.5 s less 50 ms; none is left more than 0.5 s in all."""
    timeouts: list[float] = []

    class Rec(Recorder):
        async def __call__(self, version: str, batch: np.ndarray, timeout_s: float) -> np.ndarray:
            timeouts.append(timeout_s)
            return await super().__call__(version, batch, timeout_s)

    batcher = HopBatcher(Rec(), wait_s=0.05, adaptive=False)

    async def go() -> None:
        pending = []
        for gap in (0.0, 0.01, 0.02):
            await asyncio.sleep(gap)
            pending.append(asyncio.ensure_future(batcher("v1", rows(1), 0.5)))
        await asyncio.gather(*pending)

    run(go())
    assert timeouts == [pytest.approx(0.45, abs=1e-9)]
