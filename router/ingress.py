"""The router's Ray Serve deployment: wiring only.

The constructor builds one replica's parts (router/http/app.py ``assemble``)
around the Ray-backed boundaries: the model versions' handles
(router/dataplane/upstream.py ``Arms``), the controller's typed client and
Serve's runtime context. ``serve.ingress()`` without an app calls
``__serve_build_asgi_app__`` after ``__init__``, so the FastAPI app, its
routes and its admission middleware hold this replica's real objects; none
of them is pickled. It never imports torch or tensorflow: the router replica
stays small.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from models.registry import Registry
from router.controlplane.client import ControlClient
from router.dataplane.upstream import Arms, RayRuntime
from router.http.app import ReplicaParts, assemble, build_app, cache_backend
from router.http.serving import ModelInfo
from serve.config import parse_config
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
    ) -> None:
        cfg = parse_config(config)
        registry = Registry(cfg.registry)
        model = ModelInfo.from_manifests(
            cfg.model, {m.version: registry.manifest(cfg.model, m.version) for m in cfg.models}
        )
        runtime = RayRuntime()
        self.parts: ReplicaParts = assemble(
            cfg,
            model,
            arms=Arms(handles, runtime, cfg.models, cfg.router.batch_in_flight_per_replica),
            control=ControlClient(controller),
            runtime=runtime,
            metric_factory=ray_metric_factory,
            cache=cache_backend(cfg.cache),
        )
        log.info("router ready: arms %s, cache %s", self.parts.core.arms,
                 self.parts.cache_setup.kind)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_app(self.parts)
