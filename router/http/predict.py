"""POST /predict and /predict/batch: the raw ASGI fast path and the schema routes.

The admission middleware serves these two paths straight from ``fast_routes``,
skipping FastAPI's routing, request and response objects (a fifth of the
router's CPU per request). The FastAPI routes registered here answer alike:
they document the API in /docs and serve any path the fast table does not
name (a route prefix, a trailing slash).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from router.dataplane.admission import ASGIApp, Receive, Scope, Send
from router.dataplane.core import Prediction
from router.http.follower import Follower
from router.http.serving import ModelInfo, Predictions
from router.http.wire import prediction_headers, read_body, read_request
from router.protocol.request import check_content_type, parse_batch, parse_json, parse_single
from router.protocol.schemas import BATCH_RESPONSES, OPENAPI_BATCH, OPENAPI_SINGLE, SINGLE_RESPONSES
from router.protocol.tabular import parse_record_batch, parse_record_single
from serve.config import HttpConfig
from serve.errors import AbserveError, to_http

__all__ = ["PredictEndpoint", "prediction_item", "register"]


def prediction_item(
    model: ModelInfo, pred: Prediction, request_id: str, row: int
) -> dict[str, Any]:
    """One input's answer as the /predict body (and each item of /predict/batch): the
    kind's fields (label and probabilities; label, score and threshold; value or values),
    then where it came from."""
    return {
        **model.spec.answer(pred.outputs[row]),
        "model": model.name,
        "version": pred.version,
        "arm": pred.arm,
        "cached": pred.cached[row],
        "fallback": pred.fallback,
        "request_id": request_id,
    }


class PredictEndpoint:
    def __init__(
        self, model: ModelInfo, http: HttpConfig, follower: Follower, predictions: Predictions
    ) -> None:
        self.model = model
        self.http = http
        self.follower = follower
        self.predictions = predictions
        self.user_header = http.user_key_header.lower()
        self.version_header = http.version_header.lower()
        self._user_header_b = self.user_header.encode("latin-1")
        self._version_header_b = self.version_header.encode("latin-1")

    async def respond(
        self, body: bytes, user_key: str | None, pinned: str | None, *, many: bool
    ) -> tuple[bytes, dict[str, str]]:
        """A /predict or /predict/batch body in, the response body and headers out."""
        await self.follower.ensure_synced()
        data = parse_json(body)
        schema = self.model.schema
        if schema is not None:  # a tabular model: named records, validated and encoded
            if many:
                batch = parse_record_batch(data, schema, self.http.max_batch_instances)
            else:
                batch = parse_record_single(data, schema)
        elif many:
            batch = parse_batch(data, self.model.input_shape, self.http.max_batch_instances)
        else:
            batch = parse_single(data, self.model.input_shape)
        rid, pred = await self.predictions.run(batch, user_key, pinned)
        out: dict[str, Any]
        if many:
            out = {
                "predictions": [
                    prediction_item(self.model, pred, rid, i) for i in range(len(batch))
                ],
                "model": self.model.name,
                "version": pred.version,
                "arm": pred.arm,
                "fallback": pred.fallback,
                "request_id": rid,
            }
        else:
            out = prediction_item(self.model, pred, rid, 0)
        if pred.fallback_reason:
            out["fallback_reason"] = pred.fallback_reason
        return orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), prediction_headers(pred)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The fast path: same status, body and headers as the FastAPI routes."""
        many = scope["path"].endswith("/batch")
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        try:
            content_type = headers.get(b"content-type")
            check_content_type(content_type.decode("latin-1") if content_type else None)
            body = await read_body(
                receive, headers.get(b"content-length"), self.http.max_body_bytes
            )
            if body is None:  # the client went away
                return
            user = headers.get(self._user_header_b)
            pin = headers.get(self._version_header_b)
            content, extra = await self.respond(
                body,
                user.decode("latin-1") if user is not None else None,
                pin.decode("latin-1") if pin is not None else None,
                many=many,
            )
            status = 200
        except AbserveError as exc:
            status, error = to_http(exc)
            content, extra = orjson.dumps(error), {}
        raw = [(b"content-type", b"application/json"),
               (b"content-length", str(len(content)).encode())]
        raw.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": content})

    async def route(self, request: Request, *, many: bool) -> Response:
        check_content_type(request.headers.get("content-type"))
        body = await read_request(request, self.http.max_body_bytes)
        headers = request.headers
        content, extra = await self.respond(
            body, headers.get(self.user_header), headers.get(self.version_header), many=many
        )
        return Response(content, media_type="application/json", headers=extra)


def register(app: FastAPI, endpoint: PredictEndpoint) -> dict[str, ASGIApp]:
    """Add the schema routes; return the fast routes for the admission middleware."""

    @app.post("/predict", openapi_extra=OPENAPI_SINGLE, responses=SINGLE_RESPONSES)
    async def predict(request: Request) -> Response:
        """Predict one input; the experiment picks the arm."""
        return await endpoint.route(request, many=False)

    @app.post("/predict/batch", openapi_extra=OPENAPI_BATCH, responses=BATCH_RESPONSES)
    async def predict_batch(request: Request) -> Response:
        """Predict many inputs in one request; one arm answers them all."""
        return await endpoint.route(request, many=True)

    return {"/predict": endpoint.asgi, "/predict/batch": endpoint.asgi}
