"""What every route module shares: JSON responses, bounded body reads, prediction headers.

Bodies are read by one function, from raw ASGI messages, for the fast path and
the FastAPI routes alike, so the http.max_body_bytes limit and its 413 are the
same everywhere and a body is refused as soon as it passes the limit.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from router.dataplane.admission import Receive
from router.dataplane.core import Prediction
from router.protocol.request import check_content_type, parse_json
from serve.errors import PayloadTooLarge

__all__ = ["json_body", "json_response", "prediction_headers", "read_body", "read_request"]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def read_body(receive: Receive, length: bytes | None, limit: int) -> bytes | None:
    """The raw body from ASGI messages; None when the client went away."""
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"body of {length.decode()} bytes exceeds the limit of {limit} bytes")
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        body = body + chunk if body else chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        if not message.get("more_body", False):
            return body


async def read_request(request: Request, limit: int) -> bytes:
    """A FastAPI route's raw body, by ``read_body``'s limits."""
    length = request.headers.get("content-length")
    body = await read_body(
        request.receive, length.encode("latin-1") if length is not None else None, limit
    )
    if body is None:
        raise ClientDisconnect()
    return body


async def json_body(request: Request, limit: int) -> Any:
    check_content_type(request.headers.get("content-type"))
    return parse_json(await read_request(request, limit))


def prediction_headers(pred: Prediction) -> dict[str, str]:
    headers = {
        "X-Model-Version": pred.version,
        "X-Cache": pred.cache_status,
        "X-Fallback": "true" if pred.fallback else "false",
    }
    if pred.fallback_reason:
        headers["X-Fallback-Reason"] = pred.fallback_reason
    return headers
