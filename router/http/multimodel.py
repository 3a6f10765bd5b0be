"""Several models on one cluster: route prefixes, the cluster's model directory, and the
OIP requests the default application forwards to another model's router. No Ray import.

Each model config is its own Serve application: the default one at ``/`` and the others
at ``/models/<model>``. Three things make them one service:

- ``PrefixStep``: the default application also answers under ``/models/<its model>``.
  It moves that prefix from the route path into ``root_path`` (what Serve itself does
  for an application deployed at a prefix: the path stays whole, ``root_path`` grows),
  so the admission middleware's fast-route table and FastAPI's routes serve both.
- ``ModelDirectory``: which abserve applications run on the cluster (those whose
  ingress deployment is the router), read from Serve's controller through an injected
  ``ClusterSource``, cached a few seconds and never consulted on the predict path.
- ``OipForwarder``: clients of the Open Inference Protocol address every model at the
  cluster root, ``/v2/models/<name>/...``; a request for another model is run by that
  model's router (``run_asgi`` in its replica, through a handle) and answered unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from router.dataplane.admission import ASGIApp, Message, Receive, Scope, Send
from router.http.wire import read_body
from serve.config import MODELS_ROUTE
from serve.errors import AbserveError

__all__ = [
    "ROUTER_INGRESS",
    "ClusterSource",
    "HttpExchange",
    "HttpReply",
    "ModelDirectory",
    "ModelEntry",
    "OipForwarder",
    "PrefixStep",
    "abserve_applications",
    "model_of_prefix",
    "oip_model_name",
    "route_path",
    "run_asgi",
]

log = logging.getLogger("ray.serve")

ROUTER_INGRESS = "router"  # the ingress deployment of every abserve application
OIP_MODELS = "/v2/models/"
UNKNOWN_STATUS = "UNKNOWN"


def route_path(scope: Scope) -> str:
    """The path below the application's ``root_path`` (Starlette's ``get_route_path``)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):]
    return path


def model_of_prefix(prefix: str | None) -> str | None:
    """``/models/<name>`` -> name; any other route prefix names no model."""
    if prefix and prefix.startswith(MODELS_ROUTE):
        name = prefix[len(MODELS_ROUTE):]
        if name and "/" not in name:
            return name
    return None


def oip_model_name(path: str) -> str | None:
    """The model a ``/v2/models/<name>[/...]`` route path addresses, else None."""
    if not path.startswith(OIP_MODELS):
        return None
    name = path[len(OIP_MODELS):].split("/", 1)[0]
    return name or None


class PrefixStep:
    """Pure ASGI, ahead of admission: ``<root>/models/<model>/x`` is served as ``/x``.

    One startswith per request and no copy of the scope: the fast path stays fast.
    """

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix
        self._below = prefix + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            rel = path[len(root):] if root and path.startswith(root) else path
            if rel.startswith(self._below) or rel == self.prefix:
                scope["root_path"] = root + self.prefix
        await self.app(scope, receive, send)


# ---------------------------------------------------------------- in-process HTTP


@dataclass(frozen=True)
class HttpExchange:
    """One HTTP request as plain values, to cross a handle call to another router."""

    method: str
    path: str  # the route path the other application serves (below its root_path)
    query_string: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


def json_reply(status: int, body: Any) -> HttpReply:
    content = orjson.dumps(body)
    return HttpReply(status, ((b"content-type", b"application/json"),
                              (b"content-length", str(len(content)).encode())), content)


async def run_asgi(app: ASGIApp, request: HttpExchange) -> HttpReply:
    """``request`` run through ``app`` in this process (its middleware and routes, as the
    proxy would have run it), the response collected whole."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "query_string": request.query_string,
        "root_path": "",
        "headers": [tuple(h) for h in request.headers],
        "client": None,
        "server": None,
    }
    sent_body = False
    done = asyncio.Event()

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await done.wait()  # nothing more comes: the client "leaves" once answered
        return {"type": "http.disconnect"}

    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers.extend((bytes(k), bytes(v)) for k, v in message.get("headers", ()))
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return HttpReply(status, tuple(headers), b"".join(chunks))


# ---------------------------------------------------------------- the model directory


@dataclass(frozen=True)
class ModelEntry:
    """One abserve model on the cluster, as GET /models lists it."""

    name: str | None  # None: its router did not say (yet)
    application: str
    route_prefix: str | None
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "application": self.application,
                "route_prefix": self.route_prefix, "status": self.status}


@dataclass(frozen=True)
class AppSummary:
    """What Serve says of one application whose ingress is the router."""

    application: str
    route_prefix: str | None
    status: str
    deployed_at: float | None = None


def _status(value: Any) -> str:
    return str(getattr(value, "value", value) or UNKNOWN_STATUS)


def abserve_applications(details: Mapping[str, Any]) -> list[AppSummary]:
    """The abserve applications in Serve's instance details (the controller's
    ``get_serve_instance_details``): those whose ingress deployment is the router,
    sorted by route prefix, so the default (``/``) comes first."""
    out = []
    for name, app in (details.get("applications") or {}).items():
        if not isinstance(app, Mapping):
            continue
        topology = app.get("deployment_topology") or {}
        ingress = topology.get("ingress_deployment") if isinstance(topology, Mapping) else None
        if ingress is None:  # not built yet, or an older Serve: look at the deployments
            deployments = app.get("deployments") or {}
            ingress = ROUTER_INGRESS if ROUTER_INGRESS in deployments else None
        if ingress != ROUTER_INGRESS:
            continue
        out.append(AppSummary(str(name), app.get("route_prefix"), _status(app.get("status")),
                              app.get("last_deployed_time_s")))
    return sorted(out, key=lambda a: (a.route_prefix is None, a.route_prefix or "",
                                      a.application))


class ClusterSource(Protocol):
    """The Ray side of the directory (router/ingress.py): Serve's controller and the
    other applications' routers."""

    async def details(self) -> Mapping[str, Any]:
        """Serve's instance details (``get_serve_instance_details``)."""
        ...

    async def model_of(self, application: str) -> str | None:
        """The model that application's router serves (asked through a handle)."""
        ...

    async def forward(self, application: str, request: HttpExchange) -> HttpReply:
        """``request`` run by that application's router (``run_asgi`` in its replica)."""
        ...


@dataclass
class _Cached:
    entries: list[ModelEntry] = field(default_factory=list)
    expires: float = float("-inf")
    error: str | None = None


class ModelDirectory:
    """The abserve models on the cluster, cached ``ttl_s``; concurrent readers share one
    read of the controller. A failed read keeps the last good list (and says why)."""

    def __init__(
        self,
        source: ClusterSource | None,
        *,
        model: str,
        application: str,
        route_prefix: str,
        ttl_s: float = 3.0,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.model = model
        self.application = application
        self.route_prefix = route_prefix
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._cached = _Cached()
        self._refresh: asyncio.Task[None] | None = None
        # (application, deployed at) -> model name: a name changes only with a redeploy.
        self._names: dict[tuple[str, float | None], str] = {}
        self.reads = 0

    @property
    def error(self) -> str | None:
        """Why the last read of the cluster failed; None when it did not."""
        return self._cached.error

    def _own(self, status: str = UNKNOWN_STATUS) -> ModelEntry:
        return ModelEntry(self.model, self.application, self.route_prefix, status)

    async def models(self) -> list[ModelEntry]:
        if self.source is None:
            return [self._own()]
        if self.clock() >= self._cached.expires:
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.ensure_future(self._read())
            await asyncio.shield(self._refresh)
        return self._cached.entries or [self._own()]

    async def find(self, name: str) -> ModelEntry | None:
        """The application serving model ``name``: the one at ``/models/<name>`` first,
        then the default, then any other."""
        matches = [e for e in await self.models() if e.name == name]
        if not matches:
            return None
        return min(matches, key=lambda e: (model_of_prefix(e.route_prefix) != name,
                                           e.route_prefix != "/"))

    async def _read(self) -> None:
        assert self.source is not None
        self.reads += 1
        try:
            details = await asyncio.wait_for(self.source.details(), self.timeout_s)
            apps = abserve_applications(details)
            names = await asyncio.gather(*(self._name_of(a) for a in apps))
        except Exception as exc:  # noqa: BLE001 - keep serving the last good list
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("could not list the cluster's models: %s", why)
            self._cached = _Cached(self._cached.entries, self.clock() + self.ttl_s, why)
            return
        entries = [ModelEntry(n, a.application, a.route_prefix, a.status)
                   for a, n in zip(apps, names, strict=True)]
        self._cached = _Cached(entries, self.clock() + self.ttl_s, None)

    async def _name_of(self, app: AppSummary) -> str | None:
        if app.application == self.application:
            return self.model
        named = model_of_prefix(app.route_prefix)
        if named is not None:
            return named
        key = (app.application, app.deployed_at)
        if key in self._names:
            return self._names[key]
        assert self.source is not None
        try:
            name = await asyncio.wait_for(self.source.model_of(app.application),
                                          self.timeout_s)
        except Exception:  # noqa: BLE001 - deploying or unhealthy: unnamed for now
            return None
        if name is not None:
            self._names[key] = name
        return name

    def names(self, entries: list[ModelEntry]) -> list[str]:
        return sorted({e.name for e in entries if e.name is not None})


# ---------------------------------------------------------------- OIP forwarding


class OipForwarder:
    """Pure ASGI, behind admission: ``/v2/models/<other>/...`` goes to that model's
    router and its status, headers and body come back unchanged; an unknown name is 404
    listing the models. This model's own requests go on to the app."""

    def __init__(
        self,
        app: ASGIApp,
        directory: ModelDirectory,
        max_body_bytes: int,
        timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self.directory = directory
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rel = route_path(scope)
        name = oip_model_name(rel)
        if name is None or name == self.directory.model:
            await self.app(scope, receive, send)
            return
        reply = await self._forward(scope, receive, name, rel)
        if reply is None:  # the client went away
            return
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": list(reply.headers)})
        await send({"type": "http.response.body", "body": reply.body})

    async def _forward(
        self, scope: Scope, receive: Receive, name: str, rel: str
    ) -> HttpReply | None:
        directory = self.directory
        entry = await directory.find(name)
        if entry is None:
            entries = await directory.models()
            if directory.error is not None:
                return json_reply(503, {"error": (
                    f"unknown model {name!r}: the cluster's models could not be listed "
                    f"({directory.error}); retry shortly")})
            return json_reply(404, {"error": (
                f"unknown model {name!r}; the models on this cluster: "
                f"{directory.names(entries)}")})
        headers = tuple((bytes(k), bytes(v)) for k, v in scope.get("headers", ()))
        try:
            length = next((v for k, v in headers if k == b"content-length"), None)
            body = await read_body(receive, length, self.max_body_bytes)
        except AbserveError as exc:
            return json_reply(exc.status_code, {"error": exc.message})
        if body is None:
            return None
        request = HttpExchange(scope["method"], rel, scope.get("query_string", b""),
                               headers, body)
        assert directory.source is not None  # find() named an application
        try:
            return await asyncio.wait_for(directory.source.forward(entry.application, request),
                                          self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - the other router's failure, said plainly
            log.warning("forwarding %s to application %s failed: %r", rel,
                        entry.application, exc)
            return json_reply(503, {"error": (
                f"model {name!r} (application {entry.application!r}) did not answer: "
                f"{type(exc).__name__}; retry shortly")})
