"""Fault injection against a live Ray Serve application, by PID (issue 5).

Shared by the chaos suite (tests/integration/test_chaos_faults.py) and the soak
(benchmarks/soak.py). Every function acts on processes of the Ray cluster the
caller is connected to (``ray.init``) or on a redis-server the caller started:
PIDs come from the GCS actor table, never from a process name. The cluster is
assumed to be on this host (a local test or soak cluster).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

_log = logging.getLogger("abserve.bench")

__all__ = [
    "HandleLoop",
    "actor_pids",
    "controller_pid",
    "deployment_running",
    "kill_pids",
    "reach_replicas",
    "replica_pids",
    "set_fault_all",
    "set_log_sample_all",
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


class HandleLoop:
    """One event loop in a thread for every DeploymentHandle call the bench makes.

    Throughput mode runs a handle's router on the caller's event loop, so a
    plain synchronous driver cannot use handles; and handles must be shut down
    on the loop that made them, hence ``serve.shutdown_async()`` runs here too.
    """

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Any, timeout_s: float = 30) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stats(self, app: str, deployment: str) -> dict[str, Any]:
        """A deployment's ``stats()`` (backend calls and rows); {} if it has none."""
        from ray import serve

        async def call() -> dict[str, Any]:
            handle = serve.get_deployment_handle(deployment, app_name=app)
            return dict(await handle.stats.remote())

        try:
            return dict(self.call(call(), 10))
        except Exception as exc:  # noqa: BLE001 - stats are a nice-to-have in the report
            _log.warning("stats of %s/%s unavailable: %s", app, deployment, exc)
            return {}

    def shutdown_serve(self) -> None:
        from ray import serve

        self.call(serve.shutdown_async(), 120)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def shutdown_serve_and_close(self) -> None:
        """The private Ray's way to shut Serve down while this loop holds handles."""
        self.shutdown_serve()
        self.close()


def _handle_loop() -> Any:
    """One event loop in a thread for handle calls: in Serve's throughput mode a
    handle's router runs on the caller's loop, so a plain synchronous caller (the
    soak's driver) cannot use ``.result()``."""
    global _LOOP
    if _LOOP is None:
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


async def reach_replicas(
    app: str, deployment: str, call: Callable[[Any], Awaitable[int | None]], *,
    timeout_s: float, what: str = "set_fault",
) -> set[int]:
    """``call(handle)`` until every live replica of ``deployment`` has answered with its PID.

    A handle call reaches one replica of the router's choice, so send several at
    once, and again, until every PID in the actor table has answered. A call that
    answers None everywhere (nothing to do in this app) ends it with no PIDs.
    """
    import asyncio

    from ray import serve

    handle = serve.get_deployment_handle(deployment, app)
    want = set(replica_pids(app, deployment))
    done: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while not want <= done:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} reached {sorted(done)} of {sorted(want)}")
        pids = await asyncio.gather(*(call(handle) for _ in range(4 * max(1, len(want)))))
        if all(p is None for p in pids):
            return set()
        done.update(int(p) for p in pids if p is not None)
        want = set(replica_pids(app, deployment)) or want
    return done


def set_log_sample_all(app: str, percent: float | None, *, loop: HandleLoop | None = None,
                       timeout_s: float = 30.0) -> set[int]:
    """``set_log_sample`` on every live router replica of ``app`` (the prediction log keeps
    ``percent`` of the requests; None: the config's shares); the PIDs that got it, empty
    when the app's log is off. ``loop``: the caller's handle loop (the bench's), else this
    module's."""
    from serve.app import ROUTER_DEPLOYMENT

    result: set[int] = (loop or _handle_loop()).call(reach_replicas(
        app, ROUTER_DEPLOYMENT, lambda h: h.set_log_sample.remote(percent),
        timeout_s=timeout_s, what="set_log_sample",
    ), timeout_s + 5)
    return result


def set_fault_all(
    app: str, deployment: str, *, error_rate: float = 0.0, delay_s: float = 0.0,
    timeout_s: float = 30.0,
) -> set[int]:
    """``set_fault`` on every live replica of a deployment, and on every router replica's
    colocated copy of that version; the PIDs that got it (within a round trip or two
    of each other)."""
    from serve.app import ROUTER_DEPLOYMENT

    fault = {"error_rate": error_rate, "delay_s": delay_s}
    loop = _handle_loop()
    result: set[int] = loop.call(reach_replicas(
        app, deployment, lambda h: h.set_fault.remote(**fault), timeout_s=timeout_s,
    ), timeout_s + 5)
    result |= loop.call(reach_replicas(
        app, ROUTER_DEPLOYMENT, lambda h: h.set_colocated_fault.remote(deployment, **fault),
        timeout_s=timeout_s, what="colocated set_fault",
    ), timeout_s + 5)
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
