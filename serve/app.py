"""build_app(config) -> Application: the one place that binds deployments.

Replicas, resources and batching reach the deployments through
``.options(...)`` here and nowhere else, straight from the validated config.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve.config import AbserveConfig, sanitize_name

__all__ = ["CONTROLLER_DEPLOYMENT", "ROUTER_DEPLOYMENT", "build_app", "model_deployment_name"]

ROUTER_DEPLOYMENT = "router"
CONTROLLER_DEPLOYMENT = "controller"


def model_deployment_name(model: str, version: str) -> str:
    return sanitize_name(f"{model}-{version}")


def build_app(config: AbserveConfig) -> Application:
    from deployments.model import ModelDeployment
    from router.controller import ExperimentController
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
    config_dict = config.model_dump(mode="json")
    controller = ExperimentController.options(  # type: ignore[attr-defined]
        name=CONTROLLER_DEPLOYMENT,
        # The durable state is a file on the head node's disk (state.dir).
        ray_actor_options={"num_cpus": 0.05, "resources": {"node:__internal_head__": 0.001}},
    ).bind(config_dict)
    return Router.options(  # type: ignore[attr-defined]
        name=ROUTER_DEPLOYMENT,
        num_replicas=config.router.num_replicas,
        ray_actor_options={"num_cpus": config.router.num_cpus},
        max_ongoing_requests=config.router.max_ongoing_requests,
    ).bind(config_dict, handles, controller)
