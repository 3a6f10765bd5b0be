"""Admission control: shed load early and cheaply, with Retry-After. Pure: no Ray.

A router replica that accepts every request only moves the queue inside
itself: latency grows without bound and every client times out. Instead each
replica admits at most ``max_inflight`` prediction requests at once (and, if
set, ``max_inflight_per_key`` per user key); anything above is answered at once
with 503 (or 429 for one greedy key) and ``Retry-After``, before the body is
read or parsed. ``AdmissionMiddleware`` does it at the ASGI layer, ahead of
FastAPI's routing, so a rejection costs a few microseconds of the replica's
event loop. Health, readiness, stats and admin routes are never shed.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Admission", "AdmissionMiddleware", "AdmissionStats", "is_shed_path"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SHED_SUFFIXES = ("/predict", "/predict/batch", "/infer")


def is_shed_path(method: str, path: str) -> bool:
    """Prediction routes only (any route prefix): never health, stats or admin."""
    return method == "POST" and path.rstrip("/").endswith(_SHED_SUFFIXES)


@dataclass
class AdmissionStats:
    admitted: int = 0
    shed_overload: int = 0  # 503: the replica was full
    shed_per_key: int = 0  # 429: one key had too many requests in flight
    peak_inflight: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Admission:
    """In-flight counters of one router replica; ``None`` limits admit everything."""

    def __init__(
        self,
        max_inflight: int | None = None,
        max_inflight_per_key: int | None = None,
        retry_after_s: float = 1.0,
        key_header: str = "X-User-Id",
    ) -> None:
        self.max_inflight = max_inflight
        self.key_header = key_header.lower().encode()
        self.max_inflight_per_key = max_inflight_per_key
        # Retry-After is whole seconds (RFC 9110); round up, never 0 (an instant retry storm).
        self.retry_after = str(max(1, math.ceil(retry_after_s)))
        self.inflight = 0
        self.per_key: dict[str, int] = {}
        self.stats = AdmissionStats()

    def try_enter(self, key: str | None) -> int:
        """0 if admitted (the caller must ``leave(key)``), else the status to answer."""
        if self.max_inflight is not None and self.inflight >= self.max_inflight:
            self.stats.shed_overload += 1
            return 503
        if key is not None and self.max_inflight_per_key is not None:
            n = self.per_key.get(key, 0)
            if n >= self.max_inflight_per_key:
                self.stats.shed_per_key += 1
                return 429
            self.per_key[key] = n + 1
        self.inflight += 1
        self.stats.admitted += 1
        self.stats.peak_inflight = max(self.stats.peak_inflight, self.inflight)
        return 0

    def leave(self, key: str | None) -> None:
        self.inflight -= 1
        if key is not None and self.max_inflight_per_key is not None:
            n = self.per_key.get(key, 1) - 1
            if n > 0:
                self.per_key[key] = n
            else:
                self.per_key.pop(key, None)


_BODIES = {
    503: orjson.dumps({"error": "the router is at capacity; retry after the Retry-After delay",
                       "code": "overloaded"}),
    429: orjson.dumps({"error": "too many requests in flight for this user key; retry later",
                       "code": "too_many_requests"}),
}


class AdmissionMiddleware:
    """Pure ASGI: admit or reject before routing, parsing or reading the body.

    ``routes`` (path without the route prefix -> raw ASGI handler) serves an
    admitted request straight from here, skipping the framework's routing,
    request and response objects: on the hot path that is a fifth of the
    router's CPU per request. Any other path goes on to the app. Both are the
    replica's own objects: the router builds its app after ``__init__``
    (``serve.ingress()`` late binding), so nothing here is a pickled copy.
    """

    def __init__(
        self, app: ASGIApp, admission: Admission, routes: dict[str, ASGIApp]
    ) -> None:
        self.app = app
        self.admission = admission
        self.routes = routes

    def _target(self, scope: Scope) -> ASGIApp:
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        return self.routes.get(path, self.app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_shed_path(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        admission = self.admission
        key = None
        if admission.max_inflight_per_key is not None:
            for name, value in scope.get("headers", ()):
                if name == admission.key_header:
                    key = value.decode("latin-1")
                    break
        status = admission.try_enter(key)
        if status:
            body = _BODIES[status]
            await send({
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", admission.retry_after.encode()),
                ],
            })
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await self._target(scope)(scope, receive, send)
        finally:
            admission.leave(key)
