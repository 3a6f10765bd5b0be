"""Serve's HAProxy processes, found by PID so that a teardown can stop them.

In the throughput ingress mode Serve's proxy actor spawns ``haproxy``; it is
neither a Ray actor nor a direct child of the driver, and it can outlive
``ray.shutdown()`` or a stopped Ray head, holding its ports. Its PIDs are
read (HAProxy restarts on reloads, so right before the teardown) from the
process tree under the driver or the head, never by name machine-wide.
"""

from __future__ import annotations

import contextlib
import os

from serve.local.pids import psutil_module

__all__ = ["haproxy_pids"]


def haproxy_pids(root_pid: int | None = None) -> list[int]:
    """PIDs of the ``haproxy`` processes below ``root_pid`` (default: this process)."""
    with contextlib.suppress(Exception):
        psutil = psutil_module()
        root = psutil.Process(os.getpid() if root_pid is None else root_pid)
        return sorted(p.pid for p in root.children(recursive=True) if p.name() == "haproxy")
    return []
