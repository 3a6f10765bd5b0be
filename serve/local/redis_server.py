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
from collections.abc import Sequence
from pathlib import Path

from serve.local.pids import stop_pid

__all__ = ["redis_command", "start_redis"]


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
    port: int, log_path: Path, *, password: str | None = None
) -> subprocess.Popen[bytes]:
    """A throwaway redis-server on loopback: no persistence, no protected-mode surprises.

    Returns once it answers PING; raises FileNotFoundError when redis-server is
    not installed (``abserve up`` then falls back to an in-process cache).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        redis_command(binary, port, log_path, password=password),
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
