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

from serve.local.pids import psutil_module, stop_pid

__all__ = ["haproxy_config_dirs", "haproxy_pids", "stop_haproxy"]


def haproxy_pids(root_pid: int | None = None) -> list[int]:
    """PIDs of the ``haproxy`` processes below ``root_pid`` (default: this process)."""
    with contextlib.suppress(Exception):
        psutil = psutil_module()
        root = psutil.Process(os.getpid() if root_pid is None else root_pid)
        return sorted(p.pid for p in root.children(recursive=True) if p.name() == "haproxy")
    return []


def _config_dir(cmdline: list[str]) -> str | None:
    """The directory of the config an ``haproxy -f PATH`` command line runs (Serve writes
    one per Ray node: /tmp/haproxy-serve/<node id>/haproxy.cfg)."""
    for i, arg in enumerate(cmdline[:-1]):
        if arg == "-f":
            return os.path.dirname(cmdline[i + 1])
    return None


def haproxy_config_dirs(pids: list[int] | set[int]) -> set[str]:
    """The config directories (one per Ray node) these HAProxy processes run from."""
    dirs: set[str] = set()
    with contextlib.suppress(Exception):
        psutil = psutil_module()
        for pid in pids:
            with contextlib.suppress(Exception):
                d = _config_dir(psutil.Process(pid).cmdline())
                if d:
                    dirs.add(d)
    return dirs


def stop_haproxy(pids: list[int] | set[int], timeout_s: float = 5.0,
                 config_dirs: set[str] | None = None) -> None:
    """Stop these HAProxy processes by PID, then the ones that replaced them.

    Serve reloads HAProxy when its routes change (a node leaving during a teardown is
    one): the new process (``-sf OLD``) runs the same node's config and is no child of
    anything we hold. So after the known PIDs, every haproxy whose ``-f`` config lies in
    one of their config directories (a Ray node's own; ``config_dirs`` adds directories
    noted earlier, for PIDs that are gone by now) is stopped too, twice over for a reload
    during the first round; nothing else machine-wide is touched.
    """
    dirs = haproxy_config_dirs(pids) | set(config_dirs or ())
    for pid in pids:
        stop_pid(pid, timeout_s=timeout_s)
    with contextlib.suppress(Exception):
        psutil = psutil_module()
        for _ in range(2):
            found = []
            for proc in psutil.process_iter(["name", "cmdline"]):
                cmd = proc.info.get("cmdline") or []
                if proc.info.get("name") == "haproxy" and _config_dir(cmd) in dirs:
                    found.append(proc.pid)
            for pid in found:
                stop_pid(pid, timeout_s=timeout_s)
            if not found:
                break
