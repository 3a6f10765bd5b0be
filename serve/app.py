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
from ray.serve.schema import LoggingConfig

from serve.config import AbserveConfig, AutoscalingConfig, ModelConfig, model_deployment_name

__all__ = ["CONTROLLER_DEPLOYMENT", "ROUTER_DEPLOYMENT", "build_app", "model_deployment_name"]

ROUTER_DEPLOYMENT = "router"
CONTROLLER_DEPLOYMENT = "controller"
# The controller answers polls and admin calls in microseconds: a sliver of a CPU, and
# room for every router replica's poll plus admin calls at once.
CONTROLLER_NUM_CPUS = 0.05
CONTROLLER_MAX_ONGOING = 1000


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
    """What a version's replicas are built from, and so what restarts them: not its
    autoscaling bounds (Serve applies those to running replicas), nor whether the router
    also holds a copy (that restarts the router only)."""
    return m.model_dump(mode="json", exclude={"autoscaling", "colocated"})


def _logging(config: AbserveConfig) -> LoggingConfig:
    """Serve's per-request access log only when asked for (router.access_log)."""
    return LoggingConfig(enable_access_log=config.router.access_log)


def build_app(config: AbserveConfig, *, model_deployment: Any = None) -> Application:
    """The application for ``config``: one deployment per version, the controller, the router.

    ``model_deployment`` replaces the production model deployment; only drills
    and tests pass one (benchmarks/faulty_model.py).
    """
    from router.controlplane.controller import ExperimentController
    from router.ingress import Router

    if model_deployment is None:
        from deployments.model import ModelDeployment as model_deployment

    handles: dict[str, Any] = {}
    for m in config.models:
        actor_options: dict[str, Any] = {"num_cpus": m.num_cpus}
        if m.num_gpus:
            actor_options["num_gpus"] = m.num_gpus
        if m.resources:
            actor_options["resources"] = dict(m.resources)
        settings = _code_relevant(m)
        handles[m.version] = model_deployment.options(
            name=model_deployment_name(config.model, m.version),
            **_replicas(m.num_replicas, m.autoscaling),
            ray_actor_options=actor_options,
            max_ongoing_requests=m.max_ongoing_requests,
            logging_config=_logging(config),
            max_queued_requests=m.max_queued_requests,
            version=_version(config.registry, config.model, settings),
            _internal=True,
        ).bind(config.registry, config.model, settings)
    config_dict = config.model_dump(mode="json")
    controller = ExperimentController.options(  # type: ignore[attr-defined]
        name=CONTROLLER_DEPLOYMENT,
        # One replica: the single writer of the experiment state. Its durable state is
        # a file on the head node's disk (state.dir), so it runs there.
        num_replicas=1,
        max_ongoing_requests=CONTROLLER_MAX_ONGOING,
        ray_actor_options={"num_cpus": CONTROLLER_NUM_CPUS,
                           "resources": {"node:__internal_head__": 0.001}},
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
        logging_config=_logging(config),
        backpressure_config=BackpressureConfig(
            status_code=503, retry_after_s=config.router.retry_after_s
        ),
    ).bind(config_dict, handles, controller, model_deployment.func_or_class)
