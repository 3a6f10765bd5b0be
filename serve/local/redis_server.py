"""A throwaway redis-server on loopback, for ``abserve up``, the benchmarks and the tests.

Never on 6379: that is also Ray's default GCS port, and a Ray head started
beside it would fail to bind (the callers pass a port from ``free_port``).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from serve.local.pids import stop_pid

__all__ = ["eviction_warning", "redis_command", "start_redis"]


def redis_command(
    binary: str, port: int, log_path: Path, *, password: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """redis-server bound to loopback only; ``password`` adds ``--requirepass``."""
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
           "no", "--daemonize", "no", "--logfile", str(log_path)]
    if password is not None:
        cmd += ["--requirepass", password]
    return [*cmd, *extra]


def start_redis(
    port: int, log_path: Path, *, password: str | None = None,
    maxmemory_mb: int | None = None, eviction: str = "allkeys-lru",
) -> subprocess.Popen[bytes]:
    """A throwaway redis-server on loopback: no persistence, no protected-mode surprises.

    ``maxmemory_mb`` bounds its memory, past which it evicts by ``eviction`` (a cache's
    policy); None leaves redis-server's default, unbounded (maxmemory 0, noeviction).
    Returns once it answers PING; raises FileNotFoundError when redis-server is
    not installed (``abserve up`` then falls back to an in-process cache).
    """
    extra: list[str] = []
    if maxmemory_mb is not None:
        extra = ["--maxmemory", f"{int(maxmemory_mb)}mb", "--maxmemory-policy", eviction]
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        redis_command(binary, port, log_path, password=password, extra=extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as c:
            c.sendall(b"PING\r\n")
            if c.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # up (NOAUTH: a password is set)
                return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_pid(proc.pid)
    raise RuntimeError(f"redis-server did not start on port {port}; see {log_path}")


def eviction_warning(info: Mapping[Any, Any]) -> str | None:
    """What is wrong with a Redis used as the cache, from ``CONFIG GET maxmemory*``:
    unbounded, or bounded but refusing writes instead of evicting (``noeviction``, whose
    full Redis fails every cache write). None when it evicts past a bound."""
    try:
        limit = int(str(info.get("maxmemory", "0")))
    except ValueError:
        limit = 0
    policy = str(info.get("maxmemory-policy", "noeviction"))
    if limit == 0:
        return ("its maxmemory is 0 (unbounded): cached predictions grow until the node runs "
                "out of memory; set maxmemory and maxmemory-policy allkeys-lru")
    if policy == "noeviction":
        return (f"its maxmemory-policy is noeviction: past {limit // 2**20} MB every cache "
                "write fails instead of evicting; set maxmemory-policy allkeys-lru")
    return None
