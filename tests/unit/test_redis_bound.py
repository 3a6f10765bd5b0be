"""The cache's memory is bounded (issue 20, item 14): the redis-server `abserve up` starts has a
maxmemory and an evicting policy, a run past the bound keeps Redis within it while requests go on
being answered (recent rows hit, evicted ones miss), and a Redis of the user's own that would not
evict is warned about. A real redis-server on a free loopback port; no Ray."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from router.dataplane.cache import PredictionCache, RedisCache, cache_key
from serve.cli import deploy
from serve.config import parse_config
from serve.local import free_port, stop_pid
from serve.local.redis_server import eviction_warning, start_redis

BOUND_MB = 2


@pytest.fixture
def bounded(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = start_redis(port, tmp_path / "redis.log", maxmemory_mb=BOUND_MB,
                       eviction="allkeys-lru")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_pid(proc.pid)


@pytest.fixture
def unbounded(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = start_redis(port, tmp_path / "redis.log")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_pid(proc.pid)


def test_the_managed_defaults_bound_the_cache() -> None:
    cache = parse_config({"experiment": {"name": "e", "baseline": "v1",
                                         "arms": [{"version": "v1", "weight": 100}]},
                          "models": [{"version": "v1"}]}).cache
    assert cache.managed_maxmemory_mb == 512 and cache.managed_eviction == "allkeys-lru"


def test_a_run_past_the_bound_stays_within_it_and_keeps_answering(bounded: str) -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(12_000, 50, 9)).astype(np.float32)
    probs = rng.dirichlet(np.ones(8), size=len(rows)).astype(np.float32)
    keys = [cache_key("activity", "v1", r) for r in rows]

    async def run() -> tuple[list, list]:
        cache = PredictionCache(RedisCache(bounded), width=8, timeout_s=2.0)
        for start in range(0, len(keys), 500):  # ~12k rows of ~490 bytes: ~3 times the bound
            cache.set_many_background(list(zip(keys[start:start + 500],
                                               probs[start:start + 500].tolist(), strict=True)))
            await asyncio.sleep(0.01)
        for _ in range(200):
            if not cache._pending:
                break
            await asyncio.sleep(0.05)
        recent = await cache.get_many(keys[-200:])
        old = await cache.get_many(keys[:200])
        assert cache.backend is not None
        await cache.backend.close()
        return recent.values, old.values

    recent, old = asyncio.run(run())
    client = redis.Redis.from_url(bounded, decode_responses=True)
    memory = client.info("memory")
    stats = client.info("stats")
    client.close()
    assert memory["maxmemory"] == BOUND_MB * 2**20
    # Within the bound (Redis evicts before a write would pass it; a little slack for the
    # allocator's rounding), and it did have to evict.
    assert memory["used_memory"] <= BOUND_MB * 2**20 * 1.1, memory["used_memory"]
    assert stats["evicted_keys"] > 0
    hits = [v for v in recent if v is not None]
    assert len(hits) >= 150, "the newest rows should still be cached"
    np.testing.assert_allclose(hits[-1], probs[-1], rtol=1e-6)
    assert sum(v is None for v in old) > 100, "the oldest rows should have been evicted"


def test_a_redis_that_would_not_evict_is_warned_about(
    unbounded: str, bounded: str, capsys: pytest.CaptureFixture[str]
) -> None:
    deploy._warn_if_redis_would_not_evict(unbounded)
    err = capsys.readouterr().err
    assert "maxmemory is 0 (unbounded)" in err and "allkeys-lru" in err
    deploy._warn_if_redis_would_not_evict(bounded)
    assert capsys.readouterr().err == ""
    client = redis.Redis.from_url(unbounded)
    client.config_set("maxmemory", "64mb")  # bounded, but full it would refuse writes
    client.close()
    deploy._warn_if_redis_would_not_evict(unbounded)
    assert "noeviction: past 64 MB every cache write fails" in capsys.readouterr().err
    deploy._warn_if_redis_would_not_evict(f"redis://127.0.0.1:{free_port()}/0")  # nobody there
    assert "could not check" in capsys.readouterr().err


def test_eviction_warning_reads_config_get() -> None:
    assert eviction_warning({"maxmemory": "0", "maxmemory-policy": "allkeys-lru"})
    assert eviction_warning({"maxmemory": "1048576", "maxmemory-policy": "noeviction"})
    assert eviction_warning({"maxmemory": "1048576", "maxmemory-policy": "volatile-ttl"}) is None
