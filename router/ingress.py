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

The OIP gRPC methods (``ModelInfer`` ...) are the ones Serve's gRPC ingress calls by the
RPC's name, with ``grpc_context``; each hands over to router/http/grpc_service.py.

``RayCluster`` is the Ray side of router/http/multimodel.py: Serve's controller for
the applications on the cluster, and the other applications' routers, whose
``forward_http`` runs a forwarded request through their own app in-process.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.colocated import load_colocated
from deployments.model import ModelReplica
from models.registry import Registry
from router.controlplane.client import ControlClient
from router.dataplane.upstream import Arms, RayRuntime
from router.http.app import ReplicaParts, assemble, build_app, cache_backend, grpc_service
from router.http.grpc_service import GrpcContext
from router.http.multimodel import ROUTER_INGRESS, HttpExchange, HttpReply, run_asgi
from router.http.serving import ModelInfo
from router.protocol.v2grpc import grpc_predict_v2_pb2 as pb
from serve.config import model_deployment_name, parse_config
from serve.telemetry import ray_metric_factory

__all__ = ["RayCluster", "Router"]

log = logging.getLogger("ray.serve")


class RayCluster:
    """The other abserve applications, through Serve: its controller's instance details
    (what ``serve.status()`` reads) and a handle to each application's router. Only the
    model directory and the OIP forwarding call it, never the predict path."""

    def __init__(self) -> None:
        self._routers: dict[str, DeploymentHandle] = {}

    async def details(self) -> Mapping[str, Any]:
        from ray.serve.context import _get_global_client

        def read() -> Mapping[str, Any]:
            client = _get_global_client()
            assert client is not None
            return dict(client.get_serve_details())

        return await asyncio.to_thread(read)  # a blocking ray.get: off the event loop

    def _router(self, application: str) -> DeploymentHandle:
        handle = self._routers.get(application)
        if handle is None:
            handle = serve.get_deployment_handle(ROUTER_INGRESS, app_name=application)
            self._routers[application] = handle
        return handle

    async def model_of(self, application: str) -> str | None:
        return str(await self._router(application).model_name.remote())

    async def forward(self, application: str, request: HttpExchange) -> HttpReply:
        reply = await self._router(application).forward_http.remote(request)
        assert isinstance(reply, HttpReply)
        return reply


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
            cluster=RayCluster(),
        )
        self._model = cfg.model
        self._app: FastAPI | None = None
        self._grpc = grpc_service(self.parts)
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

    def set_log_sample(self, percent: float | None) -> int | None:
        """Measurement only (``abserve bench`` variant l): this replica's prediction log
        keeps ``percent`` of the requests from now on (None: the config's shares again);
        this PID, or None when the log is off in this app. A handle call, not the admin
        API: not persisted, and a new replica reads the config."""
        predlog = self.parts.predlog
        if predlog is None:
            return None
        predlog.set_sample(None if percent is None else percent / 100.0)
        return os.getpid()

    def model_name(self) -> str:
        """The model this application serves (the directory asks when its route prefix
        does not say)."""
        return self._model

    async def forward_http(self, request: HttpExchange) -> HttpReply:
        """A request another router forwarded (an OIP call for this model at the cluster
        root), run through this replica's own app: admission, routes and errors as if the
        proxy had sent it here."""
        if self._app is None:
            raise RuntimeError("the router's app is not built yet")
        return await run_asgi(self._app, request)

    # The OIP gRPC service (http.grpc_port): Serve calls these by the RPC's name.
    async def ServerLive(self, request: pb.ServerLiveRequest,
                         grpc_context: GrpcContext) -> pb.ServerLiveResponse:
        return await self._grpc.ServerLive(request, grpc_context)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          grpc_context: GrpcContext) -> pb.ServerReadyResponse:
        return await self._grpc.ServerReady(request, grpc_context)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             grpc_context: GrpcContext) -> pb.ServerMetadataResponse:
        return await self._grpc.ServerMetadata(request, grpc_context)

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         grpc_context: GrpcContext) -> pb.ModelReadyResponse:
        return await self._grpc.ModelReady(request, grpc_context)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            grpc_context: GrpcContext) -> pb.ModelMetadataResponse:
        return await self._grpc.ModelMetadata(request, grpc_context)

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         grpc_context: GrpcContext) -> pb.ModelInferResponse:
        return await self._grpc.ModelInfer(request, grpc_context)

    def __serve_build_asgi_app__(self) -> FastAPI:
        self._app = build_app(self.parts)
        return self._app

    async def __del__(self) -> None:  # type: ignore[override]
        """Serve's graceful shutdown awaits this after the app's own: the prediction log
        writes what it buffered (in a thread: its last write is blocking I/O)."""
        parts = getattr(self, "parts", None)
        if parts is not None:
            await asyncio.to_thread(parts.close)
