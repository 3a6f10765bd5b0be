"""Batching across the router-to-model hop. Pure asyncio, no Ray.

Every call through a DeploymentHandle costs the router a fixed amount of
work (serialisation, replica choice, an RPC) whatever the batch size. The
``HopBatcher`` gathers the calls for one version that arrive together and
sends them as one call, then hands each caller its own rows back, so that
fixed cost is shared by every request in the group.

A group is flushed when it reaches ``max_rows`` or after ``wait_s``; with
``wait_s == 0`` it is flushed on the next turn of the event loop, which
merges exactly the requests that were being handled concurrently and adds no
waiting time to a lone request. With ``adaptive`` (the default) a group waits
``wait_s`` only while that version's requests arrive closer together than it
(``AdaptiveWait``), so a sparse request is sent on the next loop turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from router.adaptive import AdaptiveWait

__all__ = ["HopBatcher"]

ModelCall = Callable[[str, np.ndarray, float], Awaitable[np.ndarray]]


@dataclass
class _Group:
    items: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = field(default_factory=list)
    rows: int = 0
    handle: asyncio.TimerHandle | asyncio.Handle | None = None


class HopBatcher:
    def __init__(
        self, call: ModelCall, *, max_rows: int = 64, wait_s: float = 0.0, adaptive: bool = True
    ) -> None:
        self._call = call
        self.max_rows = max_rows
        self.wait_s = wait_s
        self.adaptive = adaptive
        self._waits: dict[str, AdaptiveWait] = {}
        self._groups: dict[str, _Group] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # merged calls sent
        self.requests = 0  # calls received

    async def __call__(self, version: str, batch: np.ndarray, timeout_s: float) -> np.ndarray:
        if len(batch) >= self.max_rows:  # already a full batch: nothing to gain by waiting
            self.requests += 1
            self.calls += 1
            return await self._call(version, batch, timeout_s)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        wait_s = self.wait_s
        if wait_s > 0:
            pacer = self._waits.get(version)
            if pacer is None:
                pacer = self._waits[version] = AdaptiveWait(wait_s, enabled=self.adaptive)
            wait_s = pacer.arrival()
        group = self._groups.get(version)
        if group is None:
            group = self._groups[version] = _Group()
        elif group.rows + len(batch) > self.max_rows:
            self._flush(version, timeout_s)
            group = self._groups[version] = _Group()
        group.items.append((batch, fut))
        group.rows += len(batch)
        self.requests += 1
        if group.rows >= self.max_rows:
            self._flush(version, timeout_s)
        elif group.handle is None:
            if wait_s > 0:
                group.handle = loop.call_later(wait_s, self._flush, version, timeout_s)
            else:
                group.handle = loop.call_soon(self._flush, version, timeout_s)
        return await fut

    def _flush(self, version: str, timeout_s: float) -> None:
        group = self._groups.pop(version, None)
        if group is None or not group.items:
            return
        if group.handle is not None:
            group.handle.cancel()
        task = asyncio.get_running_loop().create_task(self._send(version, group, timeout_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, version: str, group: _Group, timeout_s: float) -> None:
        items = [(b, f) for b, f in group.items if not f.done()]  # skip cancelled callers
        if not items:
            return
        self.calls += 1
        merged = items[0][0] if len(items) == 1 else np.concatenate([b for b, _ in items])
        try:
            out = await self._call(version, merged, timeout_s)
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
