"""What router metrics cost per request: the buffered request path, the deferred hand-over
to Ray's metric objects, and (for comparison) recording straight into Ray on every request.

    .venv/bin/python -m benchmarks.metrics_cost

Starts a small local Ray (1 CPU, no dashboard) for the Ray part and stops it. Run in a
driver, Serve adds no deployment/replica/application tags; in a replica it does, and each
tag adds about two microseconds to every Ray record (not to the buffered request path).
"""

from __future__ import annotations

import time

from router.dataplane.recorder import BufferedRecorder
from serve.telemetry import MetricSpec, ray_metric_factory


class _Null:
    def __init__(self, spec: MetricSpec) -> None:
        pass

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        pass

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        pass


def _per_request_us(fn: object, n: int) -> float:
    started = time.perf_counter()
    fn(n)  # type: ignore[operator]
    return (time.perf_counter() - started) / n * 1e6


def _traffic(rec: BufferedRecorder, n: int) -> None:
    """What RouterCore records for one cache-miss request: one look-up, one request."""
    arms = ("v1", "v2")
    for i in range(n):
        arm = arms[i % 10 == 0]
        rec.cache(arm, 0, 1, 0)
        rec.request(arm, arm, "ok", 3.0 + (i % 40))


def main(n: int = 100_000) -> None:
    rec = BufferedRecorder(_Null, "bench")
    _traffic(rec, 1000)
    rec.snapshot()
    path = _per_request_us(lambda k: _traffic(rec, k), n)
    snap_started = time.perf_counter()
    snap = rec.snapshot()
    snap_us = (time.perf_counter() - snap_started) / n * 1e6
    print(f"request path (buffered, no Ray):   {path:6.2f} us/request")
    print(f"snapshot (event-loop thread):       {snap_us:6.3f} us/request")

    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    try:
        ray_rec = BufferedRecorder(ray_metric_factory, "bench")
        _traffic(ray_rec, n)
        snap = ray_rec.snapshot()
        emit = _per_request_us(lambda k: ray_rec.emit(snap), n)
        print(f"emit to Ray (worker thread):        {emit:6.2f} us/request")

        req = ray_rec.metrics["abserve_requests"]
        lat = ray_rec.metrics["abserve_request_latency_ms"]
        cache = ray_rec.metrics["abserve_cache_lookups"]
        tags = {"experiment": "bench", "arm": "v1", "version": "v1", "outcome": "ok"}
        ctags = {"experiment": "bench", "version": "v1", "result": "miss"}

        def direct(k: int) -> None:
            for i in range(k):
                cache.inc(1, ctags)
                req.inc(1, tags)
                lat.observe(3.0 + (i % 40), tags)

        m = n // 5
        print(f"unbuffered (3 Ray records/request): {_per_request_us(direct, m):6.2f} us/request")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
