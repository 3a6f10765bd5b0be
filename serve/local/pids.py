"""Processes abserve started, stopped by PID: never by name, never all at once.

Several clusters share one machine (a test session, a benchmark, an
``abserve up``); stopping by name would take the others' processes too.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import time
from typing import Any

__all__ = ["pid_alive", "psutil_module", "stop_pid"]


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_pid(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM, wait, then SIGKILL: one process we started, by PID.

    A child of ours is reaped here, so that it does not linger as a zombie
    that still looks alive.
    """
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if not pid_alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def psutil_module() -> Any:
    """psutil ships inside Ray (``ray/thirdparty_files``), on the path once ray is imported."""
    importlib.import_module("ray")
    return importlib.import_module("psutil")
