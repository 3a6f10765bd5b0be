"""The Open Inference Protocol's gRPC service over one router replica's parts. No Ray import.

Serve's gRPC ingress (the Python proxy, or HAProxy and the replica's own gRPC server in
the throughput mode) calls the router deployment's method named after the RPC
(``ModelInfer`` ...) with the request message and Serve's gRPC context; router/ingress.py
hands both to ``GrpcService``. Each call goes the REST routes' way (router/http/oip.py):
the same checks (router/protocol/oip.py, through router/protocol/oip_grpc.py), admission
(``router.max_inflight``), the follower's sync, and ``Predictions.run``: the split, the
sticky user key (the metadata key ``http.user_key_header`` lower-cased), the version pin
(``model_version``), the cache and the fallback. Errors become gRPC status codes from one
table (``GRPC_STATUS``); the answer is then an empty message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message

from router.dataplane.admission import Admission
from router.dataplane.core import RouterCore
from router.http.follower import Follower
from router.http.oip import arms_ready
from router.http.serving import ModelInfo, Predictions, UpstreamArms
from router.protocol.oip import (
    check_model,
    infer_response,
    model_metadata,
    output_names,
    parse_infer_request,
    server_metadata,
    version_metadata,
)
from router.protocol.oip_grpc import (
    grpc_status,
    infer_body,
    infer_response_message,
    metadata_message,
    user_key,
)
from router.protocol.v2grpc import grpc_predict_v2_pb2 as pb
from serve.config import HttpConfig
from serve.errors import AbserveError, Overloaded, TooManyRequests

__all__ = ["GrpcContext", "GrpcService"]

log = logging.getLogger("ray.serve")

M = TypeVar("M", bound=Message)


class GrpcContext(Protocol):
    """What the service reads and sets of a call: Serve's ``RayServegRPCContext``, or a
    fake in tests."""

    def invocation_metadata(self) -> Sequence[tuple[str, Any]]: ...

    def set_code(self, code: Any) -> None: ...

    def set_details(self, details: str) -> None: ...


class GrpcService:
    def __init__(
        self,
        *,
        model: ModelInfo,
        http: HttpConfig,
        core: RouterCore,
        follower: Follower,
        predictions: Predictions,
        arms: UpstreamArms,
        admission: Admission,
        probe_timeout_s: float,
        version: str,
    ) -> None:
        self.model = model
        self.http = http
        self.core = core
        self.follower = follower
        self.predictions = predictions
        self.arms = arms
        self.admission = admission
        self.probe_timeout_s = probe_timeout_s
        self.version = version

    @staticmethod
    def _fail(context: GrpcContext, exc: BaseException, empty: M) -> M:
        code, details = grpc_status(exc)
        if not isinstance(exc, AbserveError):
            log.exception("gRPC call failed", exc_info=exc)
        context.set_code(code)
        context.set_details(details)
        return empty

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: GrpcContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: GrpcContext) -> pb.ServerReadyResponse:
        """Ready when every deployed version answers a readiness call in time."""
        ready = await arms_ready(self.arms, self.probe_timeout_s)
        return pb.ServerReadyResponse(ready=all(ready.values()))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: GrpcContext) -> pb.ServerMetadataResponse:
        meta = server_metadata(self.version)
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"],
                                         extensions=meta["extensions"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: GrpcContext) -> pb.ModelMetadataResponse:
        version = request.version or None
        try:
            check_model(request.name, version, self.model.name, self.core.versions)
        except AbserveError as exc:
            return self._fail(context, exc, pb.ModelMetadataResponse())
        if version is None:
            return metadata_message(model_metadata(request.name, self.model.manifests))
        return metadata_message(version_metadata(request.name, self.model.manifests[version]))

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: GrpcContext) -> pb.ModelReadyResponse:
        """The unversioned model is ready when every version is (any may be routed to)."""
        version = request.version or None
        try:
            check_model(request.name, version, self.model.name, self.core.versions)
        except AbserveError as exc:
            return self._fail(context, exc, pb.ModelReadyResponse())
        ready = await arms_ready(self.arms, self.probe_timeout_s,
                                 None if version is None else [version])
        return pb.ModelReadyResponse(ready=all(ready.values()))

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: GrpcContext) -> pb.ModelInferResponse:
        """The experiment picks the arm unless ``model_version`` pins one."""
        key = user_key(context.invocation_metadata(), self.http.user_key_header)
        admission = self.admission
        limited_key = key if admission.max_inflight_per_key is not None else None
        status = admission.try_enter(limited_key)
        if status:
            exc: AbserveError = (
                TooManyRequests("too many requests in flight for this user key; retry later")
                if status == 429 else
                Overloaded("the router is at capacity; retry after "
                           f"{admission.retry_after} s"))
            return self._fail(context, exc, pb.ModelInferResponse())
        try:
            return await self._infer(request, key)
        except Exception as exc:  # noqa: BLE001 - every failure is a status, never a crash
            return self._fail(context, exc, pb.ModelInferResponse())
        finally:
            admission.leave(limited_key)

    async def _infer(self, request: pb.ModelInferRequest, key: str | None
                     ) -> pb.ModelInferResponse:
        model = self.model
        pinned = request.model_version or None
        check_model(request.model_name, pinned, model.name, self.core.versions)
        await self.follower.ensure_synced()
        body, binary = infer_body(request, tabular=model.schema is not None)
        req = parse_infer_request(
            body, model.input_shape, self.http.max_batch_instances, binary,
            outputs=output_names(model.spec), schema=model.schema,
        )
        rid, pred = await self.predictions.run(req.batch, key, pinned)
        parameters: dict[str, Any] = {
            "arm": pred.arm,
            "cached": all(pred.cached),
            "cache": pred.cache_status,
            "fallback": pred.fallback,
            "request_id": rid,
        }
        if pred.fallback_reason:
            parameters["fallback_reason"] = pred.fallback_reason
        return infer_response_message(infer_response(
            model.name, pred.version, req.id, pred.outputs, model.spec,
            req.requested_outputs, parameters,
        ))
