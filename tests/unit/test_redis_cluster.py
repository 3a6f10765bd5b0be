"""The prediction cache on a Redis Cluster: slot grouping and reassembly (pure), then a
real three-node cluster of local redis-server processes (no Ray) beside one plain server.

Every process started here is stopped by PID (serve/local/pids.py). Ports are drawn so
that each node's cluster bus (its port + 10000) also lies below Linux's ephemeral range.

``python -m tests.unit.test_redis_cluster`` measures the batching choices instead
(docs/serving.md "## Cache" quotes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.dataplane.cache import (
    ClusterURL,
    PredictionCache,
    RedisCache,
    cache_key,
    parse_cluster_url,
    reassemble,
    redact_url,
    slot_groups,
)
from serve.local.pids import stop_pid
from serve.local.ports import port_free
from serve.local.redis_server import redis_command, start_redis

# ---------------------------------------------------------------- pure: slots, URLs


def test_slot_groups_follow_redis_key_slot_and_keep_first_seen_order() -> None:
    from redis.crc import key_slot

    keys = [f"abserve:m:v1:{i:032x}" for i in range(200)]
    groups = slot_groups(keys)
    assert sorted(i for g in groups.values() for i in g) == list(range(200))
    for slot, positions in groups.items():
        assert positions == sorted(positions)
        assert all(key_slot(keys[i].encode()) == slot for i in positions)
    firsts = [g[0] for g in groups.values()]
    assert firsts == sorted(firsts)  # slots in the order their first key came
    assert len(groups) > 150  # 200 keys over 16384 slots: nearly one slot each


def test_a_hash_tag_puts_keys_on_one_slot() -> None:
    keys = [f"abserve:{{m:v1}}:{i:032x}" for i in range(50)]
    assert list(slot_groups(keys).values()) == [list(range(50))]
    assert slot_groups([]) == {}


def test_reassemble_puts_each_reply_back_under_its_key() -> None:
    keys = ["a", "b", "a", "c", "{t}x", "{t}y"]
    groups = slot_groups(keys)
    replies = [[f"v-{keys[i]}" for i in positions] for positions in groups.values()]
    assert reassemble(len(keys), groups, replies) == [f"v-{k}" for k in keys]
    assert reassemble(0, {}, []) == []


def test_reassemble_refuses_a_reply_of_the_wrong_length() -> None:
    groups = {1: [0, 2], 7: [1]}
    with pytest.raises(ValueError):
        reassemble(3, groups, [[b"x", b"z"]])  # a slot's reply missing
    with pytest.raises(ValueError):
        reassemble(3, groups, [[b"x"], [b"y"]])  # a short reply


def test_cluster_url_forms() -> None:
    assert parse_cluster_url("redis://127.0.0.1:6390/0") is None
    assert parse_cluster_url("rediss://:pw@cache:6390/2") is None
    assert parse_cluster_url("redis+cluster://10.0.0.1:7000") == ClusterURL(
        "redis://10.0.0.1:7000", (("10.0.0.1", 7000),))
    parsed = parse_cluster_url(
        "rediss+cluster://app:hunter2@a.internal:7000, b.internal:7001,[::1]:7002/0"
        "?ssl_cert_reqs=required")
    assert parsed == ClusterURL(
        "rediss://app:hunter2@a.internal:7000/0?ssl_cert_reqs=required",
        (("a.internal", 7000), ("b.internal", 7001), ("::1", 7002)))
    assert parse_cluster_url("redis+cluster://c")  == ClusterURL("redis://c", (("c", 6379),))
    for bad in ("redis+cluster://:hunter2@a:7000/3", "redis+cluster://:hunter2@a:x",
                "redis+cluster://:hunter2@a:7000,,b:7001"):
        with pytest.raises(ValueError) as err:
            parse_cluster_url(bad)
        assert "hunter2" not in str(err.value)


@pytest.mark.parametrize("url, shown", [
    ("redis+cluster://:hunter2-secret@10.0.0.5:7000,10.0.0.6:7000/0",
     "redis+cluster://:***@10.0.0.5:7000,10.0.0.6:7000/0"),
    ("rediss+cluster://app:hunter2-secret@cache:7000?ssl_cert_reqs=required",
     "rediss+cluster://app:***@cache:7000?ssl_cert_reqs=required"),
    ("redis+cluster://cache:7000/0?password=hunter2-secret",
     "redis+cluster://cache:7000/0?password=***"),
])
def test_redact_url_on_cluster_urls(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_cluster_client_from_the_url_with_credentials_and_tls() -> None:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    tls = {"ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/ca.pem"}
    cache = RedisCache("rediss+cluster://app:hunter2-secret@a:7000,b:7001", tls=tls,
                       max_connections=8)
    assert cache.cluster and isinstance(cache.client, RedisCluster)
    kwargs = cache.client.get_connection_kwargs()
    assert (kwargs["username"], kwargs["password"]) == ("app", "hunter2-secret")
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem" and kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["max_connections"] == 8 and kwargs["health_check_interval"] == 0
    assert {n.name for n in cache.client.startup_nodes} == {"a:7000", "b:7001"}
    assert "hunter2" not in repr(cache) and "hunter2" not in cache.url
    plain = RedisCache("redis+cluster://:pw-123456@127.0.0.1:7000", tls={"ssl_ca_certs": "/x"})
    assert "ssl_ca_certs" not in plain.client.get_connection_kwargs()  # TLS only
    single = RedisCache("redis://127.0.0.1:6390/0")
    assert not single.cluster and isinstance(single.client, Redis)
    with pytest.raises(ValueError):
        RedisCache("redis+cluster://127.0.0.1:7000/1")


# ---------------------------------------------------------------- a real local cluster


def _cluster_ports(n: int) -> list[int]:
    """Free ports whose bus port (+10000) is free too and below the ephemeral range."""
    rng = random.SystemRandom()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(20000, 22700)
        if port not in ports and port_free(port) and port_free(port + 10000):
            ports.append(port)
    return ports


def _client(port: int) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)


def _make_certs(root: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl, as the TLS test of
    tests/integration does); returns the folder holding ca.crt, server.crt, server.key."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=root)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")
    (root / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.cnf", "-out", "server.crt")
    return root


class LocalCluster:
    """Three redis-server processes with ``--cluster-enabled yes``, slots split by
    ``redis-cli --cluster create``; ``stop_node``/``start_node`` kill and bring back one.
    ``certs``: TLS only (clients and the cluster bus); ``password``: AUTH on every node."""

    def __init__(self, root: Path, n: int = 3, *, certs: Path | None = None,
                 password: str | None = None) -> None:
        self.root = root
        self.ports = _cluster_ports(n)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.certs = certs
        self.password = password

    @property
    def url(self) -> str:
        scheme = "rediss+cluster" if self.certs else "redis+cluster"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def client(self, port: int) -> Any:
        import redis

        tls: dict[str, Any] = {}
        if self.certs is not None:
            tls = {"ssl": True, "ssl_ca_certs": str(self.certs / "ca.crt")}
        return redis.Redis(host="127.0.0.1", port=port, password=self.password,
                           socket_timeout=2, **tls)

    def _tls_flags(self) -> list[str]:
        if self.certs is None:
            return []
        return ["--tls-cert-file", str(self.certs / "server.crt"),
                "--tls-key-file", str(self.certs / "server.key"),
                "--tls-ca-cert-file", str(self.certs / "ca.crt"),
                "--tls-auth-clients", "no", "--tls-cluster", "yes"]

    def start_node(self, port: int) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        extra = ["--cluster-enabled", "yes",
                 "--cluster-config-file", str(self.root / f"nodes-{port}.conf"),
                 "--dir", str(self.root), *self._tls_flags()]
        if self.certs is not None:  # TLS on the port, no plain TCP (--port 0)
            extra += ["--tls-port", str(port)]
        if self.password is not None:
            extra += ["--masterauth", self.password]
        cmd = redis_command(binary, 0 if self.certs else port, self.root / f"redis-{port}.log",
                            password=self.password, extra=extra)
        self.procs[port] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True)
        self._wait(lambda: self.client(port).ping(), f"redis-server on {port} did not start")

    def stop_node(self, port: int) -> None:
        stop_pid(self.procs.pop(port).pid)

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        cli = ["redis-cli"]
        if self.certs is not None:
            cli += ["--tls", "--cacert", str(self.certs / "ca.crt")]
        if self.password is not None:
            cli += ["--no-auth-warning", "-a", self.password]
        subprocess.run(
            [*cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, timeout=60, stdin=subprocess.DEVNULL, capture_output=True,
        )
        self.wait_ok()

    def wait_ok(self) -> None:
        """Every node says cluster_state:ok and knows all 16384 slots."""
        def ok() -> bool:
            for port in self.ports:
                info = self.client(port).execute_command("CLUSTER INFO")  # parsed: a dict
                if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
            return True
        self._wait(ok, "the cluster did not reach cluster_state:ok")

    def owner(self, slot: int) -> int:
        """The port of the node that serves ``slot``."""
        for start, end, primary, *_ in self.client(self.ports[0]).execute_command(
                "CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
        raise LookupError(slot)

    def commands(self, name: str) -> int:
        """Calls of command ``name`` summed over the live nodes (INFO commandstats)."""
        total = 0
        for port in self.procs:
            stats = self.client(port).info("commandstats")
            total += int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        return total

    def cpu(self) -> dict[int, float]:
        """Each live node's own CPU seconds so far (INFO cpu: user + system)."""
        out = {}
        for port in self.procs:
            info = self.client(port).info("cpu")
            out[port] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return out

    def stop(self) -> None:
        for port in list(self.procs):
            self.stop_node(port)

    @staticmethod
    def _wait(check: Callable[[], Any], message: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.1)
        raise RuntimeError(message)


def _need_binaries() -> None:
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (scripts/setup.sh installs them)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    _need_binaries()
    local = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def single_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _need_binaries()
    ports = _cluster_ports(1)
    proc = start_redis(ports[0], tmp_path_factory.mktemp("redis-single") / "redis.log")
    try:
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        stop_pid(proc.pid)


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def _keys(tag: str, n: int) -> list[str]:
    rng = np.random.default_rng(len(tag))
    return [cache_key("m", tag, rng.normal(size=4)) for _ in range(n)]


def _values(n: int) -> list[list[float]]:
    return [[i / (n + 1), 1 - i / (n + 1)] for i in range(n)]


async def _settle(cache: PredictionCache) -> None:
    """Wait for the background writes."""
    await asyncio.sleep(0)
    while cache._pending:
        await asyncio.gather(*cache._pending, return_exceptions=True)


def test_cluster_gives_the_single_servers_values(cluster: LocalCluster, single_url: str) -> None:
    keys = _keys("same", 300)
    written = keys[:250]  # and 50 never written

    async def through(url: str) -> list[list[float] | None]:
        cache = PredictionCache(RedisCache(url), width=2, timeout_s=2.0)
        try:
            items = list(zip(written, _values(250), strict=True))
            for chunk in range(0, 250, 50):  # five requests' writes, merged
                cache.set_many_background(items[chunk:chunk + 50])
            await _settle(cache)
            assert cache.stats.writes == 250 and cache.stats.errors == 0
            # Ten concurrent requests of 30 keys each: one merged look-up.
            lookups = await asyncio.gather(*(cache.get_many(keys[i:i + 30])
                                             for i in range(0, 300, 30)))
            assert cache.round_trips == 1 and not any(lk.bypassed for lk in lookups)
            return [v for lk in lookups for v in lk.values]
        finally:
            await cache.close()

    on_cluster = asyncio.run(through(cluster.url))
    on_single = asyncio.run(through(single_url))
    assert on_cluster == on_single
    assert on_cluster[:250] == _values(250) and on_cluster[250:] == [None] * 50

    # The batch spread over many slots and all three nodes, and every key was found.
    groups = slot_groups(written)
    assert len(groups) > 200 and {cluster.owner(s) for s in groups} == set(cluster.ports)
    # The key is stored verbatim (the single server's format) on the node of its slot.
    from redis.crc import key_slot

    key = written[0]
    assert cluster.client(cluster.owner(key_slot(key.encode()))).exists(key) == 1
    assert key.startswith("abserve:m:same:")


def test_round_trips_per_merged_look_up(cluster: LocalCluster, single_url: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A merged look-up: one MGET per slot, one pipelined batch per node it touches
    (sent concurrently); one MGET and one round trip on a single server."""
    from redis.asyncio.cluster import ClusterNode

    batches: list[str] = []
    original = ClusterNode.execute_pipeline

    async def counted(self: ClusterNode, commands: list[Any]) -> bool:
        batches.append(self.name)
        return await original(self, commands)

    monkeypatch.setattr(ClusterNode, "execute_pipeline", counted)
    keys = _keys("trips", 64)
    slots = slot_groups(keys)
    nodes = {cluster.owner(s) for s in slots}

    async def go() -> None:
        cache = PredictionCache(RedisCache(cluster.url), width=2, timeout_s=2.0)
        try:
            await cache.get_many(keys[:1])  # discovery (CLUSTER SLOTS, COMMAND) done
            batches.clear()
            cache.set_many_background(list(zip(keys, _values(64), strict=True)))
            await _settle(cache)
            assert len(batches) == len(nodes)  # a merged write: one batch per node
            sets, mgets = cluster.commands("set"), cluster.commands("mget")
            trips = cache.round_trips
            batches.clear()
            got = await asyncio.gather(*(cache.get_many(keys[i:i + 8]) for i in range(0, 64, 8)))
            assert cache.round_trips == trips + 1  # eight requests, one merged look-up
            assert sorted(batches) == sorted(f"127.0.0.1:{p}" for p in nodes)
            assert cluster.commands("mget") - mgets == len(slots)
            assert cluster.commands("set") == sets
            assert [v for lk in got for v in lk.values] == _values(64)
            batches.clear()
            mgets = cluster.commands("mget")
            one = await cache.get_many(keys[:1])  # one slot: a plain MGET, no pipeline
            assert one.values == _values(64)[:1] and batches == []
            assert cluster.commands("mget") - mgets == 1
        finally:
            await cache.close()

        single = PredictionCache(RedisCache(single_url), width=2, timeout_s=2.0)
        port = int(single_url.rsplit(":", 1)[1].split("/")[0])
        before = int(_client(port).info("commandstats").get("cmdstat_mget", {}).get("calls", 0))
        try:
            await asyncio.gather(*(single.get_many(keys[i:i + 8]) for i in range(0, 64, 8)))
        finally:
            await single.close()
        after = int(_client(port).info("commandstats")["cmdstat_mget"]["calls"])
        assert (after - before, single.round_trips) == (1, 1)

    asyncio.run(go())
    assert len(slots) > 50 and len(nodes) == 3


def test_a_slot_moved_under_the_client_is_followed(cluster: LocalCluster) -> None:
    """Resharding while the router runs: the client's slot map is stale for one slot,
    the old owner answers MOVED, and the look-up still finds every key."""
    from redis.crc import key_slot

    keys = _keys("moved", 40)
    slot = key_slot(keys[0].encode())
    src = cluster.owner(slot)
    dst = next(p for p in cluster.ports if p != src)

    async def go() -> None:
        cache = PredictionCache(RedisCache(cluster.url), width=2, timeout_s=2.0)
        try:
            cache.set_many_background(list(zip(keys, _values(40), strict=True)))
            await _settle(cache)
            assert (await cache.get_many(keys)).values == _values(40)  # the map is known

            source, target = cluster.client(src), cluster.client(dst)
            src_id = source.execute_command("CLUSTER MYID").decode()
            dst_id = target.execute_command("CLUSTER MYID").decode()
            target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
            source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
            moving = source.execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
            assert keys[0] in {m.decode() if isinstance(m, bytes) else m for m in moving}
            source.migrate("127.0.0.1", dst, moving, 0, 5000)
            for port in cluster.ports:
                cluster.client(port).execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
            cluster.wait_ok()
            assert cluster.owner(slot) == dst

            backend = cache.backend
            assert isinstance(backend, RedisCache)
            client: Any = backend.client
            slot_map = client.nodes_manager
            assert slot_map.get_node_from_slot(slot).port == src  # stale: MOVED comes
            moved = await cache.get_many(keys)
            assert not moved.bypassed and moved.values == _values(40)
            assert slot_map.get_node_from_slot(slot).port == dst  # learnt from MOVED
            assert cache.stats.errors == 0
        finally:
            await cache.close()

    asyncio.run(go())


def test_a_tls_cluster_with_a_password(tmp_path: Path) -> None:
    """rediss+cluster:// with the cache's tls settings and a password in the URL, against
    three TLS-only nodes (their cluster bus too); without the CA: a bypass, no error."""
    _need_binaries()
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    certs = _make_certs(tmp_path)
    local = LocalCluster(tmp_path, certs=certs, password="hunter2-cluster-pw")
    keys = _keys("tls", 40)

    async def roundtrip(tls: dict[str, Any]) -> tuple[Any, Any]:
        cache = PredictionCache(RedisCache(local.url, tls=tls), width=2, timeout_s=1.0)
        try:
            cache.set_many_background(list(zip(keys, _values(40), strict=True)))
            await _settle(cache)
            return await cache.get_many(keys), cache.stats
        finally:
            await cache.close()

    try:
        local.start()
        assert local.url.startswith("rediss+cluster://:hunter2-cluster-pw@")
        lookup, stats = asyncio.run(roundtrip({"ssl_ca_certs": str(certs / "ca.crt"),
                                               "ssl_cert_reqs": "required"}))
        assert not lookup.bypassed and lookup.values == _values(40), stats
        assert stats.writes == 40 and stats.errors == 0
        lookup, stats = asyncio.run(roundtrip({"ssl_cert_reqs": "required"}))  # no CA
        assert lookup.bypassed and stats.errors >= 1
        assert "hunter2" not in RedisCache(local.url).url
    finally:
        local.stop()


def test_a_discovery_slower_than_the_timeout_completes_in_the_background(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery takes ~70-110 ms here (COMMAND's reply is large), more on a far or TLS
    link: more than cache.timeout_ms. Cancelled with each look-up it would start again
    with every probe and might never finish; in its own task it finishes once."""
    from redis._parsers.commands import AsyncCommandsParser

    calls: list[float] = []
    original = AsyncCommandsParser.initialize

    async def slow(self: AsyncCommandsParser, node: Any = None) -> None:
        calls.append(time.monotonic())
        await asyncio.sleep(0.3)  # a slow link
        await original(self, node)

    monkeypatch.setattr(AsyncCommandsParser, "initialize", slow)
    clock = Clock()

    async def go() -> None:
        cache = PredictionCache(RedisCache(cluster.url), width=2, timeout_s=0.05,
                                retry_after_s=1.0, clock=clock)
        try:
            first = await cache.get_many(_keys("slow", 5))
            assert first.bypassed and cache.stats.errors == 1
            await asyncio.sleep(0.6)
            clock.t += 1.1
            second = await cache.get_many(_keys("slow", 5))
            assert not second.bypassed and len(calls) == 1
        finally:
            await cache.close()

    asyncio.run(go())


def test_a_node_down_is_a_bypass_and_the_breaker_retries_later(cluster: LocalCluster) -> None:
    """Last in this file: it stops a node and brings it back (empty: no persistence)."""
    from redis.crc import key_slot

    keys = _keys("down", 60)
    victim = cluster.ports[-1]
    on_victim = [cluster.owner(key_slot(k.encode())) == victim for k in keys]
    assert any(on_victim) and not all(on_victim)
    clock = Clock()

    async def go() -> None:
        cache = PredictionCache(RedisCache(cluster.url, socket_timeout_s=0.5), width=2,
                                timeout_s=0.5, retry_after_s=1.0, clock=clock)
        try:
            cache.set_many_background(list(zip(keys, _values(60), strict=True)))
            await _settle(cache)
            assert (await cache.get_many(keys)).values == _values(60)

            cluster.stop_node(victim)
            down = await cache.get_many(keys)  # no exception: the model would answer
            assert down.bypassed and down.values == [None] * 60 and cache.stats.errors == 1
            trips = cache.round_trips
            again = await cache.get_many(keys)  # the breaker is open: Redis not asked
            assert again.bypassed and cache.round_trips == trips
            cache.set_many_background([(keys[0], [0.5, 0.5])])  # skipped, no exception
            await _settle(cache)

            cluster.start_node(victim)
            cluster.wait_ok()
            clock.t += 1.1  # retry_after_s later one look-up probes Redis again
            back = await cache.get_many(keys)
            assert not back.bypassed and cache.round_trips == trips + 1
            expected = [None if lost else v for lost, v in zip(on_victim, _values(60),
                                                                 strict=True)]
            assert back.values == expected  # the restarted node lost its keys, no more
            assert cache.stats.errors == 1
        finally:
            await cache.close()

    asyncio.run(go())


# ---------------------------------------------------------------- measurement


def _timed(loop: asyncio.AbstractEventLoop, n: int, call: Callable[[], Any]
           ) -> tuple[float, float]:
    """Median and p99 of ``n`` sequential awaits of ``call()``, in microseconds."""

    async def go() -> list[float]:
        for _ in range(20):
            await call()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await call()
            out.append((time.perf_counter() - t0) * 1e6)
        return out

    samples = loop.run_until_complete(go())
    return statistics.median(samples), float(np.percentile(samples, 99))


def main(argv: Sequence[str] = ()) -> int:
    """Latency of one merged look-up of N keys, four ways; and where a tag puts the load."""
    rounds = int(argv[0]) if argv else 300
    root = Path(tempfile.mkdtemp(prefix="abserve-cluster-bench-"))
    local = LocalCluster(root)
    single_port = _cluster_ports(1)[0]
    single_proc = start_redis(single_port, root / "single.log")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        local.start()
        single = RedisCache(f"redis://127.0.0.1:{single_port}/0")
        clustered = RedisCache(local.url)
        client: Any = clustered.client
        print(f"{'keys':>5} {'variant':<42} {'median us':>10} {'p99 us':>8} {'MGETs':>6}")
        for n in (1, 16, 64, 256):
            keys = _keys(f"bench{n}", n)
            # The alternative key: abserve:{model:version}:digest, one slot per version.
            tagged = [f"abserve:{{m:bench{n}}}:{k.rsplit(':', 1)[1]}" for k in keys]
            assert len(slot_groups(tagged)) == 1
            for cache in (single, clustered):
                loop.run_until_complete(cache.mset([(k, b"[0.5,0.5]") for k in keys + tagged],
                                                   60))
            groups = slot_groups(keys)
            slot_keys = [[keys[i] for i in g] for g in groups.values()]

            async def separate(slot_keys: list[list[str]] = slot_keys) -> list[Any]:
                return await asyncio.gather(*(client.mget(ks) for ks in slot_keys))

            variants: list[tuple[str, Callable[[], Any], int]] = [
                ("single server: one MGET", partial(single.mget, keys), 1),
                ("cluster: MGET per slot, one pipeline/node", partial(clustered.mget, keys),
                 len(groups)),
                ("cluster: MGET per slot, each its own call", separate, len(groups)),
                ("cluster: {model:version} tag, one MGET", partial(client.mget, tagged), 1),
            ]
            for name, call, mgets in variants:
                try:
                    median, p99 = _timed(loop, rounds, call)
                except Exception as exc:  # noqa: BLE001 - e.g. MaxConnectionsError
                    print(f"{n:>5} {name:<42} {type(exc).__name__:>19} {mgets:>6}")
                    continue
                print(f"{n:>5} {name:<42} {median:>10.0f} {p99:>8.0f} {mgets:>6}")
        # Where the work lands: the nodes' own CPU for 1000 look-ups of 64 keys.
        keys = _keys("cpu", 64)
        tagged = [f"abserve:{{m:cpu}}:{k.rsplit(':', 1)[1]}" for k in keys]
        loop.run_until_complete(clustered.mset([(k, b"[0.5,0.5]") for k in keys + tagged], 60))
        for name, call in (("MGET per slot", partial(clustered.mget, keys)),
                           ("{model:version} tag", partial(client.mget, tagged))):
            before = local.cpu()
            _timed(loop, 1000, call)
            used = [1000 * (local.cpu()[p] - before[p]) for p in local.ports]
            print(f"node CPU (ms) for 1000 look-ups of 64 keys, {name}: "
                  + " / ".join(f"{u:.0f}" for u in used))
        keys = _keys("spread", 3000)
        tag_node = local.owner(slot_groups(["abserve:{m:spread}:x"]).popitem()[0])
        per_node = {p: 0 for p in local.ports}
        for slot, positions in slot_groups(keys).items():
            per_node[local.owner(slot)] += len(positions)
        shares = ", ".join(f"{100 * c / len(keys):.0f} %" for c in per_node.values())
        print(f"3000 keys of one version: per slot {shares} of the keys per node; "
              f"tagged 100 % on node {tag_node}")
        loop.run_until_complete(single.close())
        loop.run_until_complete(clustered.close())
    finally:
        local.stop()
        stop_pid(single_proc.pid)
        loop.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
