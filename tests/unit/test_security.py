"""Loopback binds of what `abserve up` starts, and Redis URLs that never show a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.dataplane.cache import RedisCache, redact_url
from serve.config import AbserveConfig, CacheConfig, parse_config
from serve.local import ray_head_command, redis_command

CONFIG = parse_config({
    "models": [{"version": "v1"}],
    "experiment": {"baseline": "v1", "arms": [{"version": "v1", "weight": 100}]},
})


def test_redis_binds_loopback_and_takes_a_password() -> None:
    cmd = redis_command("redis-server", 7001, Path("/tmp/r.log"))
    assert cmd[cmd.index("--bind") + 1] == "127.0.0.1" and "--requirepass" not in cmd
    cmd = redis_command("redis-server", 7001, Path("/tmp/r.log"), password="s3cret-pass")
    assert cmd[cmd.index("--requirepass") + 1] == "s3cret-pass"


def test_ray_head_binds_loopback_unless_the_config_says_otherwise() -> None:
    cmd = ray_head_command(CONFIG)
    assert "--node-ip-address=127.0.0.1" in cmd
    assert "--dashboard-host=127.0.0.1" in cmd
    assert CONFIG.http.host == "127.0.0.1"
    opened = CONFIG.model_copy(update={"cluster": CONFIG.cluster.model_copy(
        update={"dashboard_host": "0.0.0.0"})})
    assert isinstance(opened, AbserveConfig)
    assert "--dashboard-host=0.0.0.0" in ray_head_command(opened)


@pytest.mark.parametrize("url, shown", [
    ("redis://127.0.0.1:6390/0", "redis://127.0.0.1:6390/0"),
    ("redis://:hunter2-secret@10.0.0.5:6390/0", "redis://:***@10.0.0.5:6390/0"),
    ("redis://app:hunter2-secret@cache:6390/1", "redis://app:***@cache:6390/1"),
    ("rediss://app:hunter2-secret@cache:6390/1?ssl_cert_reqs=required",
     "rediss://app:***@cache:6390/1?ssl_cert_reqs=required"),
    ("redis://hunter2-secret@cache:6390", "redis://***@cache:6390"),
    ("redis://cache:6390/0?password=hunter2-secret", "redis://cache:6390/0?password=***"),
    ("redis://:p%40ss%3Aword@cache:6390/0", "redis://:***@cache:6390/0"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "hunter2" not in redact_url(url)


def test_redis_cache_parses_credentials_and_tls_but_never_shows_them() -> None:
    cache = RedisCache("rediss://app:hunter2-secret@cache.internal:6390/2",
                       tls={"ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/ca.pem"})
    kwargs = cache.client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("app", "hunter2-secret", 2)
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem" and kwargs["ssl_cert_reqs"] == "required"
    assert "hunter2" not in repr(cache) and "hunter2" not in cache.url
    plain = RedisCache("redis://:pw-123456@127.0.0.1:6390/0", tls={"ssl_ca_certs": "/x"})
    assert "ssl_ca_certs" not in plain.client.connection_pool.connection_kwargs  # TLS only


def test_cache_config_tls_fields() -> None:
    cfg = CacheConfig(redis_url="rediss://h:1/0", tls_ca_file="/ca.pem")
    assert cfg.tls_verify == "required" and cfg.tls_cert_file is None
