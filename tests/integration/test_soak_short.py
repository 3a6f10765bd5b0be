"""Issue 20 item 10: the soak's bounds measured in a short soak, in the suite.

`abserve soak` (benchmarks/soak.py) holds the router replica's RSS growth (< 10 %), its open
file descriptors (growth < 50) and Redis' key count (the TTL's bound, ``key_bound``) over
a long run. Here the same application (the soak's own config: v1 baseline, v2 candidate
x2, a short cache TTL) runs on the session cluster with its own redis-server, under the
soak's fixed-rate load for SOAK_S seconds; the router replica's RSS and fds are read from
/proc/<its pid> (its PID from /stats), Redis' DBSIZE alongside, and the verdict is the
soak's own ``evaluate``. No faults: this is the bounds, the drills are elsewhere.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from benchmarks.faultload import FaultLoad, summarize
from benchmarks.soak import (
    REPEAT_POOL,
    Sample,
    SoakOptions,
    _config,
    _proc_fds,
    _proc_rss_mb,
    evaluate,
    key_bound,
)
from serve.local import free_port
from tests.integration.conftest import RedisServer, ServeInstance, serve_app

pytestmark = pytest.mark.integration

PREFIX = "/soak-short"
SOAK_S = float(os.environ.get("ABSERVE_SOAK_SHORT_S", "40"))
RATE = 20.0
TTL_S = 10  # short, so that the run outlives it several times and expiry must hold keys
SAMPLE_S = 2.0


@pytest.fixture(scope="module")
def soak_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Its own redis-server: DBSIZE counts this soak's keys only."""
    server = RedisServer(free_port(), None, tmp_path_factory.mktemp("soak-redis") / "redis.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def url(serve_instance: ServeInstance, registry_root: str, state_dir: str,
        soak_redis: RedisServer) -> Iterator[str]:
    config = _config(registry_root, soak_redis.url, serve_instance.http_port,
                     os.path.join(state_dir, "soak-short"), TTL_S)
    yield from serve_app(config, serve_instance, PREFIX)


def test_short_soak_holds_the_soaks_bounds(url: str, soak_redis: RedisServer) -> None:
    opts = replace(SoakOptions(), duration_s=SOAK_S, rate=RATE, ttl_s=TTL_S)
    router_pid = int(httpx.get(f"{url}/stats", timeout=30).json()["pid"])
    assert os.path.exists(f"/proc/{router_pid}"), "the router replica is not on this host"
    redis = soak_redis.client()

    def keys() -> int | None:
        try:
            return int(redis.dbsize())
        except Exception:  # noqa: BLE001 - a missed sample shows as None, as in the soak
            return None

    load = FaultLoad(url, rate=opts.rate, duration_s=opts.duration_s,
                     repeat_share=opts.repeat_share, repeat_pool=REPEAT_POOL, seed=7,
                     tag_prefix="soak-short", timeout_s=10.0).start()
    samples: list[Sample] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(Sample(round(load.elapsed(), 1), _proc_rss_mb(router_pid),
                                  _proc_fds(router_pid), keys()))
            stop.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        records = load.join(timeout=opts.duration_s + 60)
    finally:
        stop.set()
        sampler.join(timeout=10)
    samples.append(Sample(round(load.elapsed(), 1), _proc_rss_mb(router_pid),
                          _proc_fds(router_pid), keys()))
    summary = summarize(records, window_s=10.0)
    criteria = evaluate(summary, samples, opts, opts.duration_s)
    print(f"\n[soak-short] {summary['requests']} requests, {summary['statuses']}, "
          f"cache {summary['cache']}, key bound {key_bound(RATE, opts.repeat_share, TTL_S)}")
    for s in samples:
        print(f"  t={s.t:5.1f} s  rss {s.rss_mb} MB  fds {s.fds}  keys {s.redis_keys}")
    for c in criteria:
        print(f"  {'held' if c.held else 'FAILED'}: {c.name} {c.limit}: {c.measured}")
    # The run was a real one: about the rate's requests, the TTL outlived several times.
    assert summary["requests"] >= 0.9 * RATE * SOAK_S, summary["requests"]
    assert len(samples) >= SOAK_S / SAMPLE_S, len(samples)
    assert all(s.rss_mb and s.fds and s.redis_keys is not None for s in samples), samples
    assert [c.name for c in criteria if not c.held] == [], criteria
    # Keys do expire: the last samples stay near what one TTL of unique inputs writes,
    # below what the whole run wrote.
    unique_written = summary["requests"] * (1 - opts.repeat_share)
    assert samples[-1].redis_keys is not None
    assert samples[-1].redis_keys < 0.75 * unique_written, (samples[-1], unique_written)
