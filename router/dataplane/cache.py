"""Prediction cache: canonical keys, JSON values, Redis with bypass on failure.

Keys are ``abserve:<model>:<version>:<digest>``, the digest a blake2b of the
input's shape and its float32 bytes (float64 for tabular records), so ``1``,
``1.0`` and ``1e0`` (and ``-0.0``) give one key: the key is of the numbers the
model sees, not of the JSON text. Values are JSON (the answer's outputs:
probabilities, a score or values), never pickle;
anything else found under a key is counted as a decode error and ignored.

Redis is an optimisation, never a dependency: every call is bounded by
``timeout_s``; a failure or timeout is a *bypass* (the model answers), and
after a failure Redis is skipped for ``retry_after_s`` (a breaker with
threshold 1), after which one request probes it again. redis-py's pool
reconnects by itself once the server is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import numpy as np
import orjson

from router.dataplane.fallback import CircuitBreaker

__all__ = [
    "CacheBackend",
    "CacheLookup",
    "CacheStats",
    "LocalCache",
    "PredictionCache",
    "RedisCache",
    "cache_key",
    "decode_value",
    "encode_value",
    "redact_url",
]

KEY_PREFIX = "abserve"


def cache_key(model: str, version: str, instance: np.ndarray, prefix: str = KEY_PREFIX) -> str:
    """Key of one input instance for one model version.

    A float64 instance (a tabular model's encoded record, models/schema.py) keys on its
    float64 bytes: two records that differ only past float32's precision are two keys.
    """
    h = hashlib.blake2b(digest_size=16)
    arr: np.ndarray
    if getattr(instance, "dtype", None) == np.float64:
        arr = np.ascontiguousarray(instance) + 0.0  # -0.0 -> 0.0
        h.update(b"f8")
    else:
        arr = np.ascontiguousarray(instance, dtype=np.float32) + np.float32(0.0)
    h.update(repr(arr.shape).encode())
    h.update(arr.tobytes())
    return f"{prefix}:{model}:{version}:{h.hexdigest()}"


def redact_url(url: str) -> str:
    """The URL with its password (and any password-like query value) replaced by ***.

    Every place that prints, logs or returns a Redis URL goes through this, so a
    ``redis://:secret@host`` in the config never reaches logs, errors or /stats.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        # user:password or :password keep the user; a lone userinfo may be a secret too.
        netloc = f"{user}:***@{hostport}" if sep else f"***@{hostport}"
    query = "&".join(
        f"{k}=***" if k.lower() in {"password", "pass", "auth"} else f"{k}={v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def encode_value(probabilities: Sequence[float]) -> bytes:
    return orjson.dumps([float(p) for p in probabilities])


def decode_value(raw: bytes | str, width: int) -> list[float] | None:
    """The probabilities stored under a key, or None if the bytes are not ours."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if (
        not isinstance(value, list)
        or len(value) != width
        or not all(isinstance(p, int | float) and math.isfinite(p) for p in value)
    ):
        return None
    return [float(p) for p in value]


class CacheBackend(Protocol):
    async def mget(self, keys: Sequence[str]) -> list[bytes | None]: ...
    async def mset(self, items: Sequence[tuple[str, bytes]], ttl_s: int) -> None: ...
    async def close(self) -> None: ...


class RedisCache:
    """redis.asyncio with one connection pool per router replica."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 64,
        socket_timeout_s: float = 1.0,
        tls: dict[str, Any] | None = None,
    ):
        """``url`` may carry credentials (redis://user:pass@host:port/db) and be
        rediss:// (TLS); ``tls`` adds redis-py's ssl_* arguments (CA file,
        client certificate, verification) for a rediss:// URL."""
        import redis.asyncio as aioredis

        extra = dict(tls or {}) if urlsplit(url).scheme == "rediss" else {}
        self.url = redact_url(url)
        self.client = aioredis.Redis.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            health_check_interval=0,
            **extra,
        )

    def __repr__(self) -> str:  # never show the password
        return f"RedisCache({self.url!r})"

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        values: list[Any] = await self.client.mget(list(keys))
        return values

    async def mset(self, items: Sequence[tuple[str, bytes]], ttl_s: int) -> None:
        if len(items) == 1:
            await self.client.set(items[0][0], items[0][1], ex=ttl_s)
            return
        pipe = self.client.pipeline(transaction=False)
        for key, value in items:
            pipe.set(key, value, ex=ttl_s)
        await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()


class LocalCache:
    """In-process LRU with TTL, for when no Redis is configured or installed."""

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.clock = clock
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        now = self.clock()
        out: list[bytes | None] = []
        for key in keys:
            item = self._data.get(key)
            if item is None or item[0] <= now:
                if item is not None:
                    del self._data[key]
                out.append(None)
            else:
                self._data.move_to_end(key)
                out.append(item[1])
        return out

    async def mset(self, items: Sequence[tuple[str, bytes]], ttl_s: int) -> None:
        expires = self.clock() + ttl_s
        for key, value in items:
            self._data[key] = (expires, value)
            self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    async def close(self) -> None:
        self._data.clear()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bypasses: int = 0
    errors: int = 0
    decode_errors: int = 0
    writes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CacheLookup:
    """One probability list (or None for a miss) per key; ``bypassed`` if Redis was skipped."""

    values: list[list[float] | None]
    bypassed: bool


class PredictionCache:
    """The router's view of the cache: bounded time, bypass on any failure."""

    def __init__(
        self,
        backend: CacheBackend | None,
        *,
        width: int,
        ttl_s: int = 3600,
        timeout_s: float = 0.05,
        retry_after_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.width = width  # floats per value: the model's output width (models/kinds.py)
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.breaker = CircuitBreaker(threshold=1, cooldown_s=retry_after_s, clock=clock)
        self.stats = CacheStats()
        self._pending: set[asyncio.Task[Any]] = set()
        # Look-ups and writes of concurrent requests are merged: one MGET and one
        # pipeline per event-loop turn instead of one round trip per request.
        self._gets: list[tuple[Sequence[str], asyncio.Future[list[Any] | None]]] = []
        self._writes: list[tuple[str, bytes]] = []
        self.round_trips = 0

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def get_many(self, keys: Sequence[str]) -> CacheLookup:
        if self.backend is None or not self.breaker.allow():
            self.stats.bypasses += len(keys)
            return CacheLookup([None] * len(keys), bypassed=True)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any] | None] = loop.create_future()
        if not self._gets:
            loop.call_soon(self._flush_gets)
        self._gets.append((keys, fut))
        raw = await fut
        if raw is None:  # Redis failed or was too slow: the model answers
            self.stats.bypasses += len(keys)
            return CacheLookup([None] * len(keys), bypassed=True)
        values: list[list[float] | None] = []
        for item in raw:
            value = None if item is None else decode_value(item, self.width)
            if item is not None and value is None:
                self.stats.decode_errors += 1
            if value is None:
                self.stats.misses += 1
            else:
                self.stats.hits += 1
            values.append(value)
        return CacheLookup(values, bypassed=False)

    def _flush_gets(self) -> None:
        gets, self._gets = self._gets, []
        if gets:
            self._spawn(self._mget(gets))

    async def _mget(
        self, gets: list[tuple[Sequence[str], asyncio.Future[list[Any] | None]]]
    ) -> None:
        assert self.backend is not None
        keys = [k for ks, _ in gets for k in ks]
        self.round_trips += 1
        try:
            raw: list[Any] | None = await asyncio.wait_for(self.backend.mget(keys), self.timeout_s)
        except Exception:  # noqa: BLE001 - any Redis trouble is a bypass, never an error
            self.breaker.record_failure()
            self.stats.errors += 1
            raw = None
        else:
            self.breaker.record_success()
        start = 0
        for ks, fut in gets:
            if not fut.done():
                fut.set_result(None if raw is None else raw[start : start + len(ks)])
            start += len(ks)

    def set_many_background(self, items: Sequence[tuple[str, Sequence[float]]]) -> None:
        """Write without making the caller wait; failures only count."""
        if self.backend is None or not items or not self.breaker.allow():
            return
        if not self._writes:
            asyncio.get_running_loop().call_soon(self._flush_writes)
        self._writes.extend((k, encode_value(v)) for k, v in items)

    def _flush_writes(self) -> None:
        payload, self._writes = self._writes, []
        if payload:
            self._spawn(self._write(payload))

    async def _write(self, payload: list[tuple[str, bytes]]) -> None:
        assert self.backend is not None
        try:
            await asyncio.wait_for(self.backend.mset(payload, self.ttl_s), self.timeout_s * 4)
        except Exception:  # noqa: BLE001
            self.breaker.record_failure()
            self.stats.errors += 1
        else:
            self.stats.writes += len(payload)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        if self.backend is not None:
            await self.backend.close()
