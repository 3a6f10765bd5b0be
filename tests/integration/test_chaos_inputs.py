"""Issue 5, hostile input and security: poisoned cache entries, single flight, fuzzing,
a password-protected (and a TLS) Redis, and secrets that never reach logs or /stats.

One application of its own ("chin", v1 baseline + v2 at 0 %) whose cache is a
redis-server started here with ``--requirepass``, on a free loopback port, and
stopped by PID at the end.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from models.activity.data import make_windows
from router.dataplane.cache import cache_key
from serve.local import free_port, redis_command, start_redis, stop_pid
from tests.integration.conftest import ADMIN_TOKEN, ServeInstance, serve_app, small_app

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

APP, PREFIX, KEY_PREFIX = "chin", "/chin", "chin"
REDIS_PASSWORD = "redis-" + secrets.token_hex(12)
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Pw:
    """The password-protected redis-server of this module."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.port, self.proc, self.log = port, proc, log

    def client(self, password: str = REDIS_PASSWORD) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=password, socket_timeout=2)


@pytest.fixture(scope="module")
def pw_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pw]:
    port = free_port()
    log = tmp_path_factory.mktemp("pw-redis") / "redis.log"
    proc = start_redis(port, log, password=REDIS_PASSWORD)
    yield Pw(port, proc, log)
    stop_pid(proc.pid)


@pytest.fixture(scope="module")
def chin(serve_instance: ServeInstance, registry_root: str, state_dir: str,
         pw_redis: Pw) -> Iterator[str]:
    config = small_app(
        serve_instance, registry_root, state_dir, APP, ("v1", "v2"),
        {"baseline": "v1", "arms": [{"version": "v1", "weight": 100},
                                    {"version": "v2", "weight": 0}], "timeout_ms": 10_000},
        cache={"redis_url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{pw_redis.port}/0",
               "key_prefix": KEY_PREFIX, "retry_after_s": 0.2},
    )
    urls = serve_app(config, serve_instance, PREFIX)
    url = next(urls)
    PIDS_AT_START.append(_pids(url))
    yield url
    next(urls, None)


PIDS_AT_START: list[tuple[int, dict[str, int]]] = []


def _window(seed: int) -> np.ndarray:
    x, _ = make_windows(1, seed=seed)
    return x[0].astype(np.float32)


def _stats(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/stats", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _predict(url: str, x: np.ndarray, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"features": x.tolist()}, headers=headers, timeout=30)


# ---------------------------------------------------------------- 5. poisoned cache


class _System:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _Open:
    """Unpickling this creates ``<marker>`` with ``open(marker, "w")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_poisoned_cache_entries_are_ignored_counted_and_never_unpickled(
    chin: str, pw_redis: Pw, tmp_path: Path
) -> None:
    markers = [tmp_path / "pwned-system", tmp_path / "pwned-open"]
    payloads = [
        b"\x00\xff\xfe garbage \x80\x81" + os.urandom(64),
        pickle.dumps(_System(markers[0])),
        pickle.dumps(_Open(markers[1])),
        b"[0.5, 0.5]",  # valid JSON, wrong number of classes
        b'{"label": "Still"}',
    ]
    # The payloads are real: unpickling the two would create the markers.
    assert all(not m.exists() for m in markers)
    redis = pw_redis.client()
    before = _stats(chin)["cache"]["decode_errors"]
    for i, payload in enumerate(payloads):
        x = _window(9000 + i)
        key = cache_key("activity", "v1", x, KEY_PREFIX)
        redis.set(key, payload)
        r = _predict(chin, x)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["cached"] is False and body["version"] == "v1"
        assert r.headers["X-Cache"] == "MISS"
        assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        # The fresh answer replaced the poison: the next request is a hit, same numbers.
        deadline = time.monotonic() + 5
        while redis.get(key) == payload:
            assert time.monotonic() < deadline, "the fresh answer was not written"
            time.sleep(0.05)
        assert len(orjson.loads(redis.get(key))) == 8  # JSON probabilities again
        again = _predict(chin, x)
        assert again.headers["X-Cache"] == "HIT"
        assert again.json()["probabilities"] == body["probabilities"]
    assert _stats(chin)["cache"]["decode_errors"] - before == len(payloads)
    assert all(not m.exists() for m in markers), "a cached pickle was unpickled"


# ---------------------------------------------------------------- 6. single flight


def test_50_identical_concurrent_misses_call_the_model_once(chin: str) -> None:
    x = _window(31337)
    body = orjson.dumps({"features": x.tolist()})

    def model_rows() -> int:
        """Rows v1 computed, by its replicas and by the router's colocated copy (if any)."""
        v1 = _stats(chin)["models"]["v1"]
        return int(v1["rows"]) + int(v1.get("colocated_copy", {}).get("rows", 0))

    rows_before = model_rows()
    routers = 1  # small_app: one router replica

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=chin, timeout=30, limits=limits) as client:
            return await asyncio.gather(*(
                client.post("/predict", content=body,
                            headers={"content-type": "application/json"})
                for _ in range(50)
            ))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    answers = {orjson.dumps(r.json()["probabilities"]) for r in responses}
    assert len(answers) == 1, "the 50 answers differ"
    computed = model_rows() - rows_before
    assert 1 <= computed <= routers, f"the model computed this input {computed} times"


# ---------------------------------------------------------------- 7. hostile inputs

DEEP = b'{"features": ' + b"[" * 5000 + b"]" * 5000 + b"}"
HOSTILE: list[tuple[str, str, bytes, str, set[int]]] = [
    # (name, path, body, content type, accepted statuses)
    ("NaN literal", "/predict", b'{"features": [[NaN]]}', "application/json", {400}),
    ("Infinity literal", "/predict", b'{"features": [[Infinity]]}', "application/json", {400}),
    # 1e309 overflows a double: the JSON parser refuses it (README: 400, like Infinity).
    ("1e309", "/predict", b'{"features": ' + orjson.dumps([[1.0] * 9] * 49)[:-1]
     + b',[1e309,1,1,1,1,1,1,1,1]]}', "application/json", {400}),
    ("float32 overflow", "/predict", orjson.dumps({"features": [[1e39] * 9] * 50}),
     "application/json", {422}),
    ("deep nesting", "/predict", DEEP, "application/json", {400}),  # deeper than 1024
    ("truncated JSON", "/predict", b'{"features": [[0.1, 0.2', "application/json", {400}),
    ("empty body", "/predict", b"", "application/json", {400}),
    ("wrong shape", "/predict", orjson.dumps({"features": [[0.0] * 9] * 49}),
     "application/json", {422}),
    ("ragged", "/predict", orjson.dumps({"features": [[0.0] * 9] * 49 + [[0.0] * 8]}),
     "application/json", {422}),
    ("strings", "/predict", orjson.dumps({"features": [["a"] * 9] * 50}),
     "application/json", {422}),
    ("booleans", "/predict", orjson.dumps({"features": [[True] * 9] * 50}),
     "application/json", {422}),
    ("top-level list", "/predict", b"[1, 2, 3]", "application/json", {422}),
    ("unknown key", "/predict", b'{"features": [], "x": 1}', "application/json", {422}),
    ("text/plain", "/predict", b'{"features": []}', "text/plain", {415}),
    ("form", "/predict", b"features=1", "application/x-www-form-urlencoded", {415}),
    ("no content type", "/predict", b'{"features": []}', "", {415}),
    # 300 instances (540 kB, under max_body_bytes) past max_batch_instances: an oversize
    # batch, README: 422.
    ("batch too big", "/predict/batch",
     orjson.dumps({"instances": [[[0.0] * 9] * 50] * 300}), "application/json", {422}),
    ("batch empty", "/predict/batch", b'{"instances": []}', "application/json", {422}),
    ("batch of scalars", "/predict/batch", b'{"instances": [1, 2]}', "application/json", {422}),
    ("10 MB body", "/predict", b'{"features": [' + b"0," * 5_000_000 + b"0]}",
     "application/json", {413}),
    ("10 MB batch", "/predict/batch", b'{"instances": [' + b"0," * 5_000_000 + b"0]}",
     "application/json", {413}),
    ("OIP garbage", "/v2/models/activity/infer", b"\x00\x01\x02", "application/json", {400}),
    ("OIP NaN", "/v2/models/activity/infer",
     b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}]}',
     "application/json", {400}),
    ("feedback garbage", "/feedback", b"{{{", "application/json", {400}),
    ("admin weights garbage", "/admin/weights", b"\xff\xfe", "application/json", {400}),
]


def _pids(url: str) -> tuple[int, dict[str, int]]:
    stats = _stats(url)
    return stats["pid"], {v: s["pid"] for v, s in stats["models"].items()}


@pytest.mark.parametrize("name, path, payload, ctype, accepted", HOSTILE,
                         ids=[h[0] for h in HOSTILE])
def test_hostile_input_gets_a_4xx_never_a_5xx(chin: str, name: str, path: str, payload: bytes,
                                              ctype: str, accepted: set[int]) -> None:
    """Each case gets the one status the README's error table names for it."""
    assert len(accepted) == 1, name
    headers = {"content-type": ctype} if ctype else {}
    if path.startswith("/admin"):
        headers.update(AUTH)
    method = "PUT" if path == "/admin/weights" else "POST"
    r = httpx.request(method, chin + path, content=payload, headers=headers, timeout=30)
    assert r.status_code in accepted, (name, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    assert "error" in r.json()


def test_oversized_body_is_refused_before_it_is_read(chin: str) -> None:
    """A 10 MB body announced by Content-Length is refused without reading it all."""

    async def go() -> tuple[int, float]:
        host, port = "127.0.0.1", int(chin.split(":")[2].split("/")[0])
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"POST {PREFIX}/predict HTTP/1.1\r\nHost: {host}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 10485760\r\n\r\n"
                     .encode() + b'{"features": [')  # then nothing: the rest never comes
        await writer.drain()
        started = time.perf_counter()
        status = int((await asyncio.wait_for(reader.readline(), 10)).split()[1])
        writer.close()
        return status, time.perf_counter() - started

    status, waited = asyncio.run(go())
    assert status == 413 and waited < 5


def test_chunked_body_over_the_limit_is_refused_before_it_ends(chin: str) -> None:
    """No Content-Length (Transfer-Encoding: chunked): the router counts what it reads and
    answers 413 once the body passes http.max_body_bytes (1 MiB), while the client has
    sent 1.25 MiB of a body that never ends: it cannot have waited for the whole body."""
    limit = 1 << 20  # http.max_body_bytes' default; small_app leaves it

    async def go() -> tuple[int, bytes, int]:
        host, port = "127.0.0.1", int(chin.split(":")[2].split("/")[0])
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"POST {PREFIX}/predict HTTP/1.1\r\nHost: {host}\r\n"
                     "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     .encode())
        chunk = b"0," * 8192  # 16 KiB of a features list that never closes
        sent = 0
        status_line = asyncio.ensure_future(reader.readline())
        head = b'{"features": ['
        writer.write(b"%x\r\n%s\r\n" % (len(head), head))
        while sent < limit + limit // 4 and not status_line.done():
            try:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
            except (ConnectionResetError, BrokenPipeError):
                break  # refused and closed while we were still sending
            sent += len(chunk)
        # Never the final zero-length chunk: a router that waited for the end would hang.
        line = await asyncio.wait_for(status_line, 15)
        # The head and the body may come in separate segments: read the head to its
        # blank line, then the body by its Content-Length or its first chunk.
        head_bytes = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        fields = head_bytes.lower()
        if b"transfer-encoding: chunked" in fields:
            size = int((await asyncio.wait_for(reader.readline(), 5)).strip(), 16)
        else:
            size = int(fields.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        body = await asyncio.wait_for(reader.readexactly(size), 5)
        writer.close()
        return int(line.split()[1]), head_bytes + body, sent

    status, rest, sent = asyncio.run(go())
    assert status == 413, (status, rest[:300])
    assert sent > limit
    head_part, body = rest.split(b"\r\n\r\n", 1)
    assert b"application/json" in head_part.lower() and b'"error"' in body, rest[:400]


# ---------------------------------------------------------------- baseline down too


def test_baseline_failing_too_is_a_json_503(chin: str) -> None:
    """v2 pinned and failing, and the baseline v1 failing as well (its replicas and the
    router's colocated copy): README's error table, 503 with a JSON error body."""
    from benchmarks.faults import set_fault_all
    from serve.app import model_deployment_name

    versions = ("v1", "v2")
    for v in versions:
        set_fault_all(APP, model_deployment_name("activity", v), error_rate=1.0)
    try:
        responses = [_predict(chin, _window(60_000 + i), **{"X-Model-Version": "v2"})
                     for i in range(3)]
    finally:
        for v in versions:
            set_fault_all(APP, model_deployment_name("activity", v), error_rate=0.0)
    for r in responses:
        assert r.status_code == 503, (r.status_code, r.text[:300])
        assert r.headers["content-type"].startswith("application/json")
        body = r.json()
        assert body["code"] == "service_unavailable" and "failed too" in body["error"], body
    # Healthy again (the breakers close after their cool-down): later tests see 200s.
    deadline = time.monotonic() + 30
    while (r := _predict(chin, _window(61_000 + int(time.monotonic() * 10)))).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)


# ---------------------------------------------------------------- secrets


def test_cache_through_a_password_protected_redis(chin: str, pw_redis: Pw) -> None:
    x = _window(4242)
    first = _predict(chin, x)
    assert first.status_code == 200 and first.headers["X-Cache"] in ("MISS", "HIT")
    deadline = time.monotonic() + 5
    while (r := _predict(chin, x)).headers["X-Cache"] != "HIT":
        assert time.monotonic() < deadline, r.headers["X-Cache"]
        time.sleep(0.05)
    assert pw_redis.client().exists(cache_key("activity", "v1", x, KEY_PREFIX))
    stats = _stats(chin)
    assert stats["cache"]["url"] == f"redis://:***@127.0.0.1:{pw_redis.port}/0"
    assert REDIS_PASSWORD not in orjson.dumps(stats).decode()


def test_wrong_redis_password_is_a_bypass_and_says_no_password(chin: str, pw_redis: Pw) -> None:
    import redis

    with pytest.raises(redis.AuthenticationError) as info:
        pw_redis.client(password="wrong-" + REDIS_PASSWORD).ping()
    assert "wrong-" not in str(info.value) and REDIS_PASSWORD not in str(info.value)
    admin = pw_redis.client()
    new_password = "rotated-" + secrets.token_hex(8)
    admin.config_set("requirepass", new_password)
    try:
        redis.Redis(host="127.0.0.1", port=pw_redis.port, password=new_password).client_kill_filter(
            _type="normal", skipme=True)  # the router's pooled connections must log in again
        errors_before = _stats(chin)["cache"]["errors"]
        statuses = set()
        for i in range(5):
            r = _predict(chin, _window(7000 + i))
            assert r.status_code == 200, r.text
            statuses.add(r.headers["X-Cache"])
            time.sleep(0.25)  # past cache.retry_after_s: each request probes Redis again
        assert "BYPASS" in statuses
        stats = _stats(chin)
        assert stats["cache"]["errors"] > errors_before
        assert REDIS_PASSWORD not in orjson.dumps(stats).decode()
    finally:
        redis.Redis(host="127.0.0.1", port=pw_redis.port, password=new_password).config_set(
            "requirepass", REDIS_PASSWORD)


def _tls_files(tmp_path: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, signed by it."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    (tmp_path / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "abserve-router")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "1", "-extfile", "san.cnf", "-out", f"{name}.crt")


def test_rediss_tls_from_the_config(tmp_path: Path) -> None:
    """rediss:// with a password, configured as users do: the config's cache.tls_* fields,
    through router.http.app.cache_backend (what each router replica calls) and a
    PredictionCache built as router.http.app.assemble builds it, against a real
    redis-server with TLS that asks for a client certificate (--tls-auth-clients yes)."""
    from router.dataplane.cache import PredictionCache
    from router.http.app import cache_backend
    from serve.config import parse_config

    _tls_files(tmp_path)
    port = free_port()
    cmd = redis_command("redis-server", 0, tmp_path / "redis.log", password=REDIS_PASSWORD,
                        extra=["--tls-port", str(port), "--tls-cert-file", "server.crt",
                               "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt",
                               "--tls-auth-clients", "yes"])
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:  # the TLS port listens
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, (
                    "no TLS redis-server", (tmp_path / "redis.log").read_text()[-500:]
                    if (tmp_path / "redis.log").exists() else "")
                time.sleep(0.1)
        url = f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
        ca, crt, key = (str(tmp_path / f) for f in ("ca.crt", "client.crt", "client.key"))

        def config(**tls: Any) -> Any:
            return parse_config({
                "models": [{"version": "v1"}],
                "experiment": {"baseline": "v1", "arms": [{"version": "v1", "weight": 100}]},
                "cache": {"redis_url": url, "timeout_ms": 2000, **tls},
            })

        async def roundtrip(cfg: Any) -> tuple[Any, Any, str | None]:
            setup = cache_backend(cfg.cache, environ={})
            assert setup.kind == "redis"
            cache = PredictionCache(setup.backend, width=2, ttl_s=cfg.cache.ttl_s,
                                    timeout_s=cfg.cache.timeout_ms / 1000.0,
                                    retry_after_s=cfg.cache.retry_after_s)
            try:
                await cache.get_many(["tls:k"])  # connects (or fails to: a bypass)
                cache.set_many_background([("tls:k", [0.25, 0.75])])
                await asyncio.sleep(0.5)
                return await cache.get_many(["tls:k"]), cache.stats, setup.url
            finally:
                await cache.close()

        full = config(tls_ca_file=ca, tls_cert_file=crt, tls_key_file=key)
        lookup, stats, shown = asyncio.run(roundtrip(full))
        assert not lookup.bypassed and lookup.values == [[0.25, 0.75]], stats
        assert shown is not None and REDIS_PASSWORD not in shown
        # Each field is needed: without the CA the server's certificate is refused, and
        # without the client certificate the server refuses us: a bypass, never an error.
        for missing in ("tls_ca_file", "tls_cert_file"):
            fields = {"tls_ca_file": ca, "tls_cert_file": crt, "tls_key_file": key}
            del fields[missing]
            if missing == "tls_cert_file":
                del fields["tls_key_file"]
            lookup, stats, _ = asyncio.run(roundtrip(config(**fields)))
            assert lookup.bypassed and stats.errors >= 1, missing
        # tls_verify none: no CA needed (the client certificate still is).
        lookup, stats, _ = asyncio.run(roundtrip(config(tls_verify="none", tls_cert_file=crt,
                                                        tls_key_file=key)))
        assert not lookup.bypassed and lookup.values == [[0.25, 0.75]], stats
    finally:
        stop_pid(proc.pid)


# ---------------------------------------------------------------- binds


def test_what_the_session_listens_on(chin: str, serve_instance: ServeInstance,
                                     pw_redis: Pw) -> None:
    """The listening sockets of every process this session started (Ray's and
    redis-server), read from the kernel (psutil, which Ray vendors: import ray first).
    What abserve sets binds loopback: Serve's HTTP ingress (http.host), the dashboard
    (cluster.dashboard_host), redis-server, the replicas' direct-ingress HTTP ports (the
    node IP, 127.0.0.1). Ray's own gRPC servers (GCS, raylet, workers), HAProxy's
    metrics and stats ports and the dashboard's agents bind every interface whatever
    abserve passes (docs/operations.md says to firewall them); they are printed here."""
    import ray  # noqa: F401  (puts Ray's vendored psutil on the path)

    # isort: split
    import psutil

    ours = [psutil.Process(), *psutil.Process().children(recursive=True)]
    by_port: dict[int, set[str]] = {}
    replica_ports: dict[int, set[str]] = {}  # what Serve's replicas bind (direct ingress)
    wildcard: dict[str, set[int]] = {}
    for proc in ours:
        try:
            conns = proc.net_connections(kind="inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.status != psutil.CONN_LISTEN:
                continue
            by_port.setdefault(c.laddr.port, set()).add(c.laddr.ip)
            if name.startswith("ray::ServeRep"):  # the kernel's 15-character name
                replica_ports.setdefault(c.laddr.port, set()).add(c.laddr.ip)
            if c.laddr.ip in ("0.0.0.0", "::"):
                wildcard.setdefault(name, set()).add(c.laddr.port)
            if name.startswith("redis-server"):
                assert c.laddr.ip == "127.0.0.1", (name, c.laddr)
    print("listening on every interface:", {k: sorted(v) for k, v in sorted(wildcard.items())})
    loopback = {"127.0.0.1"}
    assert by_port.get(serve_instance.http_port) == loopback, by_port.get(
        serve_instance.http_port)
    assert by_port.get(serve_instance.dashboard_port) == loopback
    assert by_port.get(pw_redis.port) == loopback
    from ray.serve._private import constants

    # The session's range is the one private_ray put in this process's environment before
    # ray.init; Serve's constants module reads it at import, and collection may have
    # imported it before (a CI run read the default 30000-31000 and found no replica in it).
    low = int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT",
                             constants.RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT))
    high = int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT",
                              constants.RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT))
    # The replicas' own ports in the range: another process's port may lie in it too (a CI
    # run failed on a 0.0.0.0 listener at 30072 in it, its process not named), which says
    # nothing of what the replicas bind; the replicas' names are the kernel's.
    direct = {port: ips for port, ips in replica_ports.items() if low <= port <= high}
    if (os.environ.get("ABSERVE_TEST_INGRESS") or "throughput") == "throughput":
        assert direct, replica_ports  # the session's replicas serve direct ingress
    assert all(ips == loopback for ips in direct.values()), direct
    assert not any(n.startswith("redis") for n in wildcard), wildcard


# ---------------------------------------------------------------- secrets in logs

CANARY = "canary-secret-" + secrets.token_hex(8)


def _flush_serve_logs(app: str) -> int:
    """Make every replica of ``app`` and every Serve proxy write its buffered log
    records to disk, and wait until they have.

    In throughput mode Serve holds a replica's records in a logging MemoryHandler of
    RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE (1000) records, written when it fills or an
    ERROR is logged (ray/serve/_private/logging_utils.py). Each actor logs an
    ERROR-level marker through Serve's logger (``__ray_call__`` runs it in the actor's
    process), which writes out what the buffer held; the marker's presence in a file
    proves that file is complete up to it. Returns how many actors were flushed.
    """
    import ray

    marker = "abserve-log-flush-" + secrets.token_hex(6)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith((f"SERVE_REPLICA::{app}#", "SERVE_PROXY_ACTOR"))]
    assert any(n.startswith(f"SERVE_REPLICA::{app}#") for n in names), names

    def log_marker(_actor: Any, text: str = marker) -> int:
        import logging as logging_
        import os as os_

        logging_.getLogger("ray.serve").error(text)
        return os_.getpid()

    ray.get([ray.get_actor(n, namespace="serve").__ray_call__.remote(log_marker)
             for n in names], timeout=30)
    logs_dir = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    # Each replica's own file (replica_<app>_<deployment>_<replica id>.log) must show the
    # marker; the proxies are flushed too, but their files are not required.
    waiting = {n.rsplit("#", 1)[1] for n in names if n.startswith("SERVE_REPLICA::")}
    deadline = time.monotonic() + 20
    while True:
        for path in logs_dir.rglob("*.log"):
            ids = {i for i in waiting if i in path.name}
            if ids and marker.encode() in path.read_bytes():
                waiting -= ids
        if not waiting:
            return len(names)
        assert time.monotonic() < deadline, f"no marker in the logs of replicas {waiting}"
        time.sleep(0.2)


def _leaks(*secret_values: str) -> list[str]:
    import ray

    logs_dir = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    leaks: list[str] = []
    for path in logs_dir.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for secret in secret_values:
            if secret.encode() in data:
                leaks.append(f"{path.name}: {secret[:6]}...")
    return leaks


def test_the_log_search_catches_a_secret_a_replica_logged(chin: str) -> None:
    """The leak search below can fail: a router replica logs a canary secret on purpose,
    at INFO (held in Serve's buffer like a request's records), and it is found."""
    import ray

    from serve.app import ROUTER_DEPLOYMENT

    def log_canary(_actor: Any, text: str = CANARY) -> None:
        import logging as logging_

        logging_.getLogger("ray.serve").info("oops, logged a secret: %s", text)

    routers = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith(f"SERVE_REPLICA::{APP}#{ROUTER_DEPLOYMENT}#")]
    assert routers, "no router replica found"
    ray.get([ray.get_actor(n, namespace="serve").__ray_call__.remote(log_canary)
             for n in routers], timeout=30)
    _flush_serve_logs(APP)
    assert _leaks(CANARY), "a secret a replica logged was not found in Ray's logs"


def test_admin_token_and_redis_password_never_reach_logs_or_stats(chin: str) -> None:
    wrong = "wrong-token-" + secrets.token_hex(8)
    for headers in (AUTH, {"Authorization": f"Bearer {wrong}"}, {"Authorization": wrong}):
        httpx.get(f"{chin}/admin/experiment", headers=headers, timeout=10)
        httpx.put(f"{chin}/admin/weights", content=b"{bad", timeout=10,
                  headers={**headers, "content-type": "application/json"})
    httpx.get(f"{chin}/admin/experiment?token={wrong}", timeout=10)
    stats = httpx.get(f"{chin}/stats", timeout=10).text
    assert _flush_serve_logs(APP) >= 3  # the router and the two versions' replicas at least
    leaks = _leaks(ADMIN_TOKEN, wrong, REDIS_PASSWORD)
    assert not leaks, leaks
    assert ADMIN_TOKEN not in stats and wrong not in stats and REDIS_PASSWORD not in stats


# ---------------------------------------------------------------- 7. fuzzing (last: it may
# pause the experiment or change its weights through the admin API)


def _fuzz(op: Any, base_url: str, headers: dict[str, str], seen: dict[str, int],
          failures: list[str]) -> None:
    """A few generated requests for one operation (bounded: examples, time)."""
    from hypothesis import HealthCheck, given, settings

    name = f"{op.method.upper()} {op.path}"

    @settings(max_examples=12, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy())
    def check(case: Any) -> None:
        r = case.call(base_url=base_url, headers=headers, timeout=15)
        seen[name] = r.status_code
        if r.status_code >= 500:
            failures.append(f"{name} -> {r.status_code}: {r.text[:200]}")

    check()


def test_fuzz_the_openapi_schema_no_5xx_no_restart(chin: str) -> None:
    import schemathesis

    pids = _pids(chin)
    assert pids == PIDS_AT_START[0], "a replica restarted during the hostile-input tests"
    schema = schemathesis.openapi.from_url(f"{chin}/openapi.json")
    seen: dict[str, int] = {}
    failures: list[str] = []
    budget = time.monotonic() + 45
    for result in schema.get_all_operations():
        op = result.ok()
        if time.monotonic() > budget:
            break
        _fuzz(op, chin, AUTH if op.path.startswith("/admin") else {}, seen, failures)
    print(f"fuzzed {len(seen)} operations, statuses {sorted(set(seen.values()))}")
    assert len(seen) >= 20, sorted(seen)  # every route was exercised
    assert not failures, failures[:10]
    assert _pids(chin) == pids, "a replica restarted while fuzzed"
