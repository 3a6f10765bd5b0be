"""Loopback binds of what `abserve up` starts, and Redis URLs that never show a password."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

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


# ------------------------------------------------- what `abserve up` actually passes


def _listening_ips(pid: int, port: int) -> set[str]:
    """The addresses process ``pid`` listens on at ``port``, from /proc (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = str(fd.readlink()) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ips: set[str] = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            local, state, inode = f[1], f[3], f[9]
            ip_hex, port_hex = local.split(":")
            if state != "0A" or inode not in inodes or int(port_hex, 16) != port:
                continue  # 0A: LISTEN
            raw = bytes.fromhex(ip_hex)
            # /proc prints each 32-bit word little-endian.
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            if width == 8:
                ips.add(".".join(str(b) for b in words))
            else:
                import ipaddress

                ips.add(str(ipaddress.IPv6Address(words)))
    return ips


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_up_passes_loopback_to_ray_serve_and_redis(
    host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``abserve up`` end to end with Ray faked at its edges (no cluster starts): the
    ``ray start`` command line and environment it runs, the ``serve.start`` options it
    gives (Serve's proxy or HAProxy binds ``http_options.host``), and a real
    redis-server it starts, whose listening socket is read back from /proc."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it)")
    from serve.cli import build_parser, deploy
    from serve.cli import state as cli_state
    from serve.local import free_port, ray_head, stop_pid

    state_dir = tmp_path / ".abserve"
    monkeypatch.setattr(cli_state, "STATE_DIR", state_dir)
    monkeypatch.setattr(deploy, "STATE_DIR", state_dir)
    seen: dict[str, Any] = {}

    class Head:
        pid = 4242

        def poll(self) -> None:
            return None

    real_popen = ray_head.subprocess.Popen

    def popen(cmd: list[str], **kw: Any) -> Any:
        if cmd[1:3] != ["start", "--head"]:
            seen["redis_cmd"] = cmd
            return real_popen(cmd, **kw)  # the redis-server: real
        seen["ray_start"], seen["ray_env"] = cmd, kw["env"]
        return Head()

    def serve_start(**kw: Any) -> None:
        seen["serve_start"] = kw

    fake_ray = types.ModuleType("ray")
    fake_serve = types.ModuleType("ray.serve")
    fake_serve.start = serve_start  # type: ignore[attr-defined]
    fake_ray.serve = fake_serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    monkeypatch.setitem(sys.modules, "ray.serve", fake_serve)
    monkeypatch.setattr(ray_head.subprocess, "Popen", popen)
    monkeypatch.setattr(deploy, "wait_for_gcs", lambda *a, **kw: None)
    monkeypatch.setattr(deploy, "check_before_deploy", lambda first, **kw: None)
    monkeypatch.setattr(deploy, "connect", lambda address, **kw: None)
    monkeypatch.setattr(deploy, "deploy_apps", lambda cs: seen.setdefault("deployed", cs))
    monkeypatch.setattr(deploy, "wait_running", lambda name, t: None)
    monkeypatch.setattr(deploy, "_wait_ready", lambda url, t: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for flag in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY"):
        monkeypatch.delenv(flag, raising=False)  # cmd_up sets them in this process

    config = tmp_path / "abserve.yaml"
    config.write_text(yaml.safe_dump({
        "models": [{"version": "v1"}],
        "experiment": {"baseline": "v1", "arms": [{"version": "v1", "weight": 100}]},
        "http": {"host": host, "port": 8123},
    }))
    redis_port = free_port()
    args = build_parser().parse_args(["up", "-c", str(config), "--redis-port", str(redis_port)])
    try:
        assert deploy.cmd_up(args) == 0
        state = cli_state.read_state()
        redis_pid = int(state["redis_pid"])
        # The redis-server up started: its command line, and where it really listens.
        cmd = seen["redis_cmd"]
        assert cmd[cmd.index("--bind") + 1] == "127.0.0.1" and "--requirepass" not in cmd
        assert _listening_ips(redis_pid, redis_port) == {"127.0.0.1"}
    finally:
        if cli_state.state_file().exists():
            pid = cli_state.read_state().get("redis_pid")
            if pid:
                stop_pid(int(pid))
    cmd = seen["ray_start"]
    assert cmd[1:3] == ["start", "--head"]
    assert "--node-ip-address=127.0.0.1" in cmd and "--dashboard-host=127.0.0.1" in cmd
    assert seen["ray_env"]["RAY_SERVE_ENABLE_HA_PROXY"] == "1"  # throughput: HAProxy
    # Serve's HTTP ingress (HAProxy's frontend, or Serve's proxy) binds http.host.
    assert seen["serve_start"]["http_options"] == {"host": host, "port": 8123}
    assert seen["deployed"][0].cache.redis_url == f"redis://127.0.0.1:{redis_port}/0"
