from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from router.dataplane.cache import (
    LocalCache,
    PredictionCache,
    cache_key,
    decode_value,
    encode_value,
)


def test_key_is_canonical_across_json_spellings() -> None:
    a = np.asarray(orjson.loads(b"[[1, 2.5, -0.0], [3, 4, 5]]"))
    b = np.asarray(orjson.loads(b"[[1.0, 2.50, 0], [3e0, 4.0, 5.000]]"))
    assert cache_key("m", "v1", a) == cache_key("m", "v1", b)


def test_key_depends_on_model_version_values_and_shape() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    k = cache_key("m", "v1", x)
    assert k.startswith("abserve:m:v1:")
    assert k != cache_key("m", "v2", x)
    assert k != cache_key("other", "v1", x)
    assert k != cache_key("m", "v1", x.reshape(3, 2))
    y = x.copy()
    y[0, 0] = 1e-7
    assert k != cache_key("m", "v1", y)


def test_value_round_trip_and_refusal_of_foreign_bytes() -> None:
    raw = encode_value([0.25, 0.75])
    assert decode_value(raw, 2) == [0.25, 0.75]
    assert decode_value(b"\x80\x04\x95garbage", 2) is None  # a pickle header
    assert decode_value(b'{"a": 1}', 2) is None
    assert decode_value(b"[0.5]", 2) is None
    assert decode_value(b'[0.5, "x"]', 2) is None


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_local_cache_ttl_and_lru() -> None:
    clock = Clock()
    c = LocalCache(max_entries=2, clock=clock)

    async def go() -> None:
        await c.mset([("a", b"1"), ("b", b"2")], ttl_s=10)
        assert await c.mget(["a", "b", "x"]) == [b"1", b"2", None]
        await c.mset([("c", b"3")], ttl_s=10)  # evicts the least recently used: a
        assert await c.mget(["a", "c"]) == [None, b"3"]
        clock.t = 11
        assert await c.mget(["b", "c"]) == [None, None]

    asyncio.run(go())


class BrokenBackend:
    def __init__(self, delay: float = 0.0, fail: bool = True) -> None:
        self.delay, self.fail, self.calls = delay, fail, 0

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("down")
        return [None] * len(keys)

    async def mset(self, items: Sequence[tuple[str, bytes]], ttl_s: int) -> None:
        raise ConnectionError("down")

    async def close(self) -> None:
        pass


def test_failure_is_a_bypass_and_redis_is_skipped_for_a_while() -> None:
    clock = Clock()
    backend = BrokenBackend()
    cache = PredictionCache(backend, width=2, retry_after_s=1.0, clock=clock)

    async def go() -> None:
        first = await cache.get_many(["k1", "k2"])
        assert first.bypassed and first.values == [None, None]
        second = await cache.get_many(["k1"])
        assert second.bypassed and backend.calls == 1  # skipped, not retried at once
        clock.t = 1.5
        backend.fail = False
        third = await cache.get_many(["k1"])
        assert not third.bypassed and backend.calls == 2

    asyncio.run(go())
    assert cache.stats.bypasses == 3 and cache.stats.errors == 1


def test_slow_redis_costs_at_most_the_timeout() -> None:
    cache = PredictionCache(BrokenBackend(delay=5, fail=False), width=2, timeout_s=0.05)

    async def go() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        result = await cache.get_many(["k"])
        assert result.bypassed
        return loop.time() - t0

    assert asyncio.run(go()) < 0.5


def test_hits_misses_and_decode_errors_are_counted() -> None:
    backend = LocalCache()
    cache = PredictionCache(backend, width=2)

    async def go() -> None:
        await backend.mset([("good", encode_value([0.1, 0.9])), ("bad", b"\x80\x04")], 60)
        result = await cache.get_many(["good", "bad", "none"])
        assert result.values == [pytest.approx([0.1, 0.9]), None, None]
        cache.set_many_background([("new", [0.5, 0.5])])
        await asyncio.sleep(0.01)
        assert (await cache.get_many(["new"])).values == [[0.5, 0.5]]

    asyncio.run(go())
    assert cache.stats.hits == 2 and cache.stats.misses == 2 and cache.stats.decode_errors == 1


class CountingCache(LocalCache):
    def __init__(self) -> None:
        super().__init__()
        self.mgets: list[int] = []
        self.msets: list[int] = []

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        self.mgets.append(len(keys))
        return await super().mget(keys)

    async def mset(self, items: Sequence[tuple[str, bytes]], ttl_s: int) -> None:
        self.msets.append(len(items))
        await super().mset(items, ttl_s)


def test_concurrent_lookups_and_writes_share_one_round_trip() -> None:
    backend = CountingCache()
    cache = PredictionCache(backend, width=2)

    async def go() -> None:
        cache.set_many_background([("a", [0.5, 0.5])])
        cache.set_many_background([("b", [0.1, 0.9]), ("c", [1.0, 0.0])])
        await asyncio.sleep(0.01)
        results = await asyncio.gather(
            cache.get_many(["a"]), cache.get_many(["b", "x"]), cache.get_many(["c"])
        )
        assert [r.values for r in results] == [[[0.5, 0.5]], [[0.1, 0.9], None], [[1.0, 0.0]]]

    asyncio.run(go())
    assert backend.msets == [3] and backend.mgets == [4]
    assert cache.round_trips == 1
