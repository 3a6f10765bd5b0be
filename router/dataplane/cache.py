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

A ``redis+cluster://`` or ``rediss+cluster://`` URL is a Redis Cluster (redis-py's
RedisCluster): the same keys, a merged look-up split into one MGET per hash slot and
sent as one pipeline per node, the nodes concurrently (``slot_groups``/``reassemble``).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import numpy as np
import orjson

from router.dataplane.fallback import CircuitBreaker

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

__all__ = [
    "CacheBackend",
    "CacheLookup",
    "CacheStats",
    "ClusterURL",
    "LocalCache",
    "PredictionCache",
    "RedisCache",
    "cache_key",
    "decode_value",
    "encode_value",
    "parse_cluster_url",
    "reassemble",
    "redact_url",
    "slot_groups",
]

KEY_PREFIX = "abserve"
# A cluster URL's scheme and the single-server scheme redis-py parses it with.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
TLS_SCHEMES = {"rediss", "rediss+cluster"}


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


@dataclass(frozen=True)
class ClusterURL:
    """A cluster URL as redis-py takes it: ``url`` the first seed as a plain redis:// or
    rediss:// URL (credentials, database and query kept), ``seeds`` every host:port named."""

    url: str
    seeds: tuple[tuple[str, int], ...]


def parse_cluster_url(url: str) -> ClusterURL | None:
    """None for redis:// and rediss:// (one server, exactly as before); the seeds of
    ``redis+cluster://[user:password@]host:port[,host:port...][/0][?option=value]``
    (``rediss+cluster://`` for TLS). Several seeds let the client discover the cluster
    while one of them is down; a cluster has database 0 only."""
    parts = urlsplit(url)
    plain = CLUSTER_SCHEMES.get(parts.scheme)
    if plain is None:
        return None
    userinfo, at, hosts = parts.netloc.rpartition("@")
    entries = [e.strip() for e in hosts.split(",")]
    seeds: list[tuple[str, int]] = []
    for entry in entries:
        try:
            node = urlsplit(f"//{entry}")
            host, port = node.hostname, node.port or 6379
        except ValueError as exc:  # a port that is no number: say so without the password
            raise ValueError(f"{redact_url(url)}: bad host:port {entry!r}") from exc
        if not host:
            raise ValueError(f"{redact_url(url)}: a cluster URL needs host:port[,host:port...]")
        seeds.append((host, port))
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"{redact_url(url)}: a Redis Cluster has database 0 only")
    first = urlunsplit((plain, f"{userinfo}{at}{entries[0]}", parts.path, parts.query, ""))
    return ClusterURL(first, tuple(seeds))


def slot_groups(keys: Sequence[str]) -> dict[int, list[int]]:
    """The positions of ``keys`` by Redis Cluster hash slot (CRC16 of the key, or of its
    ``{hash tag}``), slots in first-seen order. A cluster refuses a multi-key command
    across slots, so a merged look-up is one MGET per slot."""
    from redis.crc import key_slot

    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key_slot(key.encode()), []).append(i)
    return groups


def reassemble(
    n: int, groups: Mapping[int, Sequence[int]], replies: Sequence[Sequence[Any]]
) -> list[Any]:
    """The per-slot replies (in ``groups``' order) back in the keys' order: ``n`` values.

    A reply of another length than its slot's keys is a ValueError (a bypass), never a
    value under the wrong key.
    """
    out: list[Any] = [None] * n
    for positions, reply in zip(groups.values(), replies, strict=True):
        for i, value in zip(positions, reply, strict=True):
            out[i] = value
    return out


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
    """redis.asyncio with one connection pool per router replica (per node of a cluster)."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 64,
        socket_timeout_s: float = 1.0,
        tls: dict[str, Any] | None = None,
    ):
        """``url`` may carry credentials (redis://user:pass@host:port/db) and be
        rediss:// (TLS), or name a Redis Cluster (redis+cluster://host:port[,host:port],
        rediss+cluster:// with TLS); ``tls`` adds redis-py's ssl_* arguments (CA file,
        client certificate, verification) for a TLS URL. ``max_connections`` is per node."""
        import redis.asyncio as aioredis
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        extra = dict(tls or {}) if urlsplit(url).scheme in TLS_SCHEMES else {}
        self.url = redact_url(url)
        options: dict[str, Any] = {
            "max_connections": max_connections,
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": socket_timeout_s,
            "health_check_interval": 0,
            **extra,
        }
        cluster = parse_cluster_url(url)
        self.cluster = cluster is not None
        self.client: Redis | RedisCluster
        if cluster is None:
            self.client = aioredis.Redis.from_url(url, **options)
        else:
            seeds = [ClusterNode(host, port) for host, port in cluster.seeds[1:]]
            self.client = RedisCluster.from_url(cluster.url, startup_nodes=seeds, **options)
        self._discovery: asyncio.Task[Any] | None = None

    def __repr__(self) -> str:  # never show the password
        return f"RedisCache({self.url!r})"

    async def _discover(self) -> None:
        """The cluster's slot map (CLUSTER SLOTS and COMMAND, a round trip each, and the
        connections) is learnt in a task of its own, at the start and again after a node
        failed: a look-up's timeout stops waiting for it but never cancels it, or a
        discovery slower than the timeout would be restarted, and cancelled, for ever."""
        if not getattr(self.client, "_initialize", True):  # redis-py: the map is known
            return
        if self._discovery is None or self._discovery.done():
            task = asyncio.get_running_loop().create_task(self.client.initialize())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._discovery = task
        await asyncio.shield(self._discovery)

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not self.cluster:
            values: list[Any] = await self.client.mget(list(keys))
            return values
        if not keys:
            return []
        await self._discover()
        # One MGET per slot in one pipeline: redis-py sends one batch per node, the
        # nodes concurrently, so a look-up costs one round trip per node it touches.
        # Naming each slot's node (as redis-py's mget_nonatomic does) spares the pipeline
        # finding the slot again (~20 % of its CPU); a MOVED reply is still followed.
        client: Any = self.client
        groups = slot_groups(keys)
        if len(groups) == 1:  # one slot (one key, a hash tag): a plain command is cheaper
            values = await client.mget(list(keys))
            return values
        pipe = client.pipeline(transaction=False)
        for slot, positions in groups.items():  # (the cluster pipeline refuses .mget)
            node = client.nodes_manager.get_node_from_slot(slot)
            pipe.execute_command("MGET", *(keys[i] for i in positions), target_nodes=node)
        return reassemble(len(keys), groups, await pipe.execute())

    async def mset(self, items: Sequence[tuple[str, bytes]], ttl_s: int) -> None:
        if self.cluster:
            await self._discover()
        if len(items) == 1:
            await self.client.set(items[0][0], items[0][1], ex=ttl_s)
            return
        # A cluster pipeline groups the SETs by node like the look-ups (one batch per node).
        pipe = self.client.pipeline(transaction=False)
        for key, value in items:
            pipe.set(key, value, ex=ttl_s)
        await pipe.execute()

    async def close(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
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
