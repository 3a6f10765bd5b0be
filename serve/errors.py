"""Typed errors, each carrying its HTTP status, and the one mapper to HTTP.

The status lives on the class (BentoML's habit), so raising the right type is
the whole decision; ``to_http`` only reads it. Foreign exceptions (Ray's,
asyncio's) are translated at the boundary, from one table, in
``router/dataplane/upstream.py``.
"""

from __future__ import annotations

import math

__all__ = [
    "AbserveError",
    "ArmBusy",
    "ArtifactError",
    "BadRequest",
    "ConfigError",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpstreamError",
    "to_http",
]


class AbserveError(Exception):
    """Base of every error this project raises on purpose."""

    status_code: int = 500
    code: str = "internal_error"
    headers: dict[str, str] = {}  # noqa: RUF012 - read only; an instance sets its own

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class BadRequest(AbserveError):
    """The body is not the JSON we asked for (syntax, top-level type)."""

    status_code = 400
    code = "bad_request"


class InvalidInput(AbserveError):
    """Well-formed JSON whose values do not fit the model (shape, NaN, type)."""

    status_code = 422
    code = "invalid_input"


class Unauthorized(AbserveError):
    """Missing, malformed or wrong admin credentials. Never echoes what was sent."""

    status_code = 401
    code = "unauthorized"


class Forbidden(AbserveError):
    status_code = 403
    code = "forbidden"


class NotFound(AbserveError):
    status_code = 404
    code = "not_found"


class PayloadTooLarge(AbserveError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(AbserveError):
    status_code = 415
    code = "unsupported_media_type"


class ServiceUnavailable(AbserveError):
    """No arm could answer, the baseline included; or the controller did not answer.

    ``retry_after_s`` adds a ``Retry-After`` header (whole seconds, at least 1).
    """

    status_code = 503
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        if retry_after_s is not None:
            self.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}


class Overloaded(ServiceUnavailable):
    """The router replica is at ``router.max_inflight``: shed before any work (503 with
    ``Retry-After`` over HTTP, RESOURCE_EXHAUSTED over gRPC). Not "nothing can answer":
    the client should come back later, not fail over."""

    code = "overloaded"


class TooManyRequests(AbserveError):
    """One user key has ``router.max_inflight_per_key`` requests in flight already."""

    status_code = 429
    code = "too_many_requests"


class UpstreamError(AbserveError):
    """A model arm failed: raised, timed out, was unavailable or backpressured.

    ``reason`` is one of ``error``, ``timeout``, ``unavailable``,
    ``backpressure`` or ``circuit_open``; the router falls back on any of them.
    """

    status_code = 503
    code = "upstream_error"

    def __init__(self, message: str, *, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class ArmBusy(UpstreamError):
    """A colocated copy's one thread holds another call (a timed-out one, or one the
    router's batcher sent while the last was still running). Not a failure of the model:
    the version's own deployment takes the call."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="unavailable")


class ConfigError(AbserveError):
    """The configuration is invalid; the message names the field."""

    status_code = 500
    code = "config_error"


class ArtifactError(AbserveError):
    """A registry artifact is missing, tampered with or cannot be loaded safely."""

    status_code = 500
    code = "artifact_error"


def to_http(exc: BaseException) -> tuple[int, dict[str, object]]:
    """Map any exception to ``(status, json_body)``; unknown ones become a bare 500.

    Internal details of unknown exceptions are never echoed to the client.
    """
    if isinstance(exc, AbserveError):
        body: dict[str, object] = {"error": exc.message, "code": exc.code}
        if exc.field is not None:
            body["field"] = exc.field
        return exc.status_code, body
    return 500, {"error": "internal server error", "code": "internal_error"}
