"""The admin API under /admin: experiment changes, the canary, the audit log, the report.

Every route checks the bearer token first (router/http/auth.py). A change is
a typed operation (router/controlplane/operations.py) applied by the
controller; this replica takes the new state at once, the others within a
poll interval. A change's response is the new experiment plus ``reassigned``:
the sticky users it moved beyond the promise of router/dataplane/policy.py
(``{"percent_of_users", "moves"}``, as in its audit entry), or null. The
controller's own refusals (InvalidInput 422, NotFound 404) keep their status:
the client re-raises them unwrapped.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from router.controlplane.client import ControlPlane
from router.controlplane.experiment import ExperimentState, effective_weights
from router.controlplane.operations import (
    AddCandidate,
    Operation,
    Pause,
    Promote,
    RemoveArm,
    Resume,
    Rollback,
    SetShadows,
    SetWeights,
    from_params,
)
from router.http.auth import AdminAuth
from router.http.follower import Follower
from router.http.wire import json_body, json_response
from serve.errors import InvalidInput

__all__ = ["experiment_view", "register"]

_MAX_AUDIT = 10_000


def experiment_view(state: ExperimentState) -> dict[str, Any]:
    return {**state.to_dict(), "effective_weights": effective_weights(state)}


def _who(request: Request) -> str:
    who = request.headers.get("x-admin-user", "admin")
    return who if 0 < len(who) <= 64 and who.isprintable() else "admin"


def register(
    app: FastAPI,
    *,
    auth: AdminAuth,
    control: ControlPlane,
    follower: Follower,
    max_body_bytes: int,
) -> None:
    def authorize(request: Request) -> None:
        """The bearer header only, never credentials in the URL."""
        auth.check(request.headers.get("authorization"), request.query_params.keys())

    async def body_of(request: Request) -> dict[str, Any]:
        authorize(request)
        data = await json_body(request, max_body_bytes)
        if not isinstance(data, dict):
            raise InvalidInput("body must be a JSON object")
        return data

    async def change(request: Request, op: Operation) -> Response:
        authorize(request)
        applied = await control.apply(op, _who(request))
        follower.apply_state(applied.state)
        return json_response({**experiment_view(applied.state),
                              "reassigned": applied.reassigned})

    @app.get("/admin/experiment")
    async def admin_experiment(request: Request) -> Response:
        """The live experiment: arms, weights, baseline, revision, paused."""
        authorize(request)
        return json_response(experiment_view(await control.get_state()))

    @app.put("/admin/weights")
    async def admin_weights(request: Request) -> Response:
        """Set weights: {"weights": {"v1": 80, "v2": 20}}; they must still sum to 100."""
        body = await body_of(request)
        return await change(request, SetWeights(weights=body.get("weights")))

    @app.put("/admin/shadows")
    async def admin_shadows(request: Request) -> Response:
        """Set the shadow versions: {"shadows": [{"version": "v3", "share": 0.2}]}."""
        body = await body_of(request)
        return await change(request, SetShadows(shadows=body.get("shadows")))

    @app.post("/admin/candidates")
    async def admin_add_candidate(request: Request) -> Response:
        """Add a deployed version as an arm: {"version": "v3", "weight": 5}."""
        body = await body_of(request)
        return await change(request, from_params(AddCandidate, body))

    @app.delete("/admin/candidates/{version}")
    async def admin_remove_arm(request: Request, version: str) -> Response:
        """Remove a candidate arm; its weight returns to the baseline."""
        return await change(request, RemoveArm(version=version))

    @app.post("/admin/promote")
    async def admin_promote(request: Request) -> Response:
        """The candidate becomes the baseline: {"version": "v2"}."""
        body = await body_of(request)
        return await change(request, from_params(Promote, body))

    @app.post("/admin/rollback")
    async def admin_rollback(request: Request) -> Response:
        """A candidate's weight to 0 at once: {"version": "v2"} ({} = every candidate)."""
        body = await body_of(request)
        return await change(request, from_params(Rollback, body))

    @app.post("/admin/pause")
    async def admin_pause(request: Request) -> Response:
        """All traffic to the baseline; the weights are kept for resume."""
        return await change(request, Pause())

    @app.post("/admin/resume")
    async def admin_resume(request: Request) -> Response:
        return await change(request, Resume())

    @app.post("/admin/canary")
    async def admin_canary_start(request: Request) -> Response:
        """Start a canary plan: {"candidate": "v2", "steps": [5, 10, 25, 50, 100],
        "interval_s": 300, "min_requests": 500, "gates": {...}}."""
        body = await body_of(request)
        return json_response(await control.start_canary(body, _who(request)))

    @app.get("/admin/canary")
    async def admin_canary(request: Request) -> Response:
        """The canary plan, its state and every decision with its reasons and numbers."""
        authorize(request)
        return json_response(await control.canary_status())

    @app.post("/admin/canary/{action}")
    async def admin_canary_action(request: Request, action: str) -> Response:
        """pause | resume | abort (abort sends the candidate to 0 % at once)."""
        authorize(request)
        return json_response(await control.canary_action(action, _who(request)))

    @app.get("/admin/audit")
    async def admin_audit(request: Request, limit: int = 100) -> Response:
        """The last `limit` changes: time, who, operation, before, after."""
        authorize(request)
        entries = await control.audit(max(1, min(limit, _MAX_AUDIT)))
        return json_response({"entries": entries})

    @app.get("/admin/report")
    async def admin_report(request: Request) -> Response:
        """The experiment report as JSON: per arm traffic, errors, latency, accuracy, p-values."""
        authorize(request)
        await follower.sync()
        return json_response(await control.report())
