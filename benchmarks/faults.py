"""Fault injection against a live Ray Serve application, by PID (issue 5).

Shared by the chaos suite (tests/integration/test_chaos_faults.py) and the soak
(benchmarks/soak.py). Every function acts on processes of the Ray cluster the
caller is connected to (``ray.init``) or on a redis-server the caller started:
PIDs come from the GCS actor table, never from a process name. The cluster is
assumed to be on this host (a local test or soak cluster).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

__all__ = [
    "actor_pids",
    "controller_pid",
    "deployment_running",
    "kill_pids",
    "replica_pids",
    "set_fault_all",
    "shutdown_serve",
    "wait_for",
    "wait_serve_answers",
]


def actor_pids(class_name: str) -> list[int]:
    """PIDs of the ALIVE actors of one class, from the GCS actor table.

    ``ray.util.state`` needs the dashboard, which the soak's cluster runs
    without; the GCS table has the PID too.
    """
    import ray

    table: dict[str, Any] = ray._private.state.actors()  # noqa: SLF001
    return sorted(
        int(a["Pid"]) for a in table.values()
        if a.get("ActorClassName") == class_name and a.get("State") == "ALIVE" and a.get("Pid")
    )


def replica_pids(app: str, deployment: str) -> list[int]:
    """PIDs of a deployment's live replica processes (``ServeReplica:<app>:<deployment>``)."""
    return actor_pids(f"ServeReplica:{app}:{deployment}")


def controller_pid() -> int:
    """PID of Ray Serve's controller actor (not abserve's experiment controller)."""
    pids = actor_pids("ServeController")
    if len(pids) != 1:
        raise RuntimeError(f"expected one live ServeController, found PIDs {pids}")
    return pids[0]


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.25, what: str = "") -> float:
    """Poll until ``predicate()`` is true; seconds it took; TimeoutError after ``timeout_s``."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what or predicate} not true after {timeout_s}s")
        time.sleep(interval_s)


_LOOP: Any = None


def _handle_loop() -> Any:
    """One event loop in a thread for handle calls: in Serve's throughput mode a
    handle's router runs on the caller's loop, so a plain synchronous caller (the
    soak's driver) cannot use ``.result()``."""
    global _LOOP
    if _LOOP is None:
        from benchmarks.runner import HandleLoop

        _LOOP = HandleLoop()
    return _LOOP


def shutdown_serve() -> None:
    """``serve.shutdown()`` on the loop that made this module's handles, if any."""
    from ray import serve

    if _LOOP is None:
        serve.shutdown()
    else:
        _LOOP.shutdown_serve()
        _LOOP.close()


def set_fault_all(
    app: str, deployment: str, *, error_rate: float = 0.0, delay_s: float = 0.0,
    timeout_s: float = 30.0,
) -> set[int]:
    """``set_fault`` on every live replica of a deployment, and on every router replica's
    colocated copy of that version; the PIDs that got it.

    A handle call reaches one replica of the router's choice, so send several at
    once, and again, until every PID in the actor table has answered: the
    replicas get the fault within a round trip or two of each other.
    """
    import asyncio

    from ray import serve

    from serve.app import ROUTER_DEPLOYMENT

    async def reach_all() -> set[int]:
        handle = serve.get_deployment_handle(deployment, app)
        want = set(replica_pids(app, deployment))
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while not want <= done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"set_fault reached {sorted(done)} of {sorted(want)}")
            calls = [handle.set_fault.remote(error_rate=error_rate, delay_s=delay_s)
                     for _ in range(4 * max(1, len(want)))]
            done.update(int(pid) for pid in await asyncio.gather(*calls))
            want = set(replica_pids(app, deployment)) or want
        return done

    async def reach_colocated() -> set[int]:
        """The same fault on every router replica's colocated copy of the version, if any."""
        router = serve.get_deployment_handle(ROUTER_DEPLOYMENT, app)
        want = set(replica_pids(app, ROUTER_DEPLOYMENT))
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while not want <= done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"colocated set_fault reached {sorted(done)} of {sorted(want)}")
            calls = [router.set_colocated_fault.remote(deployment, error_rate=error_rate,
                                                       delay_s=delay_s)
                     for _ in range(4 * max(1, len(want)))]
            pids = await asyncio.gather(*calls)
            if all(p is None for p in pids):
                return set()  # not colocated in this app
            done.update(int(p) for p in pids if p is not None)
            want = set(replica_pids(app, ROUTER_DEPLOYMENT)) or want
        return done

    result: set[int] = _handle_loop().call(reach_all(), timeout_s + 5)
    result |= _handle_loop().call(reach_colocated(), timeout_s + 5)
    return result


def deployment_running(app: str, deployment: str, replicas: int,
                       exclude: set[int] | None = None) -> bool:
    """Serve reports the deployment HEALTHY with ``replicas`` RUNNING replicas whose
    processes are alive and none of ``exclude`` (the PIDs just killed)."""
    from ray import serve

    status = serve.status().applications[app].deployments[deployment]
    if str(getattr(status.status, "value", status.status)) != "HEALTHY":
        return False
    running = sum(n for state, n in status.replica_states.items()
                  if str(getattr(state, "value", state)) == "RUNNING")
    if running != replicas:
        return False
    pids = set(replica_pids(app, deployment))
    return len(pids) == replicas and not (pids & (exclude or set()))


def wait_serve_answers(app: str, timeout_s: float) -> float:
    """Seconds until ``serve.status()`` answers again and shows ``app`` RUNNING."""
    from ray import serve

    def ok() -> bool:
        status = serve.status().applications[app].status
        return str(getattr(status, "value", status)) == "RUNNING"

    return wait_for(ok, timeout_s, interval_s=0.5, what=f"serve.status() shows {app} RUNNING")
