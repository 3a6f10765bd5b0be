"""The ingress Ray Serve deployment: HTTP in, RouterCore, handles out. Glue only.

This module turns live state into plain values (headers, body bytes, handle
results) and Ray's exceptions into ours (one table, ``_translate``); every
decision is in ``router/dataplane/core.py``, ``router/protocol/request.py`` and their helpers.
It never imports torch or tensorflow: the router replica stays small.
"""

import asyncio
import logging
import os
import time
import uuid
from typing import Any, ClassVar

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import ClientDisconnect

from models.registry import Registry
from router.controlplane.experiment import ExperimentState, effective_weights
from router.controlplane.report_html import render_report_html
from router.dataplane.admission import Admission, AdmissionMiddleware, ASGIApp, Receive, Scope, Send
from router.dataplane.batcher import HopBatcher
from router.dataplane.cache import LocalCache, PredictionCache, RedisCache
from router.dataplane.core import Prediction, RouterCore
from router.dataplane.recorder import BufferedRecorder
from router.http.auth import TOKEN_ENV, AdminAuth, load_admin_token
from router.protocol.oip import (
    NOT_READY_STATUS,
    check_model,
    decode_body,
    error_body,
    infer_response,
    model_metadata,
    parse_infer_request,
    server_metadata,
    version_metadata,
)
from router.protocol.request import check_content_type, parse_batch, parse_json, parse_single
from router.protocol.schemas import BATCH_RESPONSES, OPENAPI_BATCH, OPENAPI_SINGLE, SINGLE_RESPONSES
from serve.config import AbserveConfig, parse_config
from serve.errors import AbserveError, InvalidInput, PayloadTooLarge, UpstreamError, to_http
from serve.telemetry import ray_metric_factory

__all__ = ["Router", "app"]

log = logging.getLogger("ray.serve")
SHADOW_WAIT_S = 0.05
METRICS_FLUSH_S = 1.0  # router counts -> Ray's metric objects (Ray exports every 10 s)
MAX_PENDING_SERVED = 100_000  # predictions kept for the controller while it is unreachable

app = FastAPI(
    title="abserve",
    description="A/B tests and canary rollouts of ML models on Ray Serve.",
    version="0.1.0",
)


class ThisReplica:
    """The router replica of this process, as the ASGI middleware sees it.

    A class, not an instance: ``serve.ingress`` pickles a copy of ``app`` and of
    the middleware's arguments, and a class travels by reference, so the copy
    and the replica share these. (One router replica per process.)
    """

    admission: ClassVar[Admission] = Admission()
    routes: ClassVar[dict[str, ASGIApp]] = {}  # the hot routes as raw ASGI; the replica fills it


app.add_middleware(AdmissionMiddleware, state=ThisReplica)


@app.exception_handler(AbserveError)
async def _abserve_error(_: Request, exc: AbserveError) -> Response:
    status, body = to_http(exc)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def _await(response: Any) -> Any:
    """DeploymentResponse is awaitable but not a coroutine; wait_for wants one."""
    return await response


def _unwrap(exc: BaseException) -> BaseException:
    """Our own error raised in another replica arrives wrapped in a RayTaskError."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, AbserveError) else exc


def _translate(exc: BaseException) -> BaseException:
    """Ray's and asyncio's exceptions -> ours. InvalidInput passes through as is."""
    from ray import exceptions as ray_exc
    from ray.serve import exceptions as serve_exc

    if isinstance(_unwrap(exc), InvalidInput):
        return _unwrap(exc)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return UpstreamError("the arm timed out", reason="timeout")
    if isinstance(exc, serve_exc.BackPressureError):
        return UpstreamError("the arm is backpressured", reason="backpressure")
    unavailable = (
        serve_exc.DeploymentUnavailableError,
        serve_exc.ReplicaUnavailableError,
        ray_exc.ActorDiedError,
        ray_exc.ActorUnavailableError,
        ray_exc.RayActorError,
    )
    if isinstance(exc, unavailable):
        return UpstreamError("the arm is unavailable", reason="unavailable")
    return UpstreamError(f"the arm failed: {type(exc).__name__}", reason="error")


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class Router:
    def __init__(
        self,
        config: dict[str, Any],
        handles: dict[str, DeploymentHandle],
        controller: DeploymentHandle,
    ) -> None:
        self.config: AbserveConfig = parse_config(config)
        registry = Registry(self.config.registry)
        self.manifests = {
            m.version: registry.manifest(self.config.model, m.version) for m in self.config.models
        }
        shapes = {tuple(m.input_shape) for m in self.manifests.values()}
        labels = {tuple(m.class_labels) for m in self.manifests.values()}
        if len(shapes) != 1 or len(labels) != 1:
            raise ValueError(
                "every version of one model must share its input shape and class labels; "
                f"got shapes {shapes} and labels {labels}"
            )
        self.input_shape = shapes.pop()
        self.labels = labels.pop()
        self.handles = handles
        self._model_configs = {m.version: m for m in self.config.models}
        self._predict_handles: dict[str, DeploymentHandle] = {}
        self.http = self.config.http
        self.cache = PredictionCache(
            self._cache_backend(),
            n_classes=len(self.labels),
            ttl_s=self.config.cache.ttl_s,
            timeout_s=self.config.cache.timeout_ms / 1000.0,
            retry_after_s=self.config.cache.retry_after_s,
        )
        router_cfg = self.config.router
        ThisReplica.admission.configure(
            router_cfg.max_inflight, router_cfg.max_inflight_per_key,
            router_cfg.retry_after_s, self.http.user_key_header,
        )
        self.batcher = HopBatcher(
            self._call_arm,
            max_rows=router_cfg.batch_max_rows,
            wait_s=router_cfg.batch_wait_ms / 1000.0,
            adaptive=router_cfg.adaptive_batch_wait,
            max_in_flight=self._hop_limit if router_cfg.batch_in_flight_per_replica else None,
        )
        # Shadow copies wait up to 50 ms to be merged: fewer, larger calls cost the
        # router and the shadow's replica less CPU, and nobody waits for them.
        self.shadow_batcher = HopBatcher(
            self._call_arm, max_rows=self.config.router.batch_max_rows, wait_s=SHADOW_WAIT_S,
            adaptive=False,
        )
        # Ray metric objects once per replica; the core only counts into the buffer.
        self.recorder = BufferedRecorder(ray_metric_factory, self.config.experiment.name)
        self.core = RouterCore(
            self.config, self.batcher, self.cache, time.monotonic,
            shadow_call=self.shadow_batcher, recorder=self.recorder,
        )
        self._user_header = self.http.user_key_header.lower()
        self._version_header = self.http.version_header.lower()
        self._user_header_b = self._user_header.encode("latin-1")
        self._version_header_b = self._version_header.encode("latin-1")
        ThisReplica.routes.update(
            {"/predict": self._predict_asgi, "/predict/batch": self._predict_asgi}
        )
        self.controller = controller
        self.auth = AdminAuth(load_admin_token(self.config.admin))
        if not self.auth.enabled:
            log.warning("admin API disabled: set %s or admin.token_file to enable it", TOKEN_ENV)
        self.paused = False
        self._synced: asyncio.Future[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._served: list[tuple[str, str, int]] = []
        self._replica_id = serve.get_replica_context().replica_tag
        self._label_index = {label: i for i, label in enumerate(self.labels)}
        log.info("router ready: arms %s, cache %s", self.core.arms, self._cache_kind)

    def _hop_limit(self, version: str) -> int:
        """Calls out at once to a version: batch_in_flight_per_replica per running replica.

        The replica count is the handle's (``_running_replicas``); until it is
        known (before the first call) the config's count stands in: num_replicas,
        or with autoscaling the initial replicas.
        """
        n = self._running_replicas(version)
        if n is None:
            m = self._model_configs[version]
            auto = m.autoscaling
            n = m.num_replicas if auto is None else auto.initial_replicas or auto.min_replicas
        return self.config.router.batch_in_flight_per_replica * n

    def _running_replicas(self, version: str) -> int | None:
        """Replicas of a version this router's handle can send to now; None if not known.

        Serve 2.60 keeps the count inside the handle's request router, with no
        public getter; if a Ray upgrade moves it, this says None and the config's
        count is used (tests/integration/test_batching.py checks it is found).
        """
        try:
            router: Any = self.handles[version]._router  # noqa: SLF001
            n = len(router._asyncio_router.request_router.curr_replicas)  # noqa: SLF001
        except Exception:  # noqa: BLE001 - the count only shapes batches
            return None
        return n or None

    # ------------------------------------------------------------ experiment state

    def _apply_state(self, data: dict[str, Any]) -> None:
        state = ExperimentState.from_dict(data)
        if state.revision != self.core.revision:
            self.core.set_experiment(state.experiment, effective_weights(state), state.revision)
            self.paused = state.paused

    async def _ensure_synced(self) -> None:
        """The first request waits for the controller's state once; then a poller follows it."""
        if self._synced is None:
            self._synced = asyncio.get_running_loop().create_future()
            try:
                data = await asyncio.wait_for(_await(self.controller.get_state.remote()), 10)
                self._apply_state(data)
            except Exception as exc:  # noqa: BLE001 - serve with the config's weights meanwhile
                log.warning("experiment state not loaded yet (%r); using the config's", exc)
            self._synced.set_result(None)
            self._poller = asyncio.get_running_loop().create_task(self._poll())
            self._metrics_task = asyncio.get_running_loop().create_task(self._flush_metrics())
        elif not self._synced.done():
            await asyncio.shield(self._synced)

    async def _flush_metrics(self) -> None:
        """The recorder's counts to Ray every second, recorded off the event loop."""
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            snap = self.recorder.snapshot()
            if snap:
                try:
                    await asyncio.to_thread(self.recorder.emit, snap)
                except Exception as exc:  # noqa: BLE001 - metrics never break serving
                    log.warning("metrics export failed: %r", exc)

    async def _poll(self) -> None:
        interval = self.config.state.poll_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self._sync()
            except Exception as exc:  # noqa: BLE001 - keep serving the last known state
                log.warning("sync with the experiment controller failed: %r", exc)

    async def _sync(self) -> None:
        """Report metrics and served predictions; pick up a new revision and bandit counts."""
        served, self._served = self._served, []
        payload = {
            "metrics": {v: m.to_dict() for v, m in self.core.metrics.items() if m.requests},
            "shadows": {v: s.to_dict() for v, s in self.core.shadow_stats.items()},
            "served": served,
        }
        try:
            reply = await asyncio.wait_for(
                _await(self.controller.sync.remote(self._replica_id, payload)), 2
            )
        except BaseException:
            self._served = served + self._served  # try again next time
            del self._served[:-MAX_PENDING_SERVED]
            raise
        bandit = reply["bandit"]
        self.core.set_bandit_counts(bandit["successes"], bandit["failures"])
        if reply["revision"] != self.core.revision:
            data = await asyncio.wait_for(_await(self.controller.get_state.remote()), 2)
            self._apply_state(data)
            log.info("experiment revision %d applied", self.core.revision)

    def _remember(self, request_id: str, pred: Prediction) -> None:
        """Keep what was served, so that feedback can be joined to it later."""
        labels = np.argmax(pred.probabilities, axis=1)
        if len(labels) == 1:
            self._served.append((request_id, pred.version, int(labels[0])))
        else:
            self._served.extend(
                (f"{request_id}/{i}", pred.version, int(label)) for i, label in enumerate(labels)
            )
        if len(self._served) > MAX_PENDING_SERVED:
            del self._served[:-MAX_PENDING_SERVED]

    def _cache_backend(self) -> RedisCache | LocalCache | None:
        cfg = self.config.cache
        self._cache_url: str | None = None
        if not cfg.enabled:
            self._cache_kind = "off"
            return None
        url = cfg.redis_url or os.environ.get("ABSERVE_REDIS_URL")
        if url:
            self._cache_kind = "redis"
            tls = {"ssl_cert_reqs": cfg.tls_verify, "ssl_ca_certs": cfg.tls_ca_file,
                   "ssl_certfile": cfg.tls_cert_file, "ssl_keyfile": cfg.tls_key_file}
            backend = RedisCache(
                url,
                max_connections=cfg.max_connections,
                socket_timeout_s=max(cfg.timeout_ms / 1000.0 * 4, 0.2),
                tls={k: v for k, v in tls.items() if v is not None},
            )
            self._cache_url = backend.url  # redacted: no password
            return backend
        self._cache_kind = "local"
        log.warning("no Redis URL configured: using an in-process LRU cache per router replica")
        return LocalCache(cfg.local_max_entries)

    async def _call_arm(self, version: str, batch: np.ndarray, timeout_s: float) -> np.ndarray:
        handle = self._predict_handles.get(version)
        if handle is None:  # made once, on the event loop (``handle.predict`` builds a new one)
            handle = self._predict_handles[version] = self.handles[version].options(
                method_name="predict"
            )
        response = handle.remote(batch)
        try:
            return await asyncio.wait_for(_await(response), timeout_s)
        except Exception as exc:  # noqa: BLE001 - translated at this boundary, by table
            if isinstance(exc, TimeoutError | asyncio.TimeoutError):
                response.cancel()
            translated = _translate(exc)
            if isinstance(translated, UpstreamError) and translated.reason == "error":
                log.warning("arm %s failed: %s", version, str(exc).splitlines()[-1][:300])
            raise translated from None

    async def _read(self, request: Request) -> bytes:
        """The raw body of a FastAPI route, read by ``_read_asgi``'s limits."""
        length = request.headers.get("content-length")
        body = await self._read_asgi(
            request.receive, length.encode("latin-1") if length is not None else None
        )
        if body is None:
            raise ClientDisconnect()
        return body

    async def _body(self, request: Request) -> Any:
        check_content_type(request.headers.get("content-type"))
        return parse_json(await self._read(request))

    def _route_args(self, request: Request) -> tuple[str | None, str | None]:
        headers = request.headers
        return headers.get(self._user_header), headers.get(self._version_header)

    def _answer(self, pred: Prediction, request_id: str, row: int) -> dict[str, Any]:
        probs = pred.probabilities[row]
        return {
            "label": self.labels[int(np.argmax(probs))],
            "probabilities": {
                label: round(float(p), 6) for label, p in zip(self.labels, probs, strict=True)
            },
            "model": self.config.model,
            "version": pred.version,
            "arm": pred.arm,
            "cached": pred.cached[row],
            "fallback": pred.fallback,
            "request_id": request_id,
        }

    def _headers(self, pred: Prediction) -> dict[str, str]:
        headers = {
            "X-Model-Version": pred.version,
            "X-Cache": pred.cache_status,
            "X-Fallback": "true" if pred.fallback else "false",
        }
        if pred.fallback_reason:
            headers["X-Fallback-Reason"] = pred.fallback_reason
        return headers

    @staticmethod
    def _request_id() -> str:
        """Serve's own request id: the proxy's X-Request-Id header and log lines carry it."""
        rid = serve.context._get_serve_request_context().request_id
        return rid or uuid.uuid4().hex

    async def _predict(
        self, body: bytes, user_key: str | None, pinned: str | None, *, many: bool
    ) -> tuple[bytes, dict[str, str]]:
        """A /predict or /predict/batch body in, the response body and headers out."""
        await self._ensure_synced()
        data = parse_json(body)
        if many:
            batch = parse_batch(data, self.input_shape, self.http.max_batch_instances)
        else:
            batch = parse_single(data, self.input_shape)
        pred = await self.core.predict(batch, user_key=user_key, pinned=pinned)
        rid = self._request_id()
        self._remember(rid, pred)
        out: dict[str, Any]
        if many:
            out = {
                "predictions": [self._answer(pred, rid, i) for i in range(len(batch))],
                "model": self.config.model,
                "version": pred.version,
                "arm": pred.arm,
                "fallback": pred.fallback,
                "request_id": rid,
            }
        else:
            out = self._answer(pred, rid, 0)
        if pred.fallback_reason:
            out["fallback_reason"] = pred.fallback_reason
        return orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), self._headers(pred)

    async def _predict_asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /predict and /predict/batch straight from ASGI (``ThisReplica.routes``).

        Same contract as the FastAPI routes below (which stay for the schema and
        any path the fast table does not name): status, body and headers alike.
        """
        many = scope["path"].endswith("/batch")
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        try:
            content_type = headers.get(b"content-type")
            check_content_type(content_type.decode("latin-1") if content_type else None)
            body = await self._read_asgi(receive, headers.get(b"content-length"))
            if body is None:  # the client went away
                return
            user = headers.get(self._user_header_b)
            pin = headers.get(self._version_header_b)
            content, extra = await self._predict(
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

    async def _read_asgi(self, receive: Receive, length: bytes | None) -> bytes | None:
        """The raw body from ASGI messages, refused as soon as it passes
        http.max_body_bytes; None when the client went away."""
        limit = self.http.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(
                f"body of {length.decode()} bytes exceeds the limit of {limit} bytes"
            )
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

    @app.post("/predict", openapi_extra=OPENAPI_SINGLE, responses=SINGLE_RESPONSES)
    async def predict(self, request: Request) -> Response:
        """Predict one input; the experiment picks the arm."""
        check_content_type(request.headers.get("content-type"))
        content, headers = await self._predict(
            await self._read(request), *self._route_args(request), many=False
        )
        return Response(content, media_type="application/json", headers=headers)

    @app.post("/predict/batch", openapi_extra=OPENAPI_BATCH, responses=BATCH_RESPONSES)
    async def predict_batch(self, request: Request) -> Response:
        """Predict many inputs in one request; one arm answers them all."""
        check_content_type(request.headers.get("content-type"))
        content, headers = await self._predict(
            await self._read(request), *self._route_args(request), many=True
        )
        return Response(content, media_type="application/json", headers=headers)

    @app.get("/health")
    async def health(self) -> Response:
        """Liveness: the router answers."""
        return _json({"status": "ok"})

    async def _arms_ready(self, versions: list[str] | None = None) -> dict[str, bool]:
        """Each version (default: every deployed one) answers a readiness call within 2 s."""

        async def probe(version: str) -> bool:
            try:
                return bool(await asyncio.wait_for(_await(self.handles[version].ready.remote()), 2))
            except Exception as exc:  # noqa: BLE001
                log.warning("readiness probe of %s failed: %r", version, exc)
                return False

        versions = sorted(self.handles) if versions is None else versions
        results = await asyncio.gather(*(probe(v) for v in versions))
        return dict(zip(versions, results, strict=True))

    @app.get("/ready")
    async def ready(self) -> Response:
        """Readiness: every arm answers within 2 s."""
        arms = await self._arms_ready()
        ok = all(arms.values())
        return _json({"ready": ok, "arms": arms}, status=200 if ok else 503)

    @app.get("/models")
    async def models(self) -> Response:
        """Deployed versions, their manifests and current weights."""
        await self._ensure_synced()
        weights = {a.version: a.weight for a in self.core.arms}
        versions = []
        for version, manifest in self.manifests.items():
            entry = manifest.to_dict()
            entry["weight"] = weights.get(version, 0.0)
            entry["baseline"] = version == self.core.baseline
            entry["breaker"] = self.core.breakers[version].state.value
            versions.append(entry)
        return _json(
            {
                "model": self.config.model,
                "experiment": self.config.experiment.name,
                "baseline": self.core.baseline,
                "revision": self.core.revision,
                "paused": self.paused,
                "input_shape": list(self.input_shape),
                "class_labels": list(self.labels),
                "versions": versions,
            }
        )

    @app.post("/feedback")
    async def feedback(self, request: Request) -> Response:
        """Ground truth for a served prediction: {"request_id": ..., "label": ...}.

        For /predict/batch, item i of request R is "R/i". Unknown or expired id: 404;
        a second feedback for one id is accepted but not counted again.
        """
        await self._ensure_synced()
        data = await self._body(request)
        if not isinstance(data, dict) or set(data) != {"request_id", "label"}:
            raise InvalidInput('body must be {"request_id": "...", "label": "..."}')
        rid, label = data["request_id"], data["label"]
        if not isinstance(rid, str) or not 0 < len(rid) <= 256:
            raise InvalidInput("request_id: expected a string", field="request_id")
        if isinstance(label, str) and label in self._label_index:
            index = self._label_index[label]
        elif isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(
            self.labels
        ):
            index = label
        else:
            raise InvalidInput(f"label: one of {list(self.labels)} (or its index)", field="label")
        await self._sync()  # our own recent predictions reach the controller first
        return _json(await self._ask_controller("record_feedback", rid, index))

    @app.get("/admin/report")
    async def admin_report(self, request: Request) -> Response:
        """The experiment report as JSON: per arm traffic, errors, latency, accuracy, p-values."""
        self._authorize(request)
        await self._sync()
        return _json(await _await(self.controller.report.remote()))

    @app.get("/report", response_class=HTMLResponse)
    async def report_page(self) -> HTMLResponse:
        """The report as a page with charts (traffic share over time, latency, accuracy)."""
        await self._ensure_synced()
        await self._sync()
        report = await _await(self.controller.report.remote())
        return HTMLResponse(render_report_html(report))

    # ------------------------------------------------------------ Open Inference Protocol
    # KServe V2 REST (router/protocol/oip.py): errors are {"error": ...} alone, bad input is 400.

    @app.get("/v2")
    async def oip_server_metadata(self) -> Response:
        return _json(server_metadata(app.version))

    @app.get("/v2/health/live")
    async def oip_live(self) -> Response:
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def oip_ready(self) -> Response:
        """Ready when every deployed version answers (the protocol: 200, else 4xx)."""
        ok = all((await self._arms_ready()).values())
        return _json({"ready": ok}, status=200 if ok else NOT_READY_STATUS)

    @app.get("/v2/models/{name}")
    async def oip_model_metadata(self, name: str) -> Response:
        return self._oip_metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}")
    async def oip_version_metadata(self, name: str, version: str) -> Response:
        return self._oip_metadata(name, version)

    @app.get("/v2/models/{name}/ready")
    async def oip_model_ready(self, name: str) -> Response:
        return await self._oip_model_ready(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def oip_version_ready(self, name: str, version: str) -> Response:
        return await self._oip_model_ready(name, version)

    @app.post("/v2/models/{name}/infer")
    async def oip_infer(self, request: Request, name: str) -> Response:
        """The experiment picks the arm, as for /predict (sticky on the user key header)."""
        return await self._oip_infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def oip_infer_version(self, request: Request, name: str, version: str) -> Response:
        """Pins the version, as X-Model-Version does; a failure still falls back."""
        return await self._oip_infer(request, name, version)

    def _oip_metadata(self, name: str, version: str | None) -> Response:
        try:
            check_model(name, version, self.config.model, self.core.versions)
        except AbserveError as exc:
            return _json(error_body(exc), status=exc.status_code)
        if version is None:
            return _json(model_metadata(name, self.manifests))
        return _json(version_metadata(name, self.manifests[version]))

    async def _oip_model_ready(self, name: str, version: str | None) -> Response:
        """The unversioned model is ready when every version is (any may be routed to)."""
        try:
            check_model(name, version, self.config.model, self.core.versions)
        except AbserveError as exc:
            return _json(error_body(exc), status=exc.status_code)
        arms = await self._arms_ready(None if version is None else [version])
        ok = all(arms.values())
        return _json({"name": name, "ready": ok}, status=200 if ok else NOT_READY_STATUS)

    async def _oip_infer(self, request: Request, name: str, version: str | None) -> Response:
        try:
            check_model(name, version, self.config.model, self.core.versions)
            await self._ensure_synced()
            data, binary = decode_body(
                await self._read(request), request.headers.get("inference-header-content-length")
            )
            req = parse_infer_request(
                data, self.input_shape, self.http.max_batch_instances, binary
            )
            user_key = request.headers.get(self._user_header)
            pred = await self.core.predict(req.batch, user_key=user_key, pinned=version)
        except AbserveError as exc:
            return _json(error_body(exc), status=exc.status_code)
        rid = self._request_id()
        self._remember(rid, pred)
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
            self.config.model,
            pred.version,
            req.id,
            pred.probabilities,
            self.labels,
            req.requested_outputs,
            parameters,
        )
        return _json(body, headers=self._headers(pred))

    # ------------------------------------------------------------ admin

    def _authorize(self, request: Request) -> None:
        """Every admin route: the bearer header only, never credentials in the URL."""
        self.auth.check(request.headers.get("authorization"), request.query_params.keys())

    async def _ask_controller(self, method: str, *args: Any) -> Any:
        """Call the controller; its own errors (InvalidInput, NotFound) keep their status."""
        try:
            return await _await(getattr(self.controller, method).remote(*args))
        except Exception as exc:  # noqa: BLE001
            raise _unwrap(exc) from None

    async def _admin(self, request: Request, op: str, params: dict[str, Any]) -> Response:
        self._authorize(request)
        data = await self._ask_controller("apply", op, params, self._who(request))
        self._apply_state(data)  # this replica at once; the others within a poll interval
        return _json(self._experiment_view(data))

    async def _admin_body(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        data = await self._body(request)
        if not isinstance(data, dict):
            raise InvalidInput("body must be a JSON object")
        return data

    def _experiment_view(self, data: dict[str, Any]) -> dict[str, Any]:
        state = ExperimentState.from_dict(data)
        return {**data, "effective_weights": effective_weights(state)}

    @app.get("/admin/experiment")
    async def admin_experiment(self, request: Request) -> Response:
        """The live experiment: arms, weights, baseline, revision, paused."""
        self._authorize(request)
        data = await _await(self.controller.get_state.remote())
        return _json(self._experiment_view(data))

    @app.put("/admin/weights")
    async def admin_weights(self, request: Request) -> Response:
        """Set weights: {"weights": {"v1": 80, "v2": 20}}; they must still sum to 100."""
        body = await self._admin_body(request)
        return await self._admin(request, "set_weights", {"weights": body.get("weights")})

    @app.put("/admin/shadows")
    async def admin_shadows(self, request: Request) -> Response:
        """Set the shadow versions: {"shadows": [{"version": "v3", "share": 0.2}]}."""
        body = await self._admin_body(request)
        return await self._admin(request, "set_shadows", {"shadows": body.get("shadows")})

    @app.post("/admin/candidates")
    async def admin_add_candidate(self, request: Request) -> Response:
        """Add a deployed version as an arm: {"version": "v3", "weight": 5}."""
        body = await self._admin_body(request)
        return await self._admin(request, "add_candidate", body)

    @app.delete("/admin/candidates/{version}")
    async def admin_remove_arm(self, request: Request, version: str) -> Response:
        """Remove a candidate arm; its weight returns to the baseline."""
        return await self._admin(request, "remove_arm", {"version": version})

    @app.post("/admin/promote")
    async def admin_promote(self, request: Request) -> Response:
        """The candidate becomes the baseline: {"version": "v2"}."""
        body = await self._admin_body(request)
        return await self._admin(request, "promote", body)

    @app.post("/admin/rollback")
    async def admin_rollback(self, request: Request) -> Response:
        """A candidate's weight to 0 at once: {"version": "v2"} ({} = every candidate)."""
        body = await self._admin_body(request)
        return await self._admin(request, "rollback", body)

    @app.post("/admin/pause")
    async def admin_pause(self, request: Request) -> Response:
        """All traffic to the baseline; the weights are kept for resume."""
        return await self._admin(request, "pause", {})

    @app.post("/admin/resume")
    async def admin_resume(self, request: Request) -> Response:
        return await self._admin(request, "resume", {})

    @app.post("/admin/canary")
    async def admin_canary_start(self, request: Request) -> Response:
        """Start a canary plan: {"candidate": "v2", "steps": [5, 10, 25, 50, 100],
        "interval_s": 300, "min_requests": 500, "gates": {...}}."""
        body = await self._admin_body(request)
        return await self._canary_call(request, "start_canary", body)

    @app.get("/admin/canary")
    async def admin_canary(self, request: Request) -> Response:
        """The canary plan, its state and every decision with its reasons and numbers."""
        self._authorize(request)
        return _json(await _await(self.controller.canary_status.remote()))

    @app.post("/admin/canary/{action}")
    async def admin_canary_action(self, request: Request, action: str) -> Response:
        """pause | resume | abort (abort sends the candidate to 0 % at once)."""
        return await self._canary_call(request, "canary_action", action)

    async def _canary_call(self, request: Request, method: str, arg: Any) -> Response:
        self._authorize(request)
        data = await self._ask_controller(method, arg, self._who(request))
        return _json(data)

    @staticmethod
    def _who(request: Request) -> str:
        who = request.headers.get("x-admin-user", "admin")
        return who if 0 < len(who) <= 64 and who.isprintable() else "admin"

    @app.get("/admin/audit")
    async def admin_audit(self, request: Request, limit: int = 100) -> Response:
        """The last `limit` changes: time, who, operation, before, after."""
        self._authorize(request)
        entries = await _await(self.controller.audit.remote(max(1, min(limit, 10_000))))
        return _json({"entries": entries})

    @app.get("/stats")
    async def stats(self) -> Response:
        """This router replica's counters: per arm, the cache, and one replica per version."""

        async def model_stats(version: str) -> dict[str, Any] | None:
            try:
                return dict(await asyncio.wait_for(_await(self.handles[version].stats.remote()), 2))
            except Exception:  # noqa: BLE001 - a down version shows as null
                return None

        versions = sorted(self.handles)
        replicas = await asyncio.gather(*(model_stats(v) for v in versions))
        return _json(
            {
                "replica": serve.get_replica_context().replica_tag,
                "pid": os.getpid(),
                "revision": self.core.revision,
                "arms": {v: s.__dict__ for v, s in self.core.stats.items()},
                "breakers": {v: b.state.value for v, b in self.core.breakers.items()},
                "cache": {"kind": self._cache_kind, "url": self._cache_url,
                          **self.cache.stats.as_dict()},
                "hop_batching": {"requests": self.batcher.requests, "calls": self.batcher.calls,
                                 "call_ms_mean": round(1000 * self.batcher.call_s
                                                       / max(self.batcher.calls, 1), 3),
                                 "in_flight_limit": {v: self._hop_limit(v)
                                                     for v in sorted(self.handles)},
                                 "running_replicas": {v: self._running_replicas(v)
                                                      for v in sorted(self.handles)}},
                "single_flight_joins": self.core.flight_joins,
                "admission": {"inflight": ThisReplica.admission.inflight,
                              **ThisReplica.admission.stats.as_dict()},
                "models": dict(zip(versions, replicas, strict=True)),
            }
        )
