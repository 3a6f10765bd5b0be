"""The Open Inference Protocol (KServe V2 REST) routes under /v2.

The codec is router/protocol/oip.py. By the protocol, errors are
``{"error": ...}`` alone and bad input is 400, so these routes turn our
errors into bodies themselves instead of leaving them to the app's handler.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from router.dataplane.core import RouterCore
from router.http.follower import Follower
from router.http.serving import ModelInfo, Predictions, UpstreamArms
from router.http.wire import json_response, prediction_headers, read_request
from router.protocol.oip import (
    NOT_READY_STATUS,
    check_model,
    decode_body,
    error_body,
    infer_response,
    model_metadata,
    output_names,
    parse_infer_request,
    server_metadata,
    version_metadata,
)
from serve.config import HttpConfig
from serve.errors import AbserveError

__all__ = ["arms_ready", "register"]


async def arms_ready(
    arms: UpstreamArms, timeout_s: float, versions: list[str] | None = None
) -> dict[str, bool]:
    """Each version (default: every deployed one) answers a readiness call in time."""
    versions = arms.versions if versions is None else versions
    results = await asyncio.gather(*(arms.ready(v, timeout_s) for v in versions))
    return dict(zip(versions, results, strict=True))


def _oip_error(exc: AbserveError) -> Response:
    return json_response(error_body(exc), status=exc.status_code)


def register(
    app: FastAPI,
    *,
    model: ModelInfo,
    http: HttpConfig,
    core: RouterCore,
    follower: Follower,
    predictions: Predictions,
    arms: UpstreamArms,
    probe_timeout_s: float,
) -> None:
    user_header = http.user_key_header.lower()

    def metadata(name: str, version: str | None) -> Response:
        try:
            check_model(name, version, model.name, core.versions)
        except AbserveError as exc:
            return _oip_error(exc)
        if version is None:
            return json_response(model_metadata(name, model.manifests))
        return json_response(version_metadata(name, model.manifests[version]))

    async def model_ready(name: str, version: str | None) -> Response:
        """The unversioned model is ready when every version is (any may be routed to)."""
        try:
            check_model(name, version, model.name, core.versions)
        except AbserveError as exc:
            return _oip_error(exc)
        ready = await arms_ready(arms, probe_timeout_s, None if version is None else [version])
        ok = all(ready.values())
        return json_response({"name": name, "ready": ok}, status=200 if ok else NOT_READY_STATUS)

    async def infer(request: Request, name: str, version: str | None) -> Response:
        try:
            check_model(name, version, model.name, core.versions)
            await follower.ensure_synced()
            data, binary = decode_body(
                await read_request(request, http.max_body_bytes),
                request.headers.get("inference-header-content-length"),
            )
            req = parse_infer_request(
                data, model.input_shape, http.max_batch_instances, binary,
                outputs=output_names(model.spec), schema=model.schema,
            )
            rid, pred = await predictions.run(req.batch, request.headers.get(user_header), version)
        except AbserveError as exc:
            return _oip_error(exc)
        parameters: dict[str, Any] = {
            "arm": pred.arm,
            "cached": all(pred.cached),
            "cache": pred.cache_status,
            "fallback": pred.fallback,
            "request_id": rid,
        }
        if pred.fallback_reason:
            parameters["fallback_reason"] = pred.fallback_reason
        body = infer_response(
            model.name, pred.version, req.id, pred.outputs, model.spec,
            req.requested_outputs, parameters,
        )
        return json_response(body, headers=prediction_headers(pred))

    @app.get("/v2")
    async def oip_server_metadata() -> Response:
        return json_response(server_metadata(app.version))

    @app.get("/v2/health/live")
    async def oip_live() -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready")
    async def oip_ready() -> Response:
        """Ready when every deployed version answers (the protocol: 200, else 4xx)."""
        ok = all((await arms_ready(arms, probe_timeout_s)).values())
        return json_response({"ready": ok}, status=200 if ok else NOT_READY_STATUS)

    @app.get("/v2/models/{name}")
    async def oip_model_metadata(name: str) -> Response:
        return metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}")
    async def oip_version_metadata(name: str, version: str) -> Response:
        return metadata(name, version)

    @app.get("/v2/models/{name}/ready")
    async def oip_model_ready(name: str) -> Response:
        return await model_ready(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def oip_version_ready(name: str, version: str) -> Response:
        return await model_ready(name, version)

    @app.post("/v2/models/{name}/infer")
    async def oip_infer(request: Request, name: str) -> Response:
        """The experiment picks the arm, as for /predict (sticky on the user key header)."""
        return await infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def oip_infer_version(request: Request, name: str, version: str) -> Response:
        """Pins the version, as X-Model-Version does; a failure still falls back."""
        return await infer(request, name, version)
