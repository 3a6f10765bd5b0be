"""The router's Ray Serve deployment: wiring only.

The constructor builds one replica's parts (router/http/app.py ``assemble``)
around the Ray-backed boundaries: the model versions' handles
(router/dataplane/upstream.py ``Arms``), the controller's typed client and
Serve's runtime context. ``serve.ingress()`` without an app calls
``__serve_build_asgi_app__`` after ``__init__``, so the FastAPI app, its
routes and its admission middleware hold this replica's real objects; none
of them is pickled. It loads the colocated versions (deployments/colocated.py:
scikit-learn ones by default) and never imports torch or tensorflow unless a
version says ``colocated: true``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.colocated import load_colocated
from deployments.model import ModelReplica
from models.registry import Registry
from router.controlplane.client import ControlClient
from router.dataplane.upstream import Arms, RayRuntime
from router.http.app import ReplicaParts, assemble, build_app, cache_backend
from router.http.serving import ModelInfo
from serve.config import model_deployment_name, parse_config
from serve.telemetry import ray_metric_factory

__all__ = ["Router"]

log = logging.getLogger("ray.serve")


# No options here: serve/app.py sets every one from the config (.options), once.
@serve.deployment
@serve.ingress()
class Router:
    def __init__(
        self,
        config: dict[str, Any],
        handles: dict[str, DeploymentHandle],
        controller: DeploymentHandle,
        replica_class: type[ModelReplica] = ModelReplica,
    ) -> None:
        """``replica_class``: the model deployment's own class, so that a colocated copy
        runs the same code as the version's replicas (drills pass the fault-injecting one)."""
        cfg = parse_config(config)
        registry = Registry(cfg.registry)
        manifests = {m.version: registry.manifest(cfg.model, m.version) for m in cfg.models}
        model = ModelInfo.from_manifests(cfg.model, manifests)
        self.colocated, self.colocation = load_colocated(
            cfg.registry, cfg.model, cfg.models, manifests,
            cfg.router.colocate_max_artifact_mb, replica_class, cfg.router.colocated_max_busy,
        )
        runtime = RayRuntime()
        arms = Arms(handles, runtime, cfg.models, cfg.router.batch_in_flight_per_replica,
                    colocated=self.colocated, breaker=cfg.experiment.breaker)
        self.parts: ReplicaParts = assemble(
            cfg,
            model,
            arms=arms,
            control=ControlClient(controller),
            runtime=runtime,
            metric_factory=ray_metric_factory,
            cache=cache_backend(cfg.cache),
        )
        # A failing copy of the baseline is backed by the baseline's deployment; a failing
        # copy of a candidate is the candidate's failure (fallback, breaker, canary gates).
        core = self.parts.core
        arms.retry_on_deployment = lambda version: version == core.baseline
        # While the router sheds load, its CPU goes to shedding: copies' calls go remote.
        admission = self.parts.admission
        if admission.max_inflight is not None:
            limit = admission.max_inflight
            arms.overloaded = lambda: admission.inflight >= limit
        self._deployment_versions = {
            model_deployment_name(cfg.model, m.version): m.version for m in cfg.models
        }
        log.info("router ready: arms %s, cache %s, colocated %s", self.parts.core.arms,
                 self.parts.cache_setup.kind,
                 {c.version: c.reason for c in self.colocation if c.colocated} or "none")

    def set_colocated_fault(self, deployment: str, **fault: float) -> int | None:
        """Drills only: ``set_fault`` on this replica's colocated copy of ``deployment``;
        this PID, or None when the version is not colocated here. The production replica
        class has no ``set_fault``, so this refuses outside drills."""
        local = self.colocated.get(self._deployment_versions.get(deployment, ""))
        if local is None:
            return None
        set_fault = getattr(local.replica, "set_fault", None)
        if set_fault is None:
            raise RuntimeError("this replica class takes no faults (a production app)")
        return int(set_fault(**fault))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_app(self.parts)
