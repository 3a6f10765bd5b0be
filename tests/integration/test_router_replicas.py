"""Issue 20 item 6: an application with two router replicas, against real Serve.

What docs/experiments.md, docs/serving.md and docs/reliability.md promise, held for more than
one router replica:

- a weights change through the admin API reaches every router replica "well within 2 s"
  (each polls the controller every state.poll_interval_s);
- "every router replica assigns a key alike": a user key gets the same arm from each;
- "each router replica keeps its own breakers": a failing candidate costs
  failure_threshold failed calls per replica before each replica's circuit opens;
- single flight: identical concurrent misses are "computed once per router replica".

A request's replica is told apart by ``/stats`` (its ``replica`` id and per-arm counters):
the counters of both replicas are read before and after, and the difference says which
replica routed what. The versions are served by their own deployments only (no colocated
copy), one model replica each, so a version's ``rows`` in /stats are all its computations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from benchmarks.faults import set_fault_all
from models.activity.data import make_windows
from router.dataplane.policy import Arm, RouteContext, WeightedPolicy
from serve.app import model_deployment_name
from tests.integration.conftest import ADMIN_TOKEN, RedisServer, ServeInstance, serve_app, small_app

pytestmark = pytest.mark.integration

APP, PREFIX, EXPERIMENT = "routers2", "/routers2", "routers2"
ROUTERS = 2
THRESHOLD = 3
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Admin-User": "pytest"}


@pytest.fixture(scope="module")
def url(serve_instance: ServeInstance, registry_root: str, state_dir: str,
        redis_server: RedisServer) -> Iterator[str]:
    config = small_app(
        serve_instance, registry_root, state_dir, APP, ("v1", "v4"),
        {
            "name": EXPERIMENT,
            "baseline": "v1",
            "arms": [{"version": "v1", "weight": 50}, {"version": "v4", "weight": 50}],
            "timeout_ms": 5000,
            "breaker": {"failure_threshold": THRESHOLD, "cooldown_s": 120},
        },
        models=[{"version": "v1", "num_cpus": 0.05, "colocated": False},
                {"version": "v4", "num_cpus": 0.05, "colocated": False}],
        cache={"redis_url": redis_server.url, "ttl_s": 600, "key_prefix": "routers2"},
        router={"num_cpus": 0.1, "num_replicas": ROUTERS},
    )
    yield from serve_app(config, serve_instance, PREFIX)


def replica_stats(url: str, timeout_s: float = 20) -> dict[str, dict[str, Any]]:
    """``/stats`` of every router replica, by replica id: concurrent reads until each of
    the ROUTERS replicas has answered one (Serve's proxy picks the replica)."""

    async def read() -> dict[str, dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while len(seen) < ROUTERS:
                assert time.monotonic() < deadline, f"only replicas {sorted(seen)} answered"
                for r in await asyncio.gather(*(client.get("/stats") for _ in range(4))):
                    r.raise_for_status()
                    body = r.json()
                    seen.setdefault(body["replica"], body)
        return seen

    return asyncio.run(read())


def routed(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
           field: str = "requests") -> dict[str, dict[str, int]]:
    """Per replica, per arm: how much ``field`` grew between two reads."""
    assert set(before) == set(after), "a router replica was replaced"
    return {rep: {v: int(a[field]) - int(before[rep]["arms"][v][field])
                  for v, a in after[rep]["arms"].items()} for rep in after}


def window(seed: int) -> list[Any]:
    x, _ = make_windows(1, seed=seed)
    return np.asarray(x)[0].tolist()


def predict(url: str, seed: int, headers: dict[str, str] | None = None) -> httpx.Response:
    r = httpx.post(f"{url}/predict", json={"features": window(seed)}, headers=headers or {},
                   timeout=30)
    assert r.status_code == 200, r.text
    return r


def set_weights(url: str, weights: dict[str, float]) -> int:
    r = httpx.put(f"{url}/admin/weights", json={"weights": weights}, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return int(r.json()["revision"])


def until_revision(url: str, revision: int, limit_s: float) -> float:
    """Seconds until every router replica's /stats shows ``revision``."""
    started = time.monotonic()
    while True:
        revisions = {rep: s["revision"] for rep, s in replica_stats(url).items()}
        took = time.monotonic() - started
        if all(r >= revision for r in revisions.values()):
            return took
        assert took < limit_s, f"revision {revision} not on every replica: {revisions}"
        time.sleep(0.05)


def test_weights_reach_every_router_replica_within_2s(url: str) -> None:
    # Both replicas serve (their followers run from their first request).
    seed, deadline = 1000, time.monotonic() + 60
    while True:
        for _ in range(20):
            seed += 1
            predict(url, seed)
        stats = replica_stats(url)
        if all(sum(a["requests"] for a in s["arms"].values()) > 0 for s in stats.values()):
            break
        assert time.monotonic() < deadline, "a router replica got no request"
    for weights in ({"v1": 0, "v4": 100}, {"v1": 100, "v4": 0}):
        revision = set_weights(url, weights)
        took = until_revision(url, revision, limit_s=2.0)
        print(f"\n[routers] revision {revision} {weights} on both replicas in {took:.2f} s")
        # And they route by it: every new request, on either replica, goes to the 100 % arm.
        before = replica_stats(url)
        for _ in range(30):
            seed += 1
            predict(url, seed)
        delta = routed(before, replica_stats(url))
        only = next(v for v, w in weights.items() if w == 100)
        for rep, arms in delta.items():
            assert all(n == 0 for v, n in arms.items() if v != only), (rep, delta)
        assert sum(arms[only] for arms in delta.values()) == 30, delta


def test_a_user_key_gets_the_same_arm_from_every_replica(url: str) -> None:
    revision = set_weights(url, {"v1": 50, "v4": 50})
    until_revision(url, revision, limit_s=2.0)
    # The pure policy says where each key belongs: pick three keys for each arm.
    policy = WeightedPolicy(salt=EXPERIMENT)
    arms = (Arm("v1", 50, baseline=True), Arm("v4", 50))
    keys: dict[str, list[str]] = {"v1": [], "v4": []}
    for i in range(1000):
        key = f"user-{i}"
        arm = policy.choose(RouteContext(user_key=key), arms).version
        if len(keys[arm]) < 3:
            keys[arm].append(key)
    seed = 5000
    for arm, users in keys.items():
        for user in users:
            before, sent = replica_stats(url), 0
            while True:  # 16 requests, more if one replica has not had one of them yet
                for _ in range(16):
                    seed += 1
                    sent += 1
                    r = predict(url, seed, {"X-User-Id": user})
                    assert r.json()["arm"] == arm, (user, r.json())
                delta = routed(before, replica_stats(url))
                if all(sum(c.values()) > 0 for c in delta.values()) or sent >= 64:
                    break
            # Each replica routed some of this key's requests, all to the same arm.
            for rep, counts in delta.items():
                assert counts[arm] >= 1, (user, "replica", rep, "routed none", delta)
                assert all(n == 0 for v, n in counts.items() if v != arm), (user, delta)


def test_identical_concurrent_misses_are_computed_once_per_router_replica(url: str) -> None:
    body = orjson.dumps({"features": window(424242)})
    before = replica_stats(url)
    rows_before = int(next(iter(before.values()))["models"]["v1"]["rows"])

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30,
                                     limits=httpx.Limits(max_connections=50)) as client:
            return list(await asyncio.gather(*(
                client.post("/predict", content=body, headers={
                    "content-type": "application/json", "X-Model-Version": "v1"})
                for _ in range(50))))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    assert len({orjson.dumps(r.json()["probabilities"]) for r in responses}) == 1
    after = replica_stats(url)
    computed = int(next(iter(after.values()))["models"]["v1"]["rows"]) - rows_before
    joins = {rep: after[rep]["single_flight_joins"] - before[rep]["single_flight_joins"]
             for rep in after}
    hits = sum(r.headers["X-Cache"] == "HIT" for r in responses)
    per_replica = {rep: d["v1"] for rep, d in routed(before, after).items()}
    print(f"\n[routers] 50 identical: computed {computed}, joins {joins}, hits {hits}, "
          f"per replica {per_replica}")
    assert sum(per_replica.values()) == 50
    # At most one computation per router replica that had a request to answer; every
    # other request joined its replica's flight or found the cache written.
    assert 1 <= computed <= sum(n > 0 for n in per_replica.values()), computed
    assert computed + sum(joins.values()) + hits == 50, (computed, joins, hits)


def test_each_router_replica_keeps_its_own_breaker(url: str) -> None:
    """The candidate raises on every call: each replica opens its own circuit after
    THRESHOLD failed calls of its own, so the candidate sees THRESHOLD x ROUTERS failures."""
    set_fault_all(APP, model_deployment_name("activity", "v4"), error_rate=1.0)
    before = replica_stats(url)
    reasons: list[str] = []
    seed = 9000
    try:
        deadline = time.monotonic() + 90
        while True:
            seed += 1
            r = predict(url, seed, {"X-Model-Version": "v4"})  # unique input: never cached
            body = r.json()
            assert body["fallback"] is True and body["version"] == "v1", body
            reasons.append(body["fallback_reason"])
            now = replica_stats(url)
            states = {rep: s["breakers"]["v4"] for rep, s in now.items()}
            failures = routed(before, now, "failures")
            for rep, state in states.items():
                # Open exactly when this replica itself saw THRESHOLD failures.
                assert (state == "open") == (failures[rep]["v4"] >= THRESHOLD), (
                    states, failures)
            if all(s == "open" for s in states.values()):
                break
            assert time.monotonic() < deadline, (states, failures)
        for _ in range(10):  # now every replica refuses at once
            seed += 1
            reasons.append(predict(url, seed, {"X-Model-Version": "v4"}).json()["fallback_reason"])
    finally:
        set_fault_all(APP, model_deployment_name("activity", "v4"), error_rate=0.0)
    after = replica_stats(url)
    failures = routed(before, after, "failures")
    rejected = routed(before, after, "rejected_by_breaker")
    print(f"\n[routers] breaker: failures {failures}, rejected {rejected}, "
          f"reasons {dict((x, reasons.count(x)) for x in set(reasons))}")
    assert {rep: f["v4"] for rep, f in failures.items()} == {rep: THRESHOLD for rep in after}
    assert reasons.count("error") == THRESHOLD * ROUTERS, reasons
    assert set(reasons) == {"error", "circuit_open"}, reasons
    assert sum(r["v4"] for r in rejected.values()) == reasons.count("circuit_open")
