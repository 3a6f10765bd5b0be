"""Issue 5, item 8: overload at 4x capacity, shed fast with Retry-After, recover.

Capacity is measured first (closed loop, as many clients as the router admits),
then 4x that rate is offered open loop (requests sent on schedule whatever the
server does) for OVERLOAD_S seconds, then a quarter of capacity. Every answer is
200, or a rejection (503/429) carrying Retry-After and returned fast; no socket
errors; no replica restarted; all 200 again within 10 s of the load dropping.

By default the model runs at full speed, so capacity is bounded by the router's
admission limit and the two CPU cores that the client, HAProxy, the router and
the model share: rejections must stay fast while the CPU itself is short.
ABSERVE_OVERLOAD_MODEL_DELAY_S=0.1 makes the model slow on purpose (the
replica's fault hook), as a heavy model is, so that the model bounds capacity.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from benchmarks.faults import set_fault_all
from models.activity.data import make_windows
from tests.integration.conftest import ServeInstance, serve_app, small_app

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

APP, PREFIX = "chov", "/chov"
OVERLOAD_S = float(os.environ.get("ABSERVE_OVERLOAD_S", "12"))  # the full form: 30
MAX_INFLIGHT = int(os.environ.get("ABSERVE_OVERLOAD_MAX_INFLIGHT", "4"))
PER_KEY = 2  # requests in flight per X-User-Id (the drill's load sends none)
# 0: the model at full speed, capacity bounded by the CPU everything shares here;
# 0.1: a heavy model (100 ms per call) bounds it instead. README: Reliability.
MODEL_DELAY_S = float(os.environ.get("ABSERVE_OVERLOAD_MODEL_DELAY_S", "0"))


@pytest.fixture(scope="module")
def chov(serve_instance: ServeInstance, registry_root: str, state_dir: str) -> Iterator[str]:
    config = small_app(
        serve_instance, registry_root, state_dir, APP, ("v1",),
        {"baseline": "v1", "arms": [{"version": "v1", "weight": 100}], "timeout_ms": 10_000},
        # v1 remote: with v1 colocated, the router also computes it, and on 2 cores the shed
        # answers' p99 under 4x overload was 630 ms in one CI run (docs/serving.md, issue 15).
        models=[{"version": "v1", "num_cpus": 0.1, "colocated": False}],
        router={"num_cpus": 0.1, "max_inflight": MAX_INFLIGHT, "max_ongoing_requests": 256,
                "max_queued_requests": 256, "retry_after_s": 1,
                "max_inflight_per_key": PER_KEY},
    )
    urls = serve_app(config, serve_instance, PREFIX)
    url = next(urls)
    if MODEL_DELAY_S:
        set_fault_all(APP, "activity-v1", delay_s=MODEL_DELAY_S)
    yield url
    next(urls, None)


@dataclass
class Outcome:
    sent_at: float
    status: int  # 0: socket error or timeout
    latency_ms: float
    retry_after: str | None = None
    error: str | None = None
    service_ms: float = 0.0  # from the moment it was written to the socket


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)

    def by(self, pred: Any) -> list[Outcome]:
        return [o for o in self.outcomes if pred(o)]


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   head: bytes, body: bytes) -> tuple[int, str | None]:
    writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length, chunked, retry_after = -1, False, None
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"retry-after":
            retry_after = value.strip().decode()
    if chunked:
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    elif length >= 0:
        await reader.readexactly(length)
    else:
        raise ValueError(f"no length in a keep-alive response: {status_line!r}")
    return status, retry_after


async def _open_loop(url: str, bodies: list[bytes], rate: float, duration_s: float,
                     run: Run, max_connections: int = 512, timeout_s: float = 10.0) -> None:
    """Send at ``rate`` per second on schedule; each latency runs from its scheduled time."""
    host, port = "127.0.0.1", int(url.split(":")[2].split("/")[0])
    path = "/" + url.split("/", 3)[3] + "/predict"
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: ").encode()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    slots = asyncio.Semaphore(max_connections)
    start = time.perf_counter() + 0.05
    n = int(rate * duration_s)

    async def one(i: int) -> None:
        due = start + i / rate
        async with slots:
            conn = idle.pop() if idle else None
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                written = time.perf_counter()
                status, retry_after = await asyncio.wait_for(
                    _request(*conn, head, bodies[i % len(bodies)]), timeout_s)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                if conn is not None:
                    conn[1].close()
                run.outcomes.append(
                    Outcome(due, 0, (time.perf_counter() - due) * 1000, error=repr(exc)[:200]))
                return
            idle.append(conn)
        now = time.perf_counter()
        run.outcomes.append(Outcome(due, status, (now - due) * 1000, retry_after,
                                    service_ms=(now - written) * 1000))

    tasks = []
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()


async def _closed_loop(url: str, bodies: list[bytes], clients: int, duration_s: float) -> int:
    """Requests answered 200 by ``clients`` back-to-back clients in ``duration_s``."""
    done = 0
    stop = time.monotonic() + duration_s
    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 headers={"content-type": "application/json"}) as client:

        async def loop(k: int) -> None:
            nonlocal done
            i = k
            while time.monotonic() < stop:
                r = await client.post("/predict", content=bodies[i % len(bodies)])
                assert r.status_code == 200, r.text
                done += 1
                i += clients

        await asyncio.gather(*(loop(k) for k in range(clients)))
    return done


def _pids(url: str) -> tuple[int, dict[str, int]]:
    stats = httpx.get(f"{url}/stats", timeout=10).json()
    return stats["pid"], {v: s["pid"] for v, s in stats["models"].items()}


def test_4x_overload_is_shed_fast_with_retry_after_and_recovers(chov: str) -> None:
    x, _ = make_windows(400, seed=11)
    bodies = [orjson.dumps({"features": w.tolist()}) for w in x.astype(np.float32)]
    pids_before = _pids(chov)
    asyncio.run(_closed_loop(chov, bodies, MAX_INFLIGHT, 1.0))  # warm-up
    measure_s = 3.0
    capacity = asyncio.run(_closed_loop(chov, bodies, MAX_INFLIGHT, measure_s)) / measure_s
    offered = 4 * capacity

    overload, after = Run(), Run()

    async def drive() -> float:
        await _open_loop(chov, bodies, offered, OVERLOAD_S, overload)
        dropped_at = time.perf_counter()
        await _open_loop(chov, bodies, capacity / 4, 12.0, after)
        return dropped_at

    # The load generator shares the two cores and this process's heap: a full GC pass of
    # the test process would stall it and show up as server latency. Not while it sends.
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        dropped_at = asyncio.run(drive())
    finally:
        gc.enable()
        gc.unfreeze()
    stats = httpx.get(f"{chov}/stats", timeout=10).json()["admission"]
    ok = overload.by(lambda o: o.status == 200)
    shed = overload.by(lambda o: o.status in (429, 503))
    other = overload.by(lambda o: o.status not in (200, 429, 503))
    lat = sorted(o.latency_ms for o in shed)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")
    bad_after = after.by(lambda o: o.status != 200)
    recovery_s = max((o.sent_at - dropped_at for o in bad_after), default=0.0)
    figures = {
        "capacity_rps": round(capacity, 1), "offered_rps": round(offered, 1),
        "sent": len(overload.outcomes), "ok": len(ok), "shed": len(shed),
        "other": {o.status for o in other}, "socket_errors": sum(o.status == 0 for o in other),
        "errors": sorted({o.error for o in other if o.error})[:3],
        "shed_p50_ms": round(lat[len(lat) // 2], 2) if lat else None,
        "shed_p99_ms": round(p99, 2), "ok_p99_ms": round(sorted(
            o.latency_ms for o in ok)[int(0.99 * len(ok))], 1) if ok else None,
        "recovery_s": round(recovery_s, 2), "router_admission": stats,
        "shed_service_p99_ms": round(sorted(o.service_ms for o in shed)[
            int(0.99 * len(shed))], 2) if shed else None,
        "after_bad": [(round(o.sent_at - dropped_at, 2), o.status) for o in bad_after][:12],
        "after_n": len(after.outcomes),
    }
    print("overload figures:", figures)
    assert not other, figures  # no socket errors, no 5xx but the shedding 503s
    assert shed, figures  # 4x capacity must be shed, not queued
    # ... by the router's own admission limit (not only by Serve's queue behind it)
    assert stats["shed_overload"] > 0 and stats["peak_inflight"] <= MAX_INFLIGHT, figures
    assert all(o.retry_after and o.retry_after.isdigit() for o in shed), figures
    # The rejection path: from the request on the wire to its answer (the client's own
    # lateness on these shared cores is reported as shed_p99_ms, not judged).
    assert figures["shed_service_p99_ms"] <= 100.0, figures
    assert recovery_s <= 10.0, figures
    assert all(o.status == 200 for o in after.outcomes if o.sent_at - dropped_at > 10.0), figures
    assert _pids(chov) == pids_before, "a replica restarted under overload"


def test_one_greedy_user_key_gets_429_with_retry_after_others_are_served(chov: str) -> None:
    """router.max_inflight_per_key: a key over its share is refused; another key is not."""
    x, _ = make_windows(12, seed=12)
    bodies = [orjson.dumps({"features": w.tolist()}) for w in x.astype(np.float32)]
    slow_s = 0.5  # every admitted request stays in flight long enough to overlap

    async def burst() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=chov, timeout=30) as client:
            def post(i: int, key: str) -> Any:
                return client.post("/predict", content=bodies[i], headers={
                    "content-type": "application/json", "X-User-Id": key})
            greedy = [asyncio.ensure_future(post(i, "greedy")) for i in range(8)]
            await asyncio.sleep(0.1)  # the greedy ones are in (or refused) first
            other = await post(10, "modest")
            return list(await asyncio.gather(*greedy)), other

    set_fault_all(APP, "activity-v1", delay_s=slow_s)
    try:
        before = httpx.get(f"{chov}/stats", timeout=10).json()["admission"]["shed_per_key"]
        greedy, other = asyncio.run(burst())
        after = httpx.get(f"{chov}/stats", timeout=10).json()["admission"]["shed_per_key"]
    finally:
        set_fault_all(APP, "activity-v1", delay_s=MODEL_DELAY_S)
    statuses = sorted(r.status_code for r in greedy)
    assert statuses == [200] * PER_KEY + [429] * (8 - PER_KEY), statuses
    for r in greedy:
        if r.status_code == 429:
            assert r.headers["Retry-After"] == "1"
            assert r.json()["code"] == "too_many_requests"
    assert other.status_code == 200, other.text
    assert after - before == 8 - PER_KEY
