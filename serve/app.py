"""build_app(config) -> Application: the one place that binds deployments.

Replicas, resources and batching reach the deployments through
``.options(...)`` here and nowhere else, straight from the validated config.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from ray.serve import Application
from ray.serve.config import BackpressureConfig

from serve.config import AbserveConfig, AutoscalingConfig, ModelConfig, sanitize_name

__all__ = ["CONTROLLER_DEPLOYMENT", "ROUTER_DEPLOYMENT", "build_app", "model_deployment_name"]

ROUTER_DEPLOYMENT = "router"
CONTROLLER_DEPLOYMENT = "controller"


def model_deployment_name(model: str, version: str) -> str:
    return sanitize_name(f"{model}-{version}")


@cache
def _source_digest() -> str:
    """A digest of the serving code, so new code restarts replicas and old code does not."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for package in ("deployments", "models", "router", "serve"):
        for path in sorted((root / package).rglob("*.py")):
            h.update(path.read_bytes())
    return h.hexdigest()


def _version(*parts: Any) -> str:
    """Serve's deployment version: replicas restart only when this changes.

    Without it, every ``serve.run`` from a new driver gets a random code version
    and restarts every replica (Ray 2.60 ``client.py``); with it, adding a
    version (``abserve deploy-version``) leaves the running versions alone.
    ``version`` is accepted by ``.options`` only with ``_internal=True``;
    tests/integration/test_cli.py fails if a Ray upgrade changes that.
    """
    blob = json.dumps([_source_digest(), *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _replicas(num_replicas: int, autoscaling: AutoscalingConfig | None) -> dict[str, Any]:
    """A fixed replica count or Serve's autoscaling_config: Serve refuses both at once."""
    if autoscaling is None:
        return {"num_replicas": num_replicas}
    return {"autoscaling_config": autoscaling.serve_autoscaling_config()}


def _code_relevant(m: ModelConfig) -> dict[str, Any]:
    """What restarts a version's replicas: not its autoscaling bounds (Serve applies
    those to running replicas)."""
    return m.model_dump(mode="json", exclude={"autoscaling"})


def build_app(config: AbserveConfig) -> Application:
    from deployments.model import ModelDeployment
    from router.controlplane.controller import ExperimentController
    from router.ingress import Router

    handles: dict[str, Any] = {}
    for m in config.models:
        actor_options: dict[str, Any] = {"num_cpus": m.num_cpus}
        if m.num_gpus:
            actor_options["num_gpus"] = m.num_gpus
        if m.resources:
            actor_options["resources"] = dict(m.resources)
        handles[m.version] = ModelDeployment.options(  # type: ignore[attr-defined]
            name=model_deployment_name(config.model, m.version),
            **_replicas(m.num_replicas, m.autoscaling),
            ray_actor_options=actor_options,
            max_ongoing_requests=m.max_ongoing_requests,
            max_queued_requests=m.max_queued_requests,
            version=_version(config.registry, config.model, _code_relevant(m)),
            _internal=True,
        ).bind(
            config.registry,
            config.model,
            m.version,
            max_batch_size=m.max_batch_size,
            batch_wait_timeout_s=m.batch_wait_timeout_s,
            adaptive_batch_wait=m.adaptive_batch_wait,
            precision=m.precision,
            num_gpus=m.num_gpus,
        )
    config_dict = config.model_dump(mode="json")
    controller = ExperimentController.options(  # type: ignore[attr-defined]
        name=CONTROLLER_DEPLOYMENT,
        # The durable state is a file on the head node's disk (state.dir).
        ray_actor_options={"num_cpus": 0.05, "resources": {"node:__internal_head__": 0.001}},
    ).bind(config_dict)
    return Router.options(  # type: ignore[attr-defined]
        name=ROUTER_DEPLOYMENT,
        **_replicas(config.router.num_replicas, config.router.autoscaling),
        ray_actor_options={"num_cpus": config.router.num_cpus,
                           **({"resources": dict(config.router.resources)}
                              if config.router.resources else {})},
        max_ongoing_requests=config.router.max_ongoing_requests,
        # Serve's own rejection (a backstop: the router's max_inflight sheds first) also
        # says when to come back; Ray 2.60 answers it with this status and header.
        max_queued_requests=config.router.max_queued_requests,
        backpressure_config=BackpressureConfig(
            status_code=503, retry_after_s=config.router.retry_after_s
        ),
    ).bind(config_dict, handles, controller)
