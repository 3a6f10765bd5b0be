"""Per-version num_gpus (fractions allowed): Ray assigns the devices and spreads replicas.

The session cluster declares two logical GPUs (no hardware here), which is all Ray's
scheduler looks at: each replica gets a GPU id and CUDA_VISIBLE_DEVICES, exactly as on a
GPU machine. Without CUDA the backends then run on the CPU (and log it), so the answers
stay correct; the GPU kernels themselves are checked by the ``-m gpu`` backend tests.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from models.activity.data import sample_window
from serve.app import model_deployment_name

from .conftest import ServeInstance, serve_app, small_app

pytestmark = pytest.mark.integration

NAME = "gpuplace"


@pytest.fixture(scope="module")
def gpu_app(
    serve_instance: ServeInstance, registry_root: str, state_dir: str
) -> Iterator[tuple[Any, str]]:
    config = small_app(
        serve_instance, registry_root, state_dir, NAME, ("v1", "v2"),
        {"baseline": "v1", "arms": [{"version": "v1", "weight": 50},
                                    {"version": "v2", "weight": 50}]},
    )
    models = [
        {"version": "v1", "num_cpus": 0.05, "num_gpus": 0.5, "num_replicas": 2},
        {"version": "v2", "num_cpus": 0.05, "num_gpus": 0.5, "num_replicas": 2,
         "precision": "bf16"},
    ]
    config = config.model_copy(update={
        "models": [config.models[0].model_validate(m) for m in models]
    })
    yield from ((config, url) for url in serve_app(config, serve_instance, f"/{NAME}"))


def _replica_stats(config: Any, version: str, replicas: int) -> list[dict[str, Any]]:
    """stats() of every replica of a version (calls until each PID has answered)."""
    from ray import serve

    handle = serve.get_deployment_handle(
        model_deployment_name(config.model, version), app_name=config.app_name
    )
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    while len(seen) < replicas and time.monotonic() < deadline:
        s = handle.stats.remote().result(timeout_s=10)
        seen[s["pid"]] = s
    assert len(seen) == replicas, f"only {len(seen)} of {replicas} replicas answered"
    return list(seen.values())


def test_fractional_gpus_spread_replicas_over_the_gpus(gpu_app: tuple[Any, str]) -> None:
    config, url = gpu_app
    stats = [s for v in ("v1", "v2") for s in _replica_stats(config, v, 2)]
    # 4 replicas x 0.5 GPU on 2 GPUs: Ray gives each replica one device, two per device.
    ids = Counter(tuple(s["gpu_ids"]) for s in stats)
    assert sorted(ids) == [("0",), ("1",)], ids
    assert sorted(ids.values()) == [2, 2], ids
    for s in stats:
        # Ray hands the device to the process: frameworks see it as cuda:0.
        assert s["cuda_visible_devices"] == s["gpu_ids"][0]
        assert s["device"] == "cpu"  # no CUDA here: the backends fell back and logged it
    assert {s["precision"] for s in stats if s["version"] == "v2"} == {"bf16"}

    # And the versions answer as usual.
    for version in ("v1", "v2"):
        r = httpx.post(f"{url}/predict", json={"features": sample_window(3)},
                       headers={"X-Model-Version": version}, timeout=30)
        assert r.status_code == 200, r.text
        probs = r.json()["probabilities"]
        assert len(probs) == 8 and sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
