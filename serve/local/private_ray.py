"""A private Ray: started by this process (``ray.init(address="local")``), joined by no one.

The benchmarks, the soak, ``benchmarks.call_cost`` and the integration test
session each run their own Ray and Serve beside whatever else runs on the
machine (a test session, an ``abserve up``). Two things make that safe:

- ``use_private_ray_env`` moves Serve's fixed default ports in the throughput
  mode (HAProxy's stats and metrics ports, the fallback proxy, the
  direct-ingress port ranges) to free ones, before Ray starts;
- ``private_ray`` stops what it started on the way out: Serve, Ray, then the
  HAProxy processes Serve's proxy spawned, by PID (they are not Ray actors
  and can outlive ``ray.shutdown()``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from serve.config import grpc_options
from serve.local.env import IngressMode, ray_env
from serve.local.haproxy import haproxy_pids, stop_haproxy
from serve.local.ports import free_ports, free_range

__all__ = [
    "PrivateRay", "private_ray", "private_ray_env", "stop_private_ray", "use_private_ray_env",
]

log = logging.getLogger(__name__)

# Serve's throughput mode binds these fixed ports by default (Ray 2.60).
_SERVE_FIXED_PORTS = (
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
    "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
)
_DIRECT_INGRESS_RANGE = 100


def private_ray_env(mode: IngressMode, environ: Mapping[str, str],
                    avoid: Iterable[int] = ()) -> dict[str, str]:
    """What a private Ray in ``mode`` needs on top of ``environ``: the ingress flags of
    ``mode``, and everything else only where ``environ`` does not already say otherwise.
    Serve's fixed ports differ from each other and from ``avoid`` (ports the caller
    picked for the same Ray), and its direct-ingress ranges hold none of them.

    For this process (``use_private_ray_env``) or a ``ray start`` child's environment.
    """
    env = ray_env(mode)
    defaults = {
        "RAY_USAGE_STATS_ENABLED": "0",
        # Deleting an ingress app waits out a 30 s drain for clients still connected
        # directly; benchmarks and tests delete apps only after their load stopped.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }
    if mode == "throughput":
        picked = set(avoid)
        fixed = [p for p in free_ports(len(_SERVE_FIXED_PORTS) + len(picked))
                 if p not in picked][:len(_SERVE_FIXED_PORTS)]
        picked.update(fixed)
        defaults.update((var, str(port)) for var, port in zip(_SERVE_FIXED_PORTS, fixed,
                                                              strict=True))
        for proto in ("HTTP", "GRPC"):
            base = free_range(_DIRECT_INGRESS_RANGE, avoid=picked)
            picked.update(range(base, base + _DIRECT_INGRESS_RANGE + 1))
            defaults[f"RAY_SERVE_DIRECT_INGRESS_MIN_{proto}_PORT"] = str(base)
            defaults[f"RAY_SERVE_DIRECT_INGRESS_MAX_{proto}_PORT"] = str(
                base + _DIRECT_INGRESS_RANGE)
    env.update({k: v for k, v in defaults.items() if k not in environ})
    return env


def use_private_ray_env(mode: IngressMode, avoid: Iterable[int] = ()) -> None:
    """This process's environment for a private Ray in ``mode`` (Ray reads it at start).

    The ingress flags of ``mode`` are set; everything else only where the
    environment does not already say otherwise.
    """
    os.environ.update(private_ray_env(mode, os.environ, avoid))


@dataclass
class PrivateRay:
    """The running private Ray; its owner may change how Serve is shut down.

    ``shutdown_serve`` runs first at teardown (None: Serve is already down). A
    driver holding DeploymentHandles must shut Serve down on the event loop
    that made them, so it passes its own.
    """

    http_port: int
    shutdown_serve: Callable[[], None] | None
    seen_haproxy: set[int] = field(default_factory=set)

    def remember_haproxy(self) -> None:
        """Note the HAProxy PIDs now, for a run that may restart Serve's proxy."""
        self.seen_haproxy.update(haproxy_pids())


@contextlib.contextmanager
def private_ray(
    mode: IngressMode, *, num_cpus: int, http_port: int, grpc_port: int | None = None,
    **ray_init_options: Any,
) -> Iterator[PrivateRay]:
    """Ray and Serve (HTTP on 127.0.0.1:``http_port``, and the OIP gRPC ingress on
    ``grpc_port`` when given) for the ``with`` block, then stopped.

    ``ray_init_options`` go to ``ray.init`` over these defaults: no dashboard,
    errors only, no worker logs on the driver.
    """
    use_private_ray_env(mode, avoid=[http_port, *([grpc_port] if grpc_port else []),
                                     *(v for k, v in ray_init_options.items()
                                       if k.endswith("_port") and isinstance(v, int))])
    import ray
    from ray import serve

    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR,
                               "log_to_driver": False, **ray_init_options}
    ray.init(address="local", num_cpus=num_cpus, **options)  # never join someone else's
    cluster = PrivateRay(http_port, shutdown_serve=serve.shutdown)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port},
                    grpc_options=grpc_options(grpc_port))
        yield cluster
    finally:
        stop_private_ray(cluster.shutdown_serve, cluster.seen_haproxy)


def stop_private_ray(shutdown_serve: Callable[[], None] | None,
                     seen_haproxy: Iterable[int] = ()) -> None:
    """Stop Serve, Ray, then HAProxy by PID.

    ``shutdown_serve`` may fail: ``ray.shutdown()`` stops the actors anyway. The
    HAProxy PIDs are looked up before Serve goes (plus any in ``seen_haproxy``)
    and stopped after.
    """
    import ray

    haproxy = sorted(set(seen_haproxy) | set(haproxy_pids()))
    if shutdown_serve is not None:
        try:
            shutdown_serve()
        except Exception as exc:  # noqa: BLE001 - ray.shutdown() below stops it all
            log.warning("serve shutdown failed: %s", exc)
    ray.shutdown()
    stop_haproxy(haproxy)
