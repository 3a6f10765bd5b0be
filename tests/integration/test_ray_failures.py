"""Issue 20 item 5: the fallback reasons `backpressure` and `unavailable` from Ray's own
exceptions, against real Serve (no injected reason).

- backpressure: a candidate whose one replica takes one call at a time
  (``max_ongoing_requests: 1``) and queues one more (``max_queued_requests: 1``) is made slow;
  concurrent requests pinned to it overflow Serve's queue, Serve raises ``BackPressureError``
  in the router's handle call, and the baseline answers each with reason ``backpressure``.
- unavailable: a slow candidate's replica process is SIGKILLed while it holds calls; the
  router's handle calls fail with Ray's actor-death errors, and the baseline answers each
  with reason ``unavailable``.

Each time the router's own counters (``/stats`` fallbacks per arm, and the
``abserve_fallbacks`` metric by reason on Ray's export port) must agree with what the
clients were told. The breaker is set out of reach (failure_threshold 1000) so that every
failure shows its own reason, never ``circuit_open``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from benchmarks.faults import deployment_running, kill_pids, replica_pids, wait_for
from benchmarks.runner import HandleLoop
from models.activity.data import make_windows
from serve.app import model_deployment_name
from tests.integration.conftest import ServeInstance, serve_app, small_app

pytestmark = pytest.mark.integration

APP, PREFIX, EXPERIMENT = "rayfail", "/rayfail", "rayfail"
BUSY = "v4"  # the backpressured candidate: one call at a time, one queued
DYING = "v9"  # the candidate whose replica is killed
BUSY_DEPLOYMENT = model_deployment_name("activity", BUSY)
DYING_DEPLOYMENT = model_deployment_name("activity", DYING)
SLOW_S = 2.0


@pytest.fixture(scope="module")
def url(serve_instance: ServeInstance, registry_root: str, state_dir: str) -> Iterator[str]:
    config = small_app(
        serve_instance, registry_root, state_dir, APP, ("v1", BUSY, DYING),
        {
            "name": EXPERIMENT,
            "baseline": "v1",
            "arms": [{"version": "v1", "weight": 100}, {"version": BUSY, "weight": 0},
                     {"version": DYING, "weight": 0}],
            "timeout_ms": 15000,  # no request may time out here: the reasons are Ray's
            "breaker": {"failure_threshold": 1000, "cooldown_s": 60},
        },
        models=[
            {"version": "v1", "num_cpus": 0.1},
            {"version": BUSY, "num_cpus": 0.05, "colocated": False,
             "max_ongoing_requests": 1, "max_queued_requests": 1},
            {"version": DYING, "num_cpus": 0.05, "colocated": False},
        ],
        # One call per request, as many out at once as come (no merging in the router):
        # Serve's own queue limit is what stops them.
        router={"num_cpus": 0.1, "batch_max_rows": 1, "batch_in_flight_per_replica": 64},
    )
    yield from serve_app(config, serve_instance, PREFIX)


@pytest.fixture(scope="module")
def handles() -> Iterator[HandleLoop]:
    loop = HandleLoop()
    yield loop
    loop.close()


def _set_delay(handles: HandleLoop, deployment: str, delay_s: float) -> int:
    """``set_fault`` on the deployment's one replica, by one handle call (several at once
    would be backpressured themselves)."""
    from ray import serve

    async def call() -> int:
        handle = serve.get_deployment_handle(deployment, APP)
        return int(await handle.set_fault.remote(delay_s=delay_s))

    pid: int = handles.call(call(), 30)
    assert replica_pids(APP, deployment) == [pid]
    return pid


def _bodies(n: int, seed: int) -> list[dict[str, Any]]:
    x, _ = make_windows(n, seed=seed)
    return [{"features": w.tolist()} for w in np.asarray(x)]


async def _pinned(url: str, version: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=64)) as client:
        return list(await asyncio.gather(*(
            client.post("/predict", json=b, headers={"X-Model-Version": version})
            for b in bodies)))


def _stats(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/stats", timeout=30)
    r.raise_for_status()
    return dict(r.json())


def _fallback_metric(metrics_port: int) -> Counter[tuple[str, str, str]]:
    """Ray's export page: abserve_fallbacks by (arm, version, reason) for this experiment,
    summed over the router's series."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
    out: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "ray_abserve_fallbacks_total" \
                    and s.labels.get("experiment") == EXPERIMENT:
                out[(s.labels["arm"], s.labels["version"], s.labels["reason"])] += s.value
    return out


def _wait_metric(metrics_port: int, want: Counter[tuple[str, str, str]],
                 before: Counter[tuple[str, str, str]]) -> Counter[tuple[str, str, str]]:
    """The metric's growth since ``before`` once it equals ``want`` (router flush 1 s, Ray's
    export 2 s); after 40 s the last growth seen, for the assertion to show."""
    deadline = time.monotonic() + 40
    while True:
        now = _fallback_metric(metrics_port)
        grown = Counter({k: int(now[k] - before.get(k, 0)) for k in now
                         if now[k] - before.get(k, 0) > 0})
        if grown == want or time.monotonic() > deadline:
            return grown
        time.sleep(1.0)


def _told(responses: list[httpx.Response], arm: str) -> Counter[tuple[str, str, str]]:
    """What the clients were told: (arm, version that answered, reason) of each fallback."""
    out: Counter[tuple[str, str, str]] = Counter()
    for r in responses:
        assert r.status_code == 200, (r.status_code, r.text)
        body = r.json()
        assert body["arm"] == arm, body
        assert r.headers["X-Fallback"] == str(body["fallback"]).lower()
        if body["fallback"]:
            assert r.headers["X-Fallback-Reason"] == body["fallback_reason"]
            out[(arm, body["version"], body["fallback_reason"])] += 1
        else:
            assert body["version"] == arm and "X-Fallback-Reason" not in r.headers, body
    return out


def test_serve_backpressure_is_answered_by_the_baseline(
    url: str, handles: HandleLoop, serve_instance: ServeInstance
) -> None:
    """12 concurrent calls to a replica that takes 1 and queues 1: Serve refuses the rest
    with BackPressureError; each of those is answered by v1 with reason backpressure."""
    n = 12
    stats_before, metric_before = _stats(url), _fallback_metric(serve_instance.metrics_port)
    _set_delay(handles, BUSY_DEPLOYMENT, SLOW_S)
    try:
        started = time.monotonic()
        responses = asyncio.run(_pinned(url, BUSY, _bodies(n, seed=501)))
        took = time.monotonic() - started
    finally:
        _set_delay(handles, BUSY_DEPLOYMENT, 0.0)
    told = _told(responses, BUSY)
    print(f"\n[ray-failures] backpressure: {dict(told)} of {n} in {took:.1f} s")
    # Only the backpressure reason, from the baseline; the replica answered the ones it took.
    assert set(told) == {(BUSY, "v1", "backpressure")}, told
    answered_by_busy = n - told[(BUSY, "v1", "backpressure")]
    # One running and one queued at a time: at most a few got through while it was slow.
    assert 1 <= answered_by_busy <= 4, (answered_by_busy, told)
    stats_after = _stats(url)
    arm = stats_after["arms"][BUSY]
    assert arm["fallbacks"] - stats_before["arms"][BUSY]["fallbacks"] == sum(told.values())
    assert arm["failures"] - stats_before["arms"][BUSY]["failures"] == sum(told.values())
    assert stats_after["breakers"][BUSY] == "closed"
    assert _wait_metric(serve_instance.metrics_port, told, metric_before) == told


def test_killed_replica_is_unavailable_and_answered_by_the_baseline(
    url: str, handles: HandleLoop, serve_instance: ServeInstance
) -> None:
    """The candidate's one replica is SIGKILLed while it holds 6 slow calls: each of the 6
    is answered by v1 with reason unavailable (Ray's actor-death error, by the table)."""
    n = 6
    stats_before, metric_before = _stats(url), _fallback_metric(serve_instance.metrics_port)
    pid = _set_delay(handles, DYING_DEPLOYMENT, 30.0)  # longer than any wait here
    responses: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: responses.extend(asyncio.run(_pinned(url, DYING, _bodies(n, 601)))))
    sender.start()
    # The router's 6 calls are with the replica (batch_max_rows 1: one call each) once
    # its /stats counts 6 requests for the arm; then the replica dies.
    wait_for(lambda: _stats(url)["arms"][DYING]["requests"]
             - stats_before["arms"][DYING]["requests"] == n, 20, 0.2, "6 requests routed")
    time.sleep(0.5)  # the calls cross the hop
    kill_pids([pid])
    sender.join(timeout=60)
    assert not sender.is_alive(), "the clients were not answered"
    told = _told(responses, DYING)
    print(f"\n[ray-failures] unavailable: {dict(told)} of {n}")
    assert told == Counter({(DYING, "v1", "unavailable"): n}), told
    stats_after = _stats(url)
    assert stats_after["arms"][DYING]["fallbacks"] - stats_before["arms"][DYING]["fallbacks"] == n
    assert _wait_metric(serve_instance.metrics_port, told, metric_before) == told
    # Serve replaces the replica; the arm answers again, by itself.
    wait_for(lambda: deployment_running(APP, DYING_DEPLOYMENT, 1, {pid}), 60, 0.5,
             "the candidate RUNNING again")
    r = httpx.post(f"{url}/predict", json=_bodies(1, 602)[0],
                   headers={"X-Model-Version": DYING}, timeout=30)
    assert r.status_code == 200 and r.headers["X-Fallback"] == "false", (r.headers, r.text)
