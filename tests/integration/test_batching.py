"""Dynamic batching, counted: in the model replica and across the router-to-model hop."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest

from models.activity.data import make_windows
from serve.app import model_deployment_name
from tests.integration.conftest import APP, ServeInstance


def _handle(version: str) -> Any:
    from ray import serve

    return serve.get_deployment_handle(model_deployment_name("activity", version), APP)


async def _burst(url: str, xs: np.ndarray, version: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(xs))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(client.post("/predict", json={"features": x.tolist()},
                          headers={"X-Model-Version": version}) for x in xs)
        )


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_concurrent_requests_share_model_calls(
    app: Any, serve_instance: ServeInstance, version: str
) -> None:
    n = 48
    xs, _ = make_windows(n, seed=900 + int(version[1:]))
    xs = xs + 11.0  # unique inputs nobody else sends: all cache misses
    handle = _handle(version)

    def model_stats() -> dict[str, Any]:
        """The backend's calls and rows: the router's colocated copy's (v1, scikit-learn,
        by default) or the version's replica's."""
        copy = httpx.get(f"{serve_instance.url}/stats").json()["models"][version].get(
            "colocated_copy")
        return dict(copy) if copy else dict(handle.stats.remote().result())

    before = model_stats()
    hop_before = httpx.get(f"{serve_instance.url}/stats").json()["hop_batching"]
    responses = asyncio.run(_burst(serve_instance.url, xs, version))
    after = model_stats()
    hop_after = httpx.get(f"{serve_instance.url}/stats").json()["hop_batching"]
    assert ("colocated_copy" in httpx.get(f"{serve_instance.url}/stats").json()["models"][
        version]) == (version == "v1")
    assert [r.status_code for r in responses] == [200] * n
    # Computed, not cached. BYPASS is a miss whose Redis look-up overran cache.timeout_ms
    # (50 ms), which a preceding test's teardown on these two cores can cause.
    assert all(r.headers["X-Cache"] in ("MISS", "BYPASS") for r in responses)
    model_calls = after["calls"] - before["calls"]
    assert after["rows"] - before["rows"] == n
    hop_calls = hop_after["calls"] - hop_before["calls"]
    assert hop_after["requests"] - hop_before["requests"] == n
    print(f"{version}: {n} requests, {hop_calls} router-to-model calls, {model_calls} backend")
    # The design: one call out per replica (in_flight_limit 1), every request arriving
    # meanwhile joins the next call. So the backend, fed only by this router, makes at
    # most as many calls as the router sends (its @serve.batch may merge them further),
    # and the 48 requests, arriving together, share calls: at least 4 per call on average
    # (one call per request would be 48; the first goes alone, the rest gather).
    assert 1 <= model_calls <= hop_calls, (model_calls, hop_calls)
    assert hop_calls <= n // 4, f"{n} requests took {hop_calls} router-to-model calls"
    # The router found the version's replica count in its Serve handle (a private
    # field in Ray 2.60; None here would mean it moved) and gates on it.
    assert hop_after["running_replicas"][version] == 1, hop_after
    assert hop_after["in_flight_limit"][version] == 1, hop_after
    # Each caller got its own answer: the same as that input predicted alone.
    alone = handle.predict.remote(xs.astype(np.float32)).result()
    for i, r in enumerate(responses):
        got = np.asarray(list(r.json()["probabilities"].values()))
        np.testing.assert_allclose(got, alone[i], atol=1e-4)


def test_a_bad_instance_fails_only_its_own_call(app: Any) -> None:
    from serve.errors import InvalidInput

    handle = _handle("v1")
    good, _ = make_windows(6, seed=77)
    bad = np.zeros((1, 50, 8), np.float32)
    calls = [handle.predict.remote(good[i : i + 1]) for i in range(3)]
    calls.append(handle.predict.remote(bad))
    calls += [handle.predict.remote(good[i : i + 1]) for i in range(3, 6)]
    results: list[Any] = []
    for c in calls:
        try:
            results.append(c.result())
        except InvalidInput as exc:
            results.append(exc)
    assert isinstance(results[3], InvalidInput)
    assert "expected shape" in str(results[3])
    for i, r in enumerate(results[:3] + results[4:]):
        assert isinstance(r, np.ndarray) and r.shape == (1, 8), i


def test_call_cost_measures_a_model_replica(app: Any) -> None:
    """benchmarks.call_cost: calls one at a time, the replica's CPU as the bench reads it."""
    from benchmarks.call_cost import measure
    from benchmarks.faults import _handle_loop

    batch = make_windows(2, seed=5)[0].astype(np.float32)

    async def go() -> Any:
        handle = _handle("v1")
        pid = (await handle.stats.remote())["pid"]
        return await measure(handle, pid, batch, 0.5)

    # On the one loop the tests' async handle calls share (handles are cached per app).
    cost = _handle_loop().call(go(), 60)
    assert cost.calls_per_s > 5, cost
    assert 0 < cost.cpu_ms_per_call < 1000 and cost.latency_ms > 0, cost
