"""Operations routes: /health, /ready, /models, /stats, /feedback and the /report page.

None of them is shed by admission control: a loaded router still answers
its probes and its counters.
"""

from __future__ import annotations

import asyncio
import html
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from router.controlplane.client import ControlPlane
from router.controlplane.report_html import render_report_html
from router.dataplane.core import RouterCore
from router.dataplane.predlog import PredictionLog
from router.http.auth import REPORT_LINK_PARAM, AdminAuth
from router.http.follower import Follower
from router.http.multimodel import ModelDirectory
from router.http.oip import arms_ready
from router.http.serving import ModelInfo, UpstreamArms
from router.http.wire import json_body, json_response
from serve.config import AbserveConfig
from serve.errors import (
    AbserveError,
    Forbidden,
    InvalidInput,
    ServiceUnavailable,
    Unauthorized,
)

__all__ = ["feedback_label", "register"]


def feedback_label(model: ModelInfo, data: Any) -> tuple[str, int | list[float]]:
    """A /feedback body -> (request id, the truth); InvalidInput if it is not one.

    A classifier's truth is a label (its name or index); a regression model's is its
    value (a number, or a list of ``len(outputs)`` numbers), under ``value`` or ``label``.
    """
    spec = model.spec
    key = "label"
    if not spec.classifies and isinstance(data, dict) and "value" in data:
        key = "value"
    if not isinstance(data, dict) or set(data) != {"request_id", key}:
        what = '"label": "..."' if spec.classifies else '"value": <number>'
        raise InvalidInput(f'body must be {{"request_id": "...", {what}}}')
    rid, label = data["request_id"], data[key]
    if not isinstance(rid, str) or not 0 < len(rid) <= 256:
        raise InvalidInput("request_id: expected a string", field="request_id")
    if not spec.classifies:
        values = label if isinstance(label, list) else [label]
        if len(values) != spec.width or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        ):
            shape = "a number" if spec.width == 1 else f"a list of {spec.width} numbers"
            raise InvalidInput(
                f"{key}: the true value, {shape} ({', '.join(spec.outputs)})", field=key
            )
        return rid, [float(v) for v in values]
    if isinstance(label, str) and label in model.label_index:
        return rid, model.label_index[label]
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(model.labels):
        return rid, label
    raise InvalidInput(f"label: one of {list(model.labels)} (or its index)", field="label")


def refused_page(why: str) -> str:
    """What a browser shows when the report is refused: why, and how to get in."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>abserve report</title></head>"
        "<body style='font-family:sans-serif;max-width:40em;margin:3em auto'>"
        f"<h1>The report needs authorization</h1><p>{html.escape(why)}</p>"
        "<p>Open the link that <code>abserve report --html</code> prints (it is signed with "
        "the admin token and expires), or send <code>Authorization: Bearer &lt;token&gt;</code>."
        "</p></body></html>"
    )


def register(
    app: FastAPI,
    *,
    config: AbserveConfig,
    model: ModelInfo,
    core: RouterCore,
    follower: Follower,
    control: ControlPlane,
    arms: UpstreamArms,
    replica_stats: Callable[[], dict[str, Any]],
    auth: AdminAuth,
    directory: ModelDirectory | None = None,
    predlog: PredictionLog | None = None,
) -> None:
    """``replica_stats``: this replica's own counters for /stats (the app gathers them);
    ``directory``: the cluster's abserve models, for /models; ``predlog``: the
    prediction log, whose feedback table gets each accepted label."""
    probe_timeout_s = config.router.probe_timeout_s

    @app.get("/health")
    async def health() -> Response:
        """Liveness: the router answers."""
        return json_response({"status": "ok"})

    @app.get("/ready")
    async def ready() -> Response:
        """Readiness: every arm answers within router.probe_timeout_s."""
        ready = await arms_ready(arms, probe_timeout_s)
        ok = all(ready.values())
        return json_response({"ready": ok, "arms": ready}, status=200 if ok else 503)

    @app.get("/models")
    async def models() -> Response:
        """Deployed versions, their manifests and current weights; under "models", every
        abserve model on the cluster (name, application, route_prefix, status)."""
        await follower.ensure_synced()
        cluster = [] if directory is None else await directory.models()
        weights = {a.version: a.weight for a in core.arms}
        versions = []
        for version, manifest in model.manifests.items():
            entry = manifest.to_dict()
            entry["weight"] = weights.get(version, 0.0)
            entry["baseline"] = version == core.baseline
            entry["breaker"] = core.breakers[version].state.value
            versions.append(entry)
        return json_response(
            {
                "model": model.name,
                "experiment": config.experiment.name,
                "baseline": core.baseline,
                "revision": core.revision,
                "paused": follower.paused,
                "input_shape": list(model.input_shape),
                "class_labels": list(model.labels),
                **model.spec.describe(),
                "input_schema": None if model.schema is None else model.schema.to_json(),
                "versions": versions,
                "models": [entry.to_dict() for entry in cluster],
            }
        )

    @app.post("/feedback")
    async def feedback(request: Request) -> Response:
        """Ground truth for a served prediction: {"request_id": ..., "label": ...}
        ({"request_id": ..., "value": ...} for a regression model).

        For /predict/batch, item i of request R is "R/i". Unknown or expired id: 404;
        a second feedback for one id is accepted but not counted again.
        """
        await follower.ensure_synced()
        rid, index = feedback_label(model, await json_body(request, config.http.max_body_bytes))
        try:
            await follower.sync()  # our own recent predictions reach the controller first
            counted = await control.record_feedback(rid, index, config.state.sync_timeout_s)
        except AbserveError:
            raise  # 404 unknown or expired id, 422
        except Exception:  # noqa: BLE001 - the controller is restarting or unreachable
            # Never a silent loss: the label is durable once this answers 200; until then
            # the client is told to send it again (a second copy is not counted twice).
            raise ServiceUnavailable(
                "the experiment controller did not answer (it may be restarting); the label "
                "was not recorded: send it again after the Retry-After delay",
                retry_after_s=config.state.sync_timeout_s,
            ) from None
        if predlog is not None:  # accepted: its feedback row (one append, no I/O here)
            predlog.feedback(rid, index)
        return json_response(counted)

    @app.get("/report", response_class=HTMLResponse)
    async def report_page(request: Request) -> HTMLResponse:
        """The report as a page with charts (traffic share over time, latency, accuracy).

        It needs the admin token (Authorization: Bearer) or a signed link from
        `abserve report --html` (?link=...), and says so when refused.
        """
        try:
            auth.check_report(request.headers.get("authorization"),
                              request.query_params.get(REPORT_LINK_PARAM))
        except (Unauthorized, Forbidden) as exc:
            return HTMLResponse(refused_page(exc.message), status_code=exc.status_code)
        await follower.ensure_synced()
        await follower.sync()
        return HTMLResponse(render_report_html(await control.report()))

    @app.get("/stats")
    async def stats() -> Response:
        """This router replica's counters: per arm, the cache, and one replica per version."""
        versions = arms.versions
        replicas = await asyncio.gather(*(arms.stats(v, probe_timeout_s) for v in versions))
        return json_response(
            {**replica_stats(), "models": dict(zip(versions, replicas, strict=True))}
        )
