"""Autoscaling of one version: a step of load grows it from 1 replica, quiet shrinks it back.

Each call to the version is slowed to 100 ms (the fault hook), so 8 concurrent
clients keep ~8 requests in flight against a target of 2 per replica; the router
merges nothing (batch_max_rows 1), so every request is one ongoing request at
the model. The steps are timed by the same code as `abserve scale-history`
(serve/cli/scaling.py), sampling the replica counts every 0.25 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from models.activity.data import sample_window
from serve.app import model_deployment_name
from serve.cli.scaling import ScaleStep, format_step, replica_counts, watch
from tests.integration.conftest import ServeInstance, serve_app, small_app

APP, PREFIX = "autoscale", "/autoscale"
AUTOSCALING = {
    "min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2,
    "upscale_delay_s": 1, "downscale_delay_s": 3,
    "metrics_interval_s": 0.5, "look_back_period_s": 2,
}
DEPLOYMENT = model_deployment_name("activity", "v1")
CLIENTS = 8


@pytest.fixture(scope="module")
def scaled(serve_instance: ServeInstance, registry_root: str, state_dir: str) -> Iterator[str]:
    config = small_app(
        serve_instance, registry_root, state_dir, APP, ("v1",),
        {"baseline": "v1", "arms": [{"version": "v1", "weight": 100}], "timeout_ms": 5000},
        models=[{"version": "v1", "num_cpus": 0.05, "autoscaling": AUTOSCALING}],
        router={"num_cpus": 0.1, "batch_max_rows": 1},
    )
    yield from serve_app(config, serve_instance, PREFIX)


def _load(url: str, stop: threading.Event, results: list[int]) -> None:
    body = {"features": sample_window(3)}
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            try:
                results.append(client.post(f"{url}/predict", json=body).status_code)
            except httpx.HTTPError:
                results.append(-1)


def _wait(pred: Any, timeout_s: float) -> float | None:
    """Seconds until pred() held, or None after timeout_s."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if pred():
            return time.monotonic() - start
        time.sleep(0.25)
    return None


def test_ray_accepts_the_mapped_config() -> None:
    from ray.serve.config import AutoscalingConfig as RayAutoscaling

    from serve.config import AutoscalingConfig

    mapped = AutoscalingConfig.model_validate({**AUTOSCALING, "initial_replicas": 2})
    ray_config = RayAutoscaling(**mapped.serve_autoscaling_config())
    assert (ray_config.min_replicas, ray_config.max_replicas) == (1, 3)
    assert ray_config.initial_replicas == 2 and ray_config.upscale_delay_s == 1


def test_load_step_scales_up_then_back_down(scaled: str) -> None:
    from ray import serve

    counts = replica_counts(APP)
    assert (counts[DEPLOYMENT].target, counts[DEPLOYMENT].running) == (1, 1), counts
    serve.get_deployment_handle(DEPLOYMENT, app_name=APP).set_fault.remote(delay_s=0.1).result()

    steps: list[ScaleStep] = []
    done = threading.Event()
    watcher = threading.Thread(
        target=watch, args=(APP, 150, 0.25),
        kwargs={"on_step": steps.append, "stop": done.is_set}, daemon=True)
    watcher.start()
    stop, results = threading.Event(), []  # type: ignore[var-annotated]
    clients = [threading.Thread(target=_load, args=(scaled, stop, results), daemon=True)
               for _ in range(CLIENTS)]
    try:
        for c in clients:
            c.start()
        grew = _wait(lambda: replica_counts(APP)[DEPLOYMENT].running >= 2, 30)
        assert grew is not None, f"no second replica within 30 s: {replica_counts(APP)}"
        time.sleep(1.0)  # a little load on the bigger deployment
    finally:
        stop.set()
        for c in clients:
            c.join(15)
    served = len(results)
    assert served > 0 and set(results) == {200}, {s: results.count(s) for s in set(results)}

    def back_to_one() -> bool:
        c = replica_counts(APP)[DEPLOYMENT]
        return (c.target, c.running, c.total) == (1, 1, 1)

    shrank = _wait(back_to_one, 60)
    time.sleep(0.5)  # one more sample for the watcher to close the step
    done.set()
    watcher.join(5)
    mine = [s for s in steps if s.deployment == DEPLOYMENT and s.outcome != "pending"]
    after = "-" if shrank is None else f"{shrank:.1f}s"
    print(f"\nload: {served} requests; second replica running {grew:.1f}s after the load "
          f"started; back to 1 replica {after} after it stopped")
    for s in mine:
        print("  " + format_step(s))
    assert shrank is not None, f"not back to 1 replica within 60 s: {replica_counts(APP)}"
    ups = [s for s in mine if s.direction == "up" and s.outcome == "done"]
    downs = [s for s in mine if s.direction == "down" and s.outcome == "done"]
    assert ups and ups[0].from_replicas == 1 and ups[0].to_replicas >= 2, mine
    assert downs and downs[-1].to_replicas == 1, mine
    assert all(s.duration_s is not None and 0 <= s.duration_s < 60 for s in ups + downs)
