"""build_app(config) -> Application: the one place that binds deployments.

Replicas, resources and batching reach the deployments through
``.options(...)`` here and nowhere else, straight from the validated config.

``app`` is the same application for Ray's own tools: ``serve run serve.app:app
config=abserve.yaml``, or ``import_path: serve.app:app`` with ``args: {config: ...}`` in a
Serve config file for ``serve deploy`` and KubeRay's RayService. Serve validates its
arguments with the pydantic model ``AppArgs`` (field-named errors).

No ``from __future__ import annotations`` here, on purpose: Serve reads the builder's
parameter annotation with ``inspect.signature`` and validates ``args`` only when it is the
``AppArgs`` class itself, not the string a postponed annotation would be.
"""

import hashlib
import json
import logging
import os
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.schema import LoggingConfig

from router.controlplane.experiment import Declaration
from serve.config import (
    AbserveConfig,
    AutoscalingConfig,
    ModelConfig,
    load_config,
    model_deployment_name,
)
from serve.serve_config import CONTROLLER_DEPLOYMENT

__all__ = [
    "CONTROLLER_DEPLOYMENT", "ROUTER_DEPLOYMENT", "AppArgs", "app", "build_app",
    "config_from_args", "model_deployment_name",
]

log = logging.getLogger("ray.serve")

ROUTER_DEPLOYMENT = "router"
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
    from serve.offline.replay import replay_gate_result

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
        # What the config declares of the live experiment; a Serve config file sets it too
        # (serve/serve_config.py), so that changing it is Serve's lightweight update.
        user_config=Declaration.of(config).to_user_config(),
        # One replica: the single writer of the experiment state. Its durable state is
        # a file on the head node's disk (state.dir), so it runs there.
        num_replicas=1,
        max_ongoing_requests=CONTROLLER_MAX_ONGOING,
        ray_actor_options={"num_cpus": CONTROLLER_NUM_CPUS,
                           "resources": {"node:__internal_head__": 0.001}},
        # A canary plan's replay gate runs there too, as a Ray Data job on the cluster
        # (the controller's layer may not import serve.offline: it gets the function).
    ).bind(config_dict, replay_gate_result)
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


class AppArgs(BaseModel):
    """The arguments of ``serve.app:app`` (``serve run serve.app:app config=...`` or a Serve
    config file's ``args``). Paths are read where the application is built: by ``serve
    run``'s driver, or by the cluster for ``serve deploy`` (relative to the runtime_env's
    working_dir there)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: str = Field(description="Path of the abserve YAML config.")
    redis_url: str | None = Field(
        None, description="Overrides cache.redis_url: the Redis every router replica reaches "
        "(`serve run` and `serve deploy` start none; without one each router replica keeps "
        "its own in-process LRU).")
    registry: str | None = Field(None, description="Overrides the config's registry path.")
    state_dir: str | None = Field(None, description="Overrides state.dir (the controller's "
                                  "durable experiment state, on the head node).")


def config_from_args(args: AppArgs) -> AbserveConfig:
    """The validated abserve config that ``args`` name, with their overrides applied."""
    config = load_config(args.config)
    update: dict[str, Any] = {}
    if args.redis_url is not None:
        update["cache"] = config.cache.model_copy(update={"redis_url": args.redis_url})
    if args.registry is not None:
        update["registry"] = str(Path(args.registry).resolve())
    if args.state_dir is not None:
        update["state"] = config.state.model_copy(
            update={"dir": str(Path(args.state_dir).resolve())})
    return config.model_copy(update=update) if update else config


def app(args: AppArgs) -> Application:
    """The whole application from an abserve config, for ``serve run`` / ``serve deploy``."""
    config = config_from_args(args)
    if config.cache.enabled and not (config.cache.redis_url
                                     or os.environ.get("ABSERVE_REDIS_URL")):
        log.warning("abserve: cache.redis_url is empty: each router replica caches in its own "
                    "in-process LRU (set it, or pass redis_url=...)")
    if config.http.ingress == "throughput" and os.environ.get(
            "RAY_SERVE_THROUGHPUT_OPTIMIZED", "0") != "1":
        # The ingress mode is the cluster's, read by Serve at start from the environment of
        # `ray start` (serve/local/env.py ray_env); the builder cannot change it.
        log.warning("abserve: http.ingress is throughput but this process's environment lacks "
                    "RAY_SERVE_THROUGHPUT_OPTIMIZED=1: start every node's `ray start` with "
                    "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 (the "
                    "benchmarked mode), or set http.ingress: default")
    return build_app(config)
