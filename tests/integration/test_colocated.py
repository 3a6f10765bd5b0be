"""Colocated versions against real Ray: v1 and v4 (scikit-learn) are served inside the
router replica, v2 (torch) by its own deployment, and the answers, fallbacks and timeouts
are those of remote versions.

The app: v1 is the colocated baseline (its deployment backs its copy), v4 a colocated
candidate, v2 a remote candidate, so both directions of fallback and the baseline's
copy-to-deployment hand-over are visible from the client. Faults come from the drills'
replica class (benchmarks/faulty_model.py), which the colocated copies are built from too:
``set_colocated_fault`` reaches only the copy, ``set_fault_all`` the copy and the
deployment's replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from benchmarks.faults import _handle_loop, reach_replicas, set_fault_all
from models.activity.data import make_windows
from serve.app import ROUTER_DEPLOYMENT, model_deployment_name
from tests.integration.conftest import ServeInstance, serve_app, small_app

pytestmark = pytest.mark.integration

APP = "coloc"
PREFIX = "/coloc"
V1 = model_deployment_name("activity", "v1")
V2 = model_deployment_name("activity", "v2")
V4 = model_deployment_name("activity", "v4")
V1_TIMEOUT_MS = 600.0


@pytest.fixture(scope="module")
def url(serve_instance: ServeInstance, registry_root: str, state_dir: str) -> Iterator[str]:
    config = small_app(
        serve_instance, registry_root, state_dir, APP, ("v1", "v2", "v4"),
        {"baseline": "v1",
         "arms": [{"version": "v1", "weight": 50, "timeout_ms": V1_TIMEOUT_MS},
                  {"version": "v2", "weight": 25}, {"version": "v4", "weight": 25}],
         "timeout_ms": 5000,
         "breaker": {"failure_threshold": 3, "cooldown_s": 2}},
        models=[{"version": v, "num_cpus": 0.05} for v in ("v1", "v2", "v4")],
    )
    assert config.models[0].colocated is None  # automatic: scikit-learn is colocated
    yield from serve_app(config, serve_instance, PREFIX)


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    X, _ = make_windows(64, seed=77)
    return X


def _set_copy_fault(**fault: float) -> set[int]:
    """The fault on every router replica's copy of v1 only (not v1's own replicas)."""
    result: set[int] = _handle_loop().call(reach_replicas(
        APP, ROUTER_DEPLOYMENT, lambda h: h.set_colocated_fault.remote(V1, **fault),
        timeout_s=30, what="colocated set_fault",
    ), 35)
    return result


def _post(url: str, x: np.ndarray, version: str | None = "v1") -> httpx.Response:
    headers = {"X-Model-Version": version} if version else {}
    return httpx.post(f"{url}/predict", json={"features": x.tolist()}, headers=headers,
                      timeout=30)


def _v1_stats(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/stats", timeout=10)
    r.raise_for_status()
    return dict(r.json()["models"]["v1"])


def _copy_serves_again(url: str, x: np.ndarray) -> None:
    """After a fault, the copy's own breaker closes once a call after its cool-down works."""
    deadline = time.monotonic() + 20
    while (copy := _v1_stats(url)["colocated_copy"])["breaker"] != "closed" \
            or copy["colocated_busy"]:
        assert time.monotonic() < deadline, "the copy's breaker never closed"
        _post(url, x)
        time.sleep(0.5)


def test_v1_and_v4_are_served_by_the_router_and_v2_by_its_deployment(url: str,
                                                             windows: np.ndarray) -> None:
    before = _v1_stats(url)
    assert before["colocated_copy"]["colocated"] is True and before["colocated"] is False
    for x in windows[:10]:
        r = _post(url, x)
        assert r.status_code == 200 and r.json()["version"] == "v1", r.text
    after = _v1_stats(url)
    assert after["colocated_copy"]["calls"] - before["colocated_copy"]["calls"] >= 10
    assert after["calls"] == before["calls"]  # v1's own replica was not called
    assert _post(url, windows[0], "v2").json()["version"] == "v2"
    models = httpx.get(f"{url}/stats", timeout=10).json()["models"]
    assert "colocated_copy" not in models["v2"] and "colocated_copy" in models["v4"]


def test_colocated_and_remote_answers_are_identical(url: str, windows: np.ndarray) -> None:
    local = [_post(url, x).json()["probabilities"] for x in windows[:16]]
    before = _v1_stats(url)
    # The baseline's copy fails: v1's own replica answers the same calls.
    _set_copy_fault(error_rate=1.0)
    try:
        remote = [_post(url, x) for x in windows[:16]]
    finally:
        _set_copy_fault(error_rate=0.0)
    after = _v1_stats(url)
    assert all(r.status_code == 200 and r.json()["version"] == "v1" for r in remote)
    assert all(r.json()["fallback"] is False for r in remote)  # same version, no fallback
    assert after["calls"] > before["calls"]  # v1's replica did answer them
    assert [r.json()["probabilities"] for r in remote] == local


def test_a_hung_baseline_copy_is_backed_by_its_deployment_and_delays_no_other_arm(
    url: str, windows: np.ndarray
) -> None:
    """The baseline's copy sleeps 3 s per call: the v1 request in flight waits v1's
    timeout, then v1's replica answers it; requests that come while the copy's thread is
    held go to v1's replica at once; v2's answers are not delayed meanwhile."""
    _copy_serves_again(url, windows[40])
    before = _v1_stats(url)
    _set_copy_fault(delay_s=3.0)

    async def run() -> tuple[list[httpx.Response], list[float], list[float]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async def one(x: np.ndarray, version: str) -> tuple[httpx.Response, float]:
                started = time.perf_counter()
                r = await client.post("/predict", json={"features": x.tolist()},
                                      headers={"X-Model-Version": version})
                return r, (time.perf_counter() - started) * 1000

            first = asyncio.create_task(one(windows[0], "v1"))
            await asyncio.sleep(0.1)
            others = await asyncio.gather(*(one(x, "v2") for x in windows[1:9]))
            later = [await one(x, "v1") for x in windows[9:13]]
            hung = await first
            return ([hung[0], *[r for r, _ in later]], [hung[1], *[ms for _, ms in later]],
                    [ms for _, ms in others])

    try:
        v1_answers, v1_ms, v2_ms = asyncio.run(run())
    finally:
        _set_copy_fault(delay_s=0.0)
    # On a failure, what v1's replica and copy counted meanwhile: whether the hand-over
    # reached the replica (its calls) or the call was lost on the way.
    seen = {"ms": v1_ms, "v2_ms": v2_ms, "v1_before": before, "v1_after": _v1_stats(url)}
    assert all(r.status_code == 200 for r in v1_answers), ([r.text for r in v1_answers], seen)
    assert all(r.json()["version"] == "v1" and not r.json()["fallback"] for r in v1_answers)
    assert V1_TIMEOUT_MS <= v1_ms[0] < V1_TIMEOUT_MS + 1500, seen
    assert max(v1_ms[1:]) < 1000 and max(v2_ms) < 1000, seen


def test_a_failing_colocated_candidate_falls_back_to_the_baseline(
    url: str, windows: np.ndarray
) -> None:
    """v4's copy and replica raise on every call: as for a remote candidate, the baseline
    answers every request (fallback), the breaker opens, nothing fails."""
    set_fault_all(APP, V4, error_rate=1.0)
    try:
        answers = [_post(url, x, "v4") for x in windows[20:32]]
    finally:
        set_fault_all(APP, V4, error_rate=0.0)
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    data = [r.json() for r in answers]
    assert all(d["version"] == "v1" and d["fallback"] and d["arm"] == "v4" for d in data)
    assert {d["fallback_reason"] for d in data} <= {"error", "circuit_open"}
    assert data[-1]["fallback_reason"] == "circuit_open"


def test_a_failing_remote_candidate_falls_back_to_the_colocated_baseline(
    url: str, windows: np.ndarray
) -> None:
    _copy_serves_again(url, windows[50])  # the hung test's 3 s call has returned
    before = _v1_stats(url)["colocated_copy"]["calls"]
    set_fault_all(APP, V2, error_rate=1.0)
    try:
        answers = [_post(url, x, "v2") for x in windows[40:46]]
    finally:
        set_fault_all(APP, V2, error_rate=0.0)
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert all(r.json()["version"] == "v1" and r.json()["fallback"] for r in answers)
    assert _v1_stats(url)["colocated_copy"]["calls"] > before  # the copy answered them
