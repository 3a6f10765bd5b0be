"""build_app(config) -> Application: the one place that binds deployments.

Replicas, resources and batching reach the deployments through
``.options(...)`` here and nowhere else, straight from the validated config.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve.config import AbserveConfig, sanitize_name

__all__ = ["build_app", "model_deployment_name", "ROUTER_DEPLOYMENT"]

ROUTER_DEPLOYMENT = "router"


def model_deployment_name(model: str, version: str) -> str:
    return sanitize_name(f"{model}-{version}")


def build_app(config: AbserveConfig) -> Application:
    from deployments.model import ModelDeployment
    from router.ingress import Router

    handles: dict[str, Any] = {}
    for m in config.models:
        actor_options: dict[str, Any] = {"num_cpus": m.num_cpus}
        if m.num_gpus:
            actor_options["num_gpus"] = m.num_gpus
        handles[m.version] = ModelDeployment.options(  # type: ignore[attr-defined]
            name=model_deployment_name(config.model, m.version),
            num_replicas=m.num_replicas,
            ray_actor_options=actor_options,
            max_ongoing_requests=m.max_ongoing_requests,
            max_queued_requests=m.max_queued_requests,
        ).bind(
            config.registry,
            config.model,
            m.version,
            max_batch_size=m.max_batch_size,
            batch_wait_timeout_s=m.batch_wait_timeout_s,
            precision=m.precision,
            num_gpus=m.num_gpus,
        )
    return Router.options(  # type: ignore[attr-defined]
        name=ROUTER_DEPLOYMENT,
        num_replicas=config.router.num_replicas,
        ray_actor_options={"num_cpus": config.router.num_cpus},
        max_ongoing_requests=config.router.max_ongoing_requests,
    ).bind(config.model_dump(mode="json"), handles)
