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

from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
)
from router.http.auth import AdminAuth
from router.http.follower import Follower
from router.http.wire import json_body, json_response
from serve.config import (
    CanaryPlanConfig,
    ShadowConfig,
    first_error_field,
    format_validation_errors,
)
from serve.errors import InvalidInput

__all__ = ["BODIES", "experiment_view", "parse_body", "register"]

_B = TypeVar("_B", bound=BaseModel)

_MAX_AUDIT = 10_000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WeightsBody(_Body):
    """PUT /admin/weights."""

    weights: dict[str, float] = Field(
        min_length=1, description="Percent per arm; arms not listed keep theirs; the result "
        "must sum to 100.")


class ShadowsBody(_Body):
    """PUT /admin/shadows: the whole shadow list (`[]` turns shadows off)."""

    shadows: list[ShadowConfig] = Field(description="As experiment.shadows in the config.")


class CandidateBody(_Body):
    """POST /admin/candidates."""

    version: str = Field(min_length=1, description="A deployed version, not yet an arm.")
    weight: float = Field(0.0, ge=0, le=100, description="Its weight in percent, taken "
                          "from the baseline's.")


class VersionBody(_Body):
    """POST /admin/promote."""

    version: str = Field(min_length=1, description="The candidate arm that becomes baseline.")


class RollbackBody(_Body):
    """POST /admin/rollback."""

    version: str | None = Field(None, description="The candidate to send to 0 %; none: "
                                "every candidate.")


# The admin API's request bodies, for OpenAPI; the canary's is the config's own model.
BODIES: tuple[type[BaseModel], ...] = (
    WeightsBody, ShadowsBody, CandidateBody, VersionBody, RollbackBody, CanaryPlanConfig,
)


def parse_body(model: type[_B], data: Any) -> _B:
    """``data`` validated by ``model``; an InvalidInput (422) naming the field otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(format_validation_errors(exc), field=first_error_field(exc)) \
            from None


def _documented(model: type[BaseModel]) -> dict[str, Any]:
    """A route's openapi_extra: its JSON body is ``model`` (added to the components)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _add_body_schemas(app: FastAPI) -> None:
    """/openapi.json describes every admin body: the routes read raw JSON (so the token is
    checked before the body), which FastAPI cannot document by itself."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in BODIES:
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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
    _add_body_schemas(app)
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

    @app.put("/admin/weights", openapi_extra=_documented(WeightsBody))
    async def admin_weights(request: Request) -> Response:
        """Set weights: {"weights": {"v1": 80, "v2": 20}}; they must still sum to 100."""
        body = parse_body(WeightsBody, await body_of(request))
        return await change(request, SetWeights(weights=dict(body.weights)))

    @app.put("/admin/shadows", openapi_extra=_documented(ShadowsBody))
    async def admin_shadows(request: Request) -> Response:
        """Set the shadow versions: {"shadows": [{"version": "v3", "percent": 20}]}."""
        body = parse_body(ShadowsBody, await body_of(request))
        return await change(request, SetShadows(
            shadows=[s.model_dump(mode="json") for s in body.shadows]))

    @app.post("/admin/candidates", openapi_extra=_documented(CandidateBody))
    async def admin_add_candidate(request: Request) -> Response:
        """Add a deployed version as an arm: {"version": "v3", "weight": 5}."""
        body = parse_body(CandidateBody, await body_of(request))
        return await change(request, AddCandidate(version=body.version, weight=body.weight))

    @app.delete("/admin/candidates/{version}")
    async def admin_remove_arm(request: Request, version: str) -> Response:
        """Remove a candidate arm; its weight returns to the baseline."""
        return await change(request, RemoveArm(version=version))

    @app.post("/admin/promote", openapi_extra=_documented(VersionBody))
    async def admin_promote(request: Request) -> Response:
        """The candidate becomes the baseline: {"version": "v2"}."""
        body = parse_body(VersionBody, await body_of(request))
        return await change(request, Promote(version=body.version))

    @app.post("/admin/rollback", openapi_extra=_documented(RollbackBody))
    async def admin_rollback(request: Request) -> Response:
        """A candidate's weight to 0 at once: {"version": "v2"} ({} = every candidate)."""
        body = parse_body(RollbackBody, await body_of(request))
        return await change(request, Rollback(version=body.version))

    @app.post("/admin/pause")
    async def admin_pause(request: Request) -> Response:
        """All traffic to the baseline; the weights are kept for resume."""
        return await change(request, Pause())

    @app.post("/admin/resume")
    async def admin_resume(request: Request) -> Response:
        return await change(request, Resume())

    @app.post("/admin/canary", openapi_extra=_documented(CanaryPlanConfig))
    async def admin_canary_start(request: Request) -> Response:
        """Start a canary plan: {"candidate": "v2", "steps": [5, 10, 25, 50, 100],
        "interval_s": 300, "min_requests": 500, "gates": {...}} (rates in percent)."""
        body = parse_body(CanaryPlanConfig, await body_of(request))
        return json_response(await control.start_canary(body.model_dump(mode="json"),
                                                        _who(request)))

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
