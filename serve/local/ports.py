"""Loopback ports: is one free, pick a free one, wait until one answers.

Every local process abserve starts (redis-server, a Ray head, a benchmark's
server, a test's Serve proxy) binds a port picked here, so that two of them
(a test session beside a running ``abserve up``) never meet on one port.
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Iterable

__all__ = ["LISTEN_PORTS", "free_port", "free_ports", "free_range", "port_free", "port_open"]

# Listening ports are drawn below Linux's ephemeral range (32768-60999) and above
# Ray's worker ports (10002-19999): a port the kernel hands out for outgoing
# connections (Ray opens many) can be taken between the pick and the bind.
LISTEN_PORTS = (20000, 32000)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``port`` on ``host`` now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port free on 127.0.0.1 now, outside the ephemeral and Ray worker ranges."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*LISTEN_PORTS)
        if port_free(port):
            return port
    with socket.socket() as s:  # the range is full: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` different free ports, for one process that binds them all (a Ray head's
    dashboard, metrics, HTTP and gRPC ports): ``free_port`` alone may pick one twice (seen
    once: the session's dashboard and metrics ports drew the same one, and Ray refused)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def free_range(width: int, avoid: Iterable[int] = ()) -> int:
    """The low end of ``width + 1`` consecutive ports, all free now and none in ``avoid``
    (ports already picked for something else: Serve's direct-ingress replicas bind any
    port of their range, and once took the HAProxy stats port picked beside it)."""
    taken = set(avoid)
    while True:
        low = min(free_port(), LISTEN_PORTS[1] - width)
        ports = range(low, low + width + 1)
        if not taken.intersection(ports) and all(port_free(p) for p in ports):
            return low


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    """Whether something accepts connections on ``port`` now."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout_s):
        return True
    return False
