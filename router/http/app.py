"""One router replica's parts, and the FastAPI app built over them. No Ray import.

``assemble`` builds the data plane of one replica (cache, batchers, recorder,
``RouterCore``, the follower) around three boundaries it is given: the arms
(router/dataplane/upstream.py ``Arms``), the control plane (the typed
``ControlPlane`` client) and the runtime (Serve's replica and request ids).
``build_app`` registers the route modules over those parts; ``grpc_service`` builds
the OIP gRPC service over the same ones. The ingress deployment passes the Ray-backed
boundaries; tests/unit/test_http_app.py passes fakes and drives the same app in-process.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from router.controlplane.client import ControlPlane
from router.controlplane.drift import load_references
from router.dataplane.admission import Admission, AdmissionMiddleware
from router.dataplane.batcher import HopBatcher
from router.dataplane.cache import CacheBackend, LocalCache, PredictionCache, RedisCache
from router.dataplane.core import RouterCore
from router.dataplane.predlog import PredictionLog
from router.dataplane.recorder import BufferedRecorder, MetricFactory
from router.http import admin, oip, ops, predict
from router.http.auth import TOKEN_ENV, AdminAuth, load_admin_token
from router.http.follower import Follower
from router.http.grpc_service import GrpcService
from router.http.multimodel import ClusterSource, ModelDirectory, OipForwarder, PrefixStep
from router.http.predict import PredictEndpoint
from router.http.serving import ModelInfo, Predictions, Runtime, UpstreamArms
from serve.config import AbserveConfig, CacheConfig, model_route_prefix
from serve.errors import AbserveError, to_http

__all__ = ["VERSION", "ReplicaParts", "assemble", "build_app", "cache_backend", "grpc_service"]

VERSION = "0.1.0"  # what the OIP server metadata says, over REST and gRPC

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class CacheSetup:
    backend: CacheBackend | None
    kind: str  # off | local | redis
    url: str | None  # redacted: no password


def cache_backend(cfg: CacheConfig, environ: Mapping[str, str] = os.environ) -> CacheSetup:
    """Redis when a URL is configured (or in ABSERVE_REDIS_URL), else an in-process LRU."""
    if not cfg.enabled:
        return CacheSetup(None, "off", None)
    url = cfg.redis_url or environ.get("ABSERVE_REDIS_URL")
    if not url:
        log.warning("no Redis URL configured: using an in-process LRU cache per router replica")
        return CacheSetup(LocalCache(cfg.local_max_entries), "local", None)
    tls = {"ssl_cert_reqs": cfg.tls_verify, "ssl_ca_certs": cfg.tls_ca_file,
           "ssl_certfile": cfg.tls_cert_file, "ssl_keyfile": cfg.tls_key_file}
    backend = RedisCache(
        url,
        max_connections=cfg.max_connections,
        socket_timeout_s=max(cfg.timeout_ms / 1000.0 * 4, 0.2),
        tls={k: v for k, v in tls.items() if v is not None},
    )
    return CacheSetup(backend, "redis", backend.url)


@dataclass(frozen=True)
class ReplicaParts:
    """Everything one router replica's routes and middleware hold."""

    config: AbserveConfig
    model: ModelInfo
    arms: UpstreamArms
    control: ControlPlane
    runtime: Runtime
    cache: PredictionCache
    cache_setup: CacheSetup
    batcher: HopBatcher
    core: RouterCore
    follower: Follower
    admission: Admission
    auth: AdminAuth
    directory: ModelDirectory
    predlog: PredictionLog | None = None  # the prediction log, when log.enabled

    def close(self) -> None:
        """On replica shutdown (blocking: call it off the event loop): the prediction
        log writes what it buffered."""
        if self.predlog is not None:
            self.predlog.close()

    def predictions(self) -> Predictions:
        """The prediction step every protocol runs (REST, OIP REST, OIP gRPC)."""
        return Predictions(self.core, self.follower, self.runtime, self.predlog)

    def stats(self) -> dict[str, Any]:
        """This replica's own counters (/stats adds one replica's per version)."""
        core, batcher, versions = self.core, self.batcher, self.arms.versions
        return {
            "replica": self.runtime.replica_id(),
            "pid": os.getpid(),
            "revision": core.revision,
            "arms": {v: s.__dict__ for v, s in core.stats.items()},
            "breakers": {v: b.state.value for v, b in core.breakers.items()},
            "cache": {"kind": self.cache_setup.kind, "url": self.cache_setup.url,
                      **self.cache.stats.as_dict()},
            "hop_batching": {
                "requests": batcher.requests,
                "calls": batcher.calls,
                "call_ms_mean": round(1000 * batcher.call_s / max(batcher.calls, 1), 3),
                "in_flight_limit": {v: self.arms.hop_limit(v) for v in versions},
                "running_replicas": {v: self.arms.running_replicas(v) for v in versions},
            },
            "single_flight_joins": core.flight_joins,
            "admission": {"inflight": self.admission.inflight, **self.admission.stats.as_dict()},
            "drift": dict(self.follower.drift_status),  # the controller's word per version
            "drift_dropped_rows": self.follower.drift.dropped,
            "log": None if self.predlog is None else self.predlog.stats(),
        }


def assemble(
    config: AbserveConfig,
    model: ModelInfo,
    *,
    arms: UpstreamArms,
    control: ControlPlane,
    runtime: Runtime,
    metric_factory: MetricFactory,
    cache: CacheSetup,
    cluster: ClusterSource | None = None,
    clock: Callable[[], float] = time.monotonic,
    environ: Mapping[str, str] = os.environ,
) -> ReplicaParts:
    """``cluster``: Serve's view of the other applications (router/ingress.py); None
    lists this model alone and forwards nothing."""
    rc = config.router
    batcher = HopBatcher(
        arms.predict,
        max_rows=rc.batch_max_rows,
        wait_s=rc.batch_wait_ms / 1000.0,
        adaptive=rc.adaptive_batch_wait,
        max_in_flight=arms.hop_limit if rc.batch_in_flight_per_replica else None,
    )
    # Nobody waits for a shadow copy: it may wait longer to be merged into fewer calls.
    shadow_batcher = HopBatcher(
        arms.predict, max_rows=rc.batch_max_rows, wait_s=rc.shadow_batch_wait_ms / 1000.0,
        adaptive=False,
    )
    prediction_cache = PredictionCache(
        cache.backend,
        width=model.spec.width,
        ttl_s=config.cache.ttl_s,
        timeout_s=config.cache.timeout_ms / 1000.0,
        retry_after_s=config.cache.retry_after_s,
    )
    # Ray's metric objects once per replica; the core only counts into the buffer.
    samples = rc.latency_samples_per_s
    recorder = BufferedRecorder(
        metric_factory, config.experiment.name,
        max_latencies=max(1, round(samples * rc.metrics_flush_s)) if samples else None,
    )
    core = RouterCore(
        config, batcher, prediction_cache, clock, shadow_call=shadow_batcher, recorder=recorder,
        spec=model.spec,
    )
    auth = AdminAuth(load_admin_token(config.admin, dict(environ)))
    predlog = None
    if config.log.enabled:
        rows = recorder.metrics["abserve_log_rows"]
        predlog = PredictionLog(
            config.log, model=model.name, replica=runtime.replica_id(), spec=model.spec,
            tabular=model.schema is not None,
            counter=lambda table, result, n: rows.inc(
                n, {"experiment": recorder.experiment, "table": table, "result": result}),
        )
    if not auth.enabled:
        log.warning("admin API disabled: set %s or admin.token_file to enable it", TOKEN_ENV)
    return ReplicaParts(
        config=config, model=model, arms=arms, control=control, runtime=runtime,
        cache=prediction_cache, cache_setup=cache, batcher=batcher, core=core,
        follower=Follower(config, core, control, recorder, runtime.replica_id(),
                          references=load_references(config, model.manifests)
                          if config.drift.enabled else None),
        admission=Admission(rc.max_inflight, rc.max_inflight_per_key, rc.retry_after_s,
                            config.http.user_key_header),
        auth=auth,
        directory=ModelDirectory(
            cluster, model=config.model, application=config.app_name,
            route_prefix=config.http.route_prefix, timeout_s=rc.probe_timeout_s, clock=clock,
        ),
        predlog=predlog,
    )


def build_app(parts: ReplicaParts) -> FastAPI:
    app = FastAPI(
        title="abserve",
        description="A/B tests and canary rollouts of ML models on Ray Serve.",
        version=VERSION,
    )

    @app.exception_handler(AbserveError)
    async def abserve_error(_: Request, exc: AbserveError) -> Response:
        status, body = to_http(exc)
        return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                        headers=exc.headers or None)

    config = parts.config
    predictions = parts.predictions()
    endpoint = PredictEndpoint(parts.model, config.http, parts.follower, predictions)
    fast_routes = predict.register(app, endpoint)
    oip.register(
        app, model=parts.model, http=config.http, core=parts.core, follower=parts.follower,
        predictions=predictions, arms=parts.arms, probe_timeout_s=config.router.probe_timeout_s,
    )
    admin.register(
        app, auth=parts.auth, control=parts.control, follower=parts.follower,
        max_body_bytes=config.http.max_body_bytes,
    )
    ops.register(
        app, config=config, model=parts.model, core=parts.core, follower=parts.follower,
        control=parts.control, arms=parts.arms, replica_stats=parts.stats, auth=parts.auth,
        directory=parts.directory, predlog=parts.predlog,
    )
    # Outermost last: PrefixStep -> AdmissionMiddleware -> OipForwarder -> the routes.
    app.add_middleware(OipForwarder, directory=parts.directory,
                       max_body_bytes=config.http.max_body_bytes)
    app.add_middleware(AdmissionMiddleware, admission=parts.admission, routes=fast_routes)
    if config.http.route_prefix == "/":  # the default model answers under its name too
        app.add_middleware(PrefixStep, prefix=model_route_prefix(config.model))
    return app


def grpc_service(parts: ReplicaParts) -> GrpcService:
    """The OIP gRPC service over the same parts as the app: the same admission, follower,
    split, cache, fallback and prediction log (router/http/grpc_service.py)."""
    config = parts.config
    return GrpcService(
        model=parts.model, http=config.http, core=parts.core, follower=parts.follower,
        predictions=parts.predictions(), arms=parts.arms, admission=parts.admission,
        probe_timeout_s=config.router.probe_timeout_s, version=VERSION,
    )
