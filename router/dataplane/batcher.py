"""Batching across the router-to-model hop. Pure asyncio, no Ray.

Every call through a DeploymentHandle costs the router a fixed amount of
work (serialisation, replica choice, an RPC) whatever the batch size, and the
model a fixed amount per call too (a RandomForest predicts 64 rows in about
the time of one). The ``HopBatcher`` gathers the calls for one version that
arrive together and sends them as one call, then hands each caller its own
rows back, so those fixed costs are shared by every request in the group.

When a group is sent is the policy:

- Gated (``max_in_flight`` given, the default in the router): a version has at
  most ``max_in_flight(version)`` calls out at once (the router asks for one
  per running replica). While it is below that, a group goes on the next turn
  of the event loop: it holds exactly the requests handled concurrently and a
  lone request waits for nothing. While the version is busy, new requests
  join the waiting group, which goes the moment a call returns, so the batch
  grows with the load and costs no added latency (the replica could not have
  taken it earlier). ``wait_s`` bounds the hold: a group that has waited that
  long goes anyway, and so does a group of ``max_rows``.
- Either way, a hold is part of the version's timeout, not added to it: a merged
  call gets what is left of its oldest request's timeout, so no request waits
  longer than its arm's timeout for the arm (a slow arm's calls out, the gate
  holds the next group up to ``wait_s``; that used to come on top of the
  timeout, and the timed-out requests of chaos drill 3 paid 10 ms more).
- Timed (no ``max_in_flight``): a group goes after ``wait_s`` (0: the next
  loop turn) or at ``max_rows``; with ``adaptive`` it waits only while the
  version's requests arrive closer together than ``wait_s``
  (``AdaptiveWait``), so a sparse request goes at once. The router's shadow
  copies use this with a long wait: nobody waits for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from router.dataplane.adaptive import AdaptiveWait

__all__ = ["ArmCall", "HopBatcher"]

# (version, batch, timeout_s) -> probabilities: one call to one version. The router
# replica's call to a handle is one; a HopBatcher, which merges them, is one too.
ArmCall = Callable[[str, np.ndarray, float], Awaitable[np.ndarray]]


@dataclass
class _Group:
    items: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = field(default_factory=list)
    rows: int = 0
    handle: asyncio.TimerHandle | asyncio.Handle | None = None
    timeout_s: float = 0.0
    opened: float = 0.0  # loop time of the first request: its timeout runs from here


class HopBatcher:
    def __init__(
        self,
        call: ArmCall,
        *,
        max_rows: int = 64,
        wait_s: float = 0.0,
        adaptive: bool = True,
        max_in_flight: Callable[[str], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._call = call
        self.clock = clock  # the adaptive wait's clock (tests pass their loop's virtual time)
        self.max_rows = max_rows
        self.wait_s = wait_s
        self.adaptive = adaptive
        self.max_in_flight = max_in_flight
        self._waits: dict[str, AdaptiveWait] = {}
        self._groups: dict[str, _Group] = {}
        self._in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # merged calls sent
        self.requests = 0  # calls received
        self.call_s = 0.0  # summed wall time of the merged calls (send to answer)

    def in_flight(self, version: str) -> int:
        return self._in_flight.get(version, 0)

    def _busy(self, version: str) -> bool:
        assert self.max_in_flight is not None
        return self.in_flight(version) >= max(1, self.max_in_flight(version))

    async def __call__(self, version: str, batch: np.ndarray, timeout_s: float) -> np.ndarray:
        if len(batch) >= self.max_rows:  # already a full batch: nothing to gain by waiting
            self.requests += 1
            self.calls += 1
            return await self._call(version, batch, timeout_s)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        group = self._groups.get(version)
        if group is None:
            group = self._groups[version] = _Group(timeout_s=timeout_s, opened=loop.time())
        elif group.rows + len(batch) > self.max_rows:
            self._flush(version)
            group = self._groups[version] = _Group(timeout_s=timeout_s, opened=loop.time())
        group.items.append((batch, fut))
        group.rows += len(batch)
        self.requests += 1
        if group.rows >= self.max_rows:
            self._flush(version)
        elif group.handle is None:
            wait_s = self._hold_s(version)
            if wait_s > 0:
                group.handle = loop.call_later(wait_s, self._flush, version)
            else:
                group.handle = loop.call_soon(self._flush, version)
        return await fut

    def _hold_s(self, version: str) -> float:
        """How long a new group may wait before it goes."""
        if self.max_in_flight is not None:
            return self.wait_s if self._busy(version) else 0.0
        if self.wait_s <= 0:
            return 0.0
        pacer = self._waits.get(version)
        if pacer is None:
            pacer = self._waits[version] = AdaptiveWait(self.wait_s, enabled=self.adaptive,
                                                        clock=self.clock)
        return pacer.arrival()

    def _flush(self, version: str) -> None:
        group = self._groups.pop(version, None)
        if group is None or not group.items:
            return
        if group.handle is not None:
            group.handle.cancel()
        self._in_flight[version] = self._in_flight.get(version, 0) + 1
        task = asyncio.get_running_loop().create_task(self._send(version, group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, version: str, group: _Group) -> None:
        started = time.perf_counter()
        try:
            await self._send_group(version, group)
        finally:
            self.call_s += time.perf_counter() - started
            self._in_flight[version] -= 1
            # Gated: the group that waited for this call goes now.
            if self.max_in_flight is not None and version in self._groups \
                    and not self._busy(version):
                self._flush(version)

    async def _send_group(self, version: str, group: _Group) -> None:
        items = [(b, f) for b, f in group.items if not f.done()]  # skip cancelled callers
        if not items:
            return
        self.calls += 1
        merged = items[0][0] if len(items) == 1 else np.concatenate([b for b, _ in items])
        held = asyncio.get_running_loop().time() - group.opened
        try:
            out = await self._call(version, merged, max(group.timeout_s - held, 0.0))
        except BaseException as exc:  # noqa: BLE001 - every caller sees the failure
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        start = 0
        for batch, fut in items:
            end = start + len(batch)
            if not fut.done():
                fut.set_result(out[start:end])
            start = end
