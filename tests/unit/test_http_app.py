"""The whole HTTP app of a router replica, in-process, without Ray.

``assemble`` and ``build_app`` are what the ingress deployment calls; here the
three boundaries are fakes: the model versions' handles (behind the real
``Arms`` adapter: one version answers probability rows, one raises, one can be
made unready), the control plane (``FakeControl``, the ``ControlPlane``
protocol over the real typed operations) and Serve's runtime context.
Every route, status code and header the router answers is driven here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from models.registry import Manifest
from router.controlplane.client import Applied, SyncReply, SyncReport
from router.controlplane.experiment import ExperimentState
from router.controlplane.operations import Operation, apply_operation, reassigned
from router.dataplane.admission import AdmissionMiddleware
from router.dataplane.upstream import Arms
from router.http.app import ReplicaParts, assemble, build_app, cache_backend
from router.http.auth import report_link
from router.http.serving import ModelInfo
from serve.cli.admin import print_experiment
from serve.config import AbserveConfig, parse_config
from serve.errors import InvalidInput, NotFound

TOKEN = "admin-token-for-tests-0123456789"
LABELS = ("sit", "walk")
FEATURES = [0.1, 0.2, 0.3, 0.4]
JSON = {"content-type": "application/json"}
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _manifest(version: str) -> Manifest:
    return Manifest(
        name="activity", version=version, framework="fake", input_shape=(4,),
        input_dtype="float32", class_labels=LABELS, accuracy=0.9, training_time_s=1.0,
        created_at="2026-01-01T00:00:00Z", artifact="model.bin", sha256="0" * 64,
    )


def _config() -> AbserveConfig:
    return parse_config({
        "models": [{"version": "v1"}, {"version": "v2"}, {"version": "v3"}],
        "experiment": {
            "baseline": "v1",
            "arms": [{"version": "v1", "weight": 100}, {"version": "v2", "weight": 0}],
        },
        "router": {"max_inflight": 4, "max_inflight_per_key": 2, "retry_after_s": 2},
        "http": {"max_body_bytes": 2048},
        "cache": {"enabled": True},
    })


# ------------------------------------------------------------------ fake boundaries


class FakeResponse:
    """A DeploymentResponse: awaitable (raising what the replica raised), cancellable."""

    def __init__(self, result: Any) -> None:
        self.result = result

    def __await__(self) -> Generator[Any, None, Any]:
        async def get() -> Any:
            await asyncio.sleep(0)
            if isinstance(self.result, BaseException):
                raise self.result
            return self.result

        return get().__await__()

    def cancel(self) -> None:
        pass


class FakeMethod:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> FakeResponse:
        return FakeResponse(self.fn(*args))


class FakeHandle:
    """One model version's handle: predict answers [p, 1 - p] rows, or ``error``."""

    def __init__(self, p: float = 0.9, error: BaseException | None = None) -> None:
        self.p, self.error = p, error
        self.ready_now = True
        self.stats_error: BaseException | None = None
        self.calls = 0
        self.ready = FakeMethod(lambda: self.ready_now)
        self.stats = FakeMethod(lambda: self.stats_error or {"calls": self.calls})

    def _predict(self, batch: np.ndarray) -> Any:
        self.calls += 1
        if self.error is not None:
            return self.error
        return np.tile(np.asarray([self.p, 1 - self.p], np.float32), (len(batch), 1))

    def options(self, method_name: str) -> FakeMethod:
        assert method_name == "predict"
        return FakeMethod(self._predict)


class FakeRuntime:
    """RayRuntime: this replica's id, Serve's request ids, the replica count behind a handle."""

    def __init__(self) -> None:
        self.n = 0

    def replica_id(self) -> str:
        return "router#fake"

    def request_id(self) -> str:
        self.n += 1
        return f"req-{self.n}"

    def running_replicas(self, handle: Any) -> int | None:
        return 1


class FakeMetric:
    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def inc(self, *args: Any, **kwargs: Any) -> None:
        pass

    def observe(self, *args: Any, **kwargs: Any) -> None:
        pass


class FakeControl:
    """The ControlPlane protocol: the real operations over an in-memory state."""

    def __init__(self, config: AbserveConfig) -> None:
        self.state = ExperimentState(config.experiment)
        self.deployed = [m.version for m in config.models]
        self.served: dict[str, tuple[str, int]] = {}
        self.feedback: dict[str, int] = {}
        self.entries: list[dict[str, Any]] = []
        self.reports: list[SyncReport] = []
        self.down = False

    async def get_state(self, timeout_s: float | None = None) -> ExperimentState:
        if self.down:
            raise ConnectionError("controller down")
        return self.state

    async def sync(
        self, replica_id: str, report: SyncReport, timeout_s: float | None = None
    ) -> SyncReply:
        if self.down:
            raise ConnectionError("controller down")
        self.reports.append(report)
        self.served.update({rid: (v, label) for rid, v, label in report.served})
        return SyncReply(self.state.revision, {}, {})

    async def apply(self, op: Operation, who: str) -> Applied:
        self.state, entry = apply_operation(self.state, op, deployed=self.deployed, who=who)
        self.entries.append(entry)
        return Applied(self.state, entry.get("reassigned"))

    async def record_feedback(
        self, request_id: str, label: int, timeout_s: float | None = None
    ) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("controller down")
        if request_id not in self.served:
            raise NotFound(f"no served prediction {request_id!r}", field="request_id")
        self.feedback[request_id] = label
        return {"request_id": request_id, "correct": self.served[request_id][1] == label}

    async def report(self) -> dict[str, Any]:
        return {"experiment": "default", "revision": self.state.revision, "baseline": "v1",
                "arms": {"v1": {"requests": len(self.served), "baseline": True}}, "history": []}

    async def audit(self, limit: int) -> list[dict[str, Any]]:
        return self.entries[-limit:]

    async def canary_status(self) -> dict[str, Any]:
        return {"state": "none"}

    async def start_canary(self, plan: dict[str, Any], who: str) -> dict[str, Any]:
        if "candidate" not in plan:
            raise InvalidInput("candidate: missing", field="candidate")
        return {"state": "running", "plan": plan, "who": who}

    async def canary_action(self, action: str, who: str) -> dict[str, Any]:
        if action not in {"pause", "resume", "abort"}:
            raise InvalidInput(f"action: {action!r} is not pause, resume or abort")
        return {"state": action}


@dataclass
class Replica:
    parts: ReplicaParts
    control: FakeControl
    handles: dict[str, FakeHandle]
    app: Any

    def drop_fast_routes(self) -> None:
        """Serve /predict from the FastAPI schema routes instead of the raw ASGI table."""
        (routes,) = [m.kwargs["routes"] for m in self.app.user_middleware
                     if m.cls is AdmissionMiddleware]
        assert set(routes) == {"/predict", "/predict/batch"}
        routes.clear()


def replica(token: str | None = TOKEN) -> Replica:
    config = _config()
    handles = {"v1": FakeHandle(0.9), "v2": FakeHandle(error=RuntimeError("boom")),
               "v3": FakeHandle(0.2)}
    runtime, control = FakeRuntime(), FakeControl(config)
    parts = assemble(
        config,
        ModelInfo.from_manifests("activity", {v: _manifest(v) for v in handles}),
        arms=Arms(handles, runtime, config.models, config.router.batch_in_flight_per_replica),
        control=control,
        runtime=runtime,
        metric_factory=FakeMetric,
        cache=cache_backend(config.cache, environ={}),
        environ={"ABSERVE_ADMIN_TOKEN": token} if token else {},
    )
    return Replica(parts, control, handles, build_app(parts))


Scenario = Callable[[httpx.AsyncClient], Awaitable[None]]


def drive(r: Replica, scenario: Scenario) -> None:
    """Run ``scenario`` against the app on one event loop; the follower's loops end with it."""

    async def main() -> None:
        transport = httpx.ASGITransport(app=r.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            await scenario(client)
        await r.parts.follower.close()
        assert r.parts.admission.inflight == 0

    asyncio.run(main())


def predict(client: httpx.AsyncClient, **headers: str) -> Awaitable[httpx.Response]:
    return client.post("/predict", json={"features": FEATURES}, headers=headers)


# ------------------------------------------------------------------ /predict


def test_predict_answers_then_hits_the_cache() -> None:
    r = replica()

    async def scenario(client: httpx.AsyncClient) -> None:
        first = await predict(client)
        assert first.status_code == 200
        body = first.json()
        assert body["label"] == "sit"
        assert body["probabilities"] == {"sit": pytest.approx(0.9), "walk": pytest.approx(0.1)}
        assert (body["model"], body["version"], body["arm"]) == ("activity", "v1", "v1")
        assert body["fallback"] is False and body["cached"] is False
        assert body["request_id"] == "req-1"
        assert first.headers["x-model-version"] == "v1"
        assert first.headers["x-cache"] == "MISS"
        assert first.headers["x-fallback"] == "false"
        assert "x-fallback-reason" not in first.headers
        for _ in range(50):  # the cache write lands in the background
            await asyncio.sleep(0.01)
            again = await predict(client)
            if again.headers["x-cache"] == "HIT":
                break
        assert again.headers["x-cache"] == "HIT"
        assert again.json()["cached"] is True

    drive(r, scenario)


def test_a_failing_pinned_arm_falls_back_to_the_baseline() -> None:
    r = replica()

    async def scenario(client: httpx.AsyncClient) -> None:
        resp = await predict(client, **{"X-Model-Version": "v2"})
        assert resp.status_code == 200
        body = resp.json()
        assert (body["arm"], body["version"], body["fallback"]) == ("v2", "v1", True)
        assert resp.headers["x-fallback"] == "true"
        assert resp.headers["x-model-version"] == "v1"
        assert resp.headers["x-fallback-reason"] == body["fallback_reason"] == "error"
        assert r.handles["v2"].calls == 1
        unknown = await predict(client, **{"X-Model-Version": "v9"})
        assert unknown.status_code == 404

    drive(r, scenario)


@pytest.mark.parametrize("fast", [True, False], ids=["asgi-fast-path", "fastapi-route"])
@pytest.mark.parametrize(
    ("path", "content", "headers", "status"),
    [
        ("/predict", b"{not json", JSON, 400),
        ("/predict", b"", JSON, 400),
        ("/predict", b'{"features": [1, 2]}', JSON, 422),
        ("/predict", b'{"features": [1, 2, 3, 4]}', {"content-type": "text/plain"}, 415),
        ("/predict", b'{"features": [1, 2, 3, 4]}', {}, 415),
        ("/predict", b"[" + b"1," * 2000 + b"1]", JSON, 413),
        ("/predict/batch", b'{"instances": []}', JSON, 422),
        ("/predict/batch", b'{"instances": [[1, 2, 3]]}', JSON, 422),
    ],
    ids=["bad-json", "empty", "shape", "text-plain", "no-type", "too-large", "empty-batch",
         "batch-shape"],
)
def test_predict_refusals(
    fast: bool, path: str, content: bytes, headers: dict[str, str], status: int
) -> None:
    r = replica()
    if not fast:
        r.drop_fast_routes()

    async def scenario(client: httpx.AsyncClient) -> None:
        resp = await client.post(path, content=content, headers=headers)
        assert resp.status_code == status, resp.text
        assert resp.headers["content-type"] == "application/json"
        assert set(resp.json()) >= {"error", "code"}
        assert "x-model-version" not in resp.headers

    drive(r, scenario)


@pytest.mark.parametrize("fast", [True, False], ids=["asgi-fast-path", "fastapi-route"])
def test_predict_batch(fast: bool) -> None:
    r = replica()
    if not fast:
        r.drop_fast_routes()

    async def scenario(client: httpx.AsyncClient) -> None:
        resp = await client.post("/predict/batch", json={"instances": [FEATURES, FEATURES]},
                                 headers={"X-User-Id": "u1"})
        assert resp.status_code == 200
        body = resp.json()
        assert len(body["predictions"]) == 2
        assert {p["request_id"] for p in body["predictions"]} == {body["request_id"]}
        assert (body["model"], body["version"], body["arm"]) == ("activity", "v1", "v1")
        assert body["fallback"] is False
        assert resp.headers["x-model-version"] == "v1"
        assert resp.headers["x-cache"] in {"MISS", "HIT"}

    drive(r, scenario)


# ------------------------------------------------------------------ operations routes


def test_health_ready_models_stats() -> None:
    r = replica()

    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/health")).json() == {"status": "ok"}
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "arms": {"v1": True, "v2": True, "v3": True}}
        r.handles["v3"].ready_now = False
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["arms"]["v3"] is False

        await predict(client)
        models = (await client.get("/models")).json()
        assert (models["model"], models["baseline"], models["paused"]) == ("activity", "v1", False)
        assert models["input_shape"] == [4] and models["class_labels"] == list(LABELS)
        weights = {v["version"]: (v["weight"], v["baseline"], v["breaker"])
                   for v in models["versions"]}
        assert weights == {"v1": (100.0, True, "closed"), "v2": (0.0, False, "closed"),
                           "v3": (0.0, False, "closed")}

        r.handles["v3"].stats_error = RuntimeError("down")
        stats = (await client.get("/stats")).json()
        assert stats["replica"] == "router#fake"
        assert stats["models"] == {"v1": {"calls": 1}, "v2": {"calls": 0}, "v3": None}
        assert stats["admission"]["admitted"] == 1
        assert stats["cache"]["kind"] == "local"
        assert stats["hop_batching"]["running_replicas"] == {"v1": 1, "v2": 1, "v3": 1}
        assert stats["arms"]["v1"]["requests"] == 1

    drive(r, scenario)


def test_feedback_joins_served_predictions() -> None:
    r = replica()

    async def scenario(client: httpx.AsyncClient) -> None:
        rid = (await predict(client)).json()["request_id"]
        batch = await client.post("/predict/batch", json={"instances": [FEATURES] * 2})
        brid = batch.json()["request_id"]
        ok = await client.post("/feedback", json={"request_id": rid, "label": "walk"})
        assert ok.status_code == 200
        assert ok.json() == {"request_id": rid, "correct": False}
        assert set(r.control.served) == {rid, f"{brid}/0", f"{brid}/1"}
        by_index = await client.post("/feedback", json={"request_id": f"{brid}/1", "label": 0})
        assert by_index.json()["correct"] is True
        refusals = [
            ({"request_id": rid}, 422),
            ({"request_id": rid, "label": "run"}, 422),
            ({"request_id": rid, "label": True}, 422),
            ({"request_id": "", "label": 0}, 422),
            ({"request_id": "never-served", "label": 0}, 404),
        ]
        for body, status in refusals:
            assert (await client.post("/feedback", json=body)).status_code == status, body
        wrong_type = await client.post("/feedback", content=b"{}",
                                       headers={"content-type": "text/plain"})
        assert wrong_type.status_code == 415
        # The controller restarting: 503 with Retry-After, never a 200 for a lost label.
        r.control.down = True
        down = await client.post("/feedback", json={"request_id": rid, "label": 0})
        assert down.status_code == 503 and down.headers["retry-after"] == "2"
        assert "send it again" in down.json()["error"] and r.control.feedback[rid] == 1
        r.control.down = False
        again = await client.post("/feedback", json={"request_id": rid, "label": 0})
        assert again.status_code == 200

    drive(r, scenario)


def test_report_page_needs_the_token_or_a_signed_link() -> None:
    r = replica()

    async def scenario(client: httpx.AsyncClient) -> None:
        refused = await client.get("/report")
        assert refused.status_code == 401 and "abserve report --html" in refused.text
        assert "Experiment default" not in refused.text
        page = await client.get("/report", headers=AUTH)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "Experiment default" in page.text
        link = report_link(TOKEN.encode(), valid_s=60)
        assert (await client.get(f"/report?link={link}")).status_code == 200
        expired = report_link(TOKEN.encode(), valid_s=60, now=time.time() - 120)
        late = await client.get(f"/report?link={expired}")
        assert late.status_code == 401 and "expired" in late.text
        forged = report_link(b"another-token-0123456789", valid_s=60)
        assert (await client.get(f"/report?link={forged}")).status_code == 401
        exp = link.split(".")[0]
        longer = f"{int(exp) + 86_400}.{link.split('.')[1]}"  # the expiry is signed
        assert (await client.get(f"/report?link={longer}")).status_code == 401

    drive(r, scenario)


def test_report_page_without_an_admin_token_configured_is_refused() -> None:
    r = replica(token=None)

    async def scenario(client: httpx.AsyncClient) -> None:
        page = await client.get("/report")
        assert page.status_code == 403 and "ABSERVE_ADMIN_TOKEN" in page.text

    drive(r, scenario)


def test_the_first_request_serves_without_the_controller() -> None:
    r = replica()
    r.control.down = True

    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await predict(client)).status_code == 200
        with pytest.raises(ConnectionError):
            await r.parts.follower.sync()
        assert r.parts.follower.pending_served == 1  # kept for the next sync
        r.control.down = False
        await r.parts.follower.sync()
        assert r.parts.follower.pending_served == 0
        assert set(r.control.served) == {"req-1"}

    drive(r, scenario)


# ------------------------------------------------------------------ Open Inference Protocol


def _infer_body(n: int = 1) -> dict[str, Any]:
    return {"id": "x1", "inputs": [{"name": "input", "shape": [n, 4], "datatype": "FP32",
                                    "data": FEATURES * n}]}


def test_oip_metadata_and_health() -> None:
    r = replica()

    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/v2")).status_code == 200
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        assert (await client.get("/v2/health/ready")).json() == {"ready": True}
        meta = await client.get("/v2/models/activity")
        assert meta.status_code == 200 and meta.json()["name"] == "activity"
        version = await client.get("/v2/models/activity/versions/v2")
        assert version.status_code == 200
        for path in ("/v2/models/other", "/v2/models/activity/versions/v9",
                     "/v2/models/other/ready", "/v2/models/activity/versions/v9/ready"):
            missing = await client.get(path)
            assert missing.status_code == 404, path
            assert set(missing.json()) == {"error"}
        assert (await client.get("/v2/models/activity/ready")).json() == {
            "name": "activity", "ready": True}
        r.handles["v3"].ready_now = False
        assert (await client.get("/v2/health/ready")).status_code == 400
        assert (await client.get("/v2/models/activity/ready")).status_code == 400
        assert (await client.get("/v2/models/activity/versions/v3/ready")).status_code == 400
        assert (await client.get("/v2/models/activity/versions/v1/ready")).status_code == 200

    drive(r, scenario)


def test_oip_infer() -> None:
    r = replica()

    async def scenario(client: httpx.AsyncClient) -> None:
        resp = await client.post("/v2/models/activity/infer", json=_infer_body(2))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["model_name"], body["model_version"], body["id"]) == ("activity", "v1", "x1")
        assert body["parameters"]["arm"] == "v1" and body["parameters"]["fallback"] is False
        assert resp.headers["x-model-version"] == "v1"
        assert resp.headers["x-fallback"] == "false"

        pinned = await client.post("/v2/models/activity/versions/v2/infer", json=_infer_body())
        assert pinned.status_code == 200
        assert pinned.json()["parameters"]["fallback_reason"] == "error"
        assert pinned.headers["x-fallback"] == "true"
        assert pinned.headers["x-fallback-reason"] == "error"

        bad = await client.post("/v2/models/activity/infer", json={"inputs": []})
        assert bad.status_code == 400 and set(bad.json()) == {"error"}
        unknown = await client.post("/v2/models/other/infer", json=_infer_body())
        assert unknown.status_code == 404
        assert r.control.served.keys() == set()  # not synced yet: still in the follower
        assert r.parts.follower.pending_served == 3

    drive(r, scenario)


# ------------------------------------------------------------------ admin

ADMIN_ROUTES = [
    ("GET", "/admin/experiment", None),
    ("PUT", "/admin/weights", {"weights": {"v1": 90, "v2": 10}}),
    ("PUT", "/admin/shadows", {"shadows": [{"version": "v3", "percent": 50}]}),
    ("POST", "/admin/candidates", {"version": "v3", "weight": 0}),
    ("DELETE", "/admin/candidates/v2", None),
    ("POST", "/admin/promote", {"version": "v2"}),
    ("POST", "/admin/rollback", {}),
    ("POST", "/admin/pause", None),
    ("POST", "/admin/resume", None),
    ("POST", "/admin/canary", {"candidate": "v2"}),
    ("GET", "/admin/canary", None),
    ("POST", "/admin/canary/pause", None),
    ("GET", "/admin/audit", None),
    ("GET", "/admin/report", None),
]


def _call(client: httpx.AsyncClient, method: str, path: str, body: Any,
          headers: dict[str, str]) -> Awaitable[httpx.Response]:
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES,
                         ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES])
def test_admin_routes_need_the_token(method: str, path: str, body: Any) -> None:
    r, disabled = replica(), replica(token=None)

    async def scenario(client: httpx.AsyncClient) -> None:
        for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"},
                        {"authorization": "Basic abc"}):
            resp = await _call(client, method, path, body, headers)
            assert resp.status_code == 401, headers
            assert resp.json()["code"] == "unauthorized"
        in_url = await _call(client, method, f"{path}?token={TOKEN}", body, AUTH)
        assert in_url.status_code == 401
        assert (await _call(client, method, path, body, AUTH)).status_code == 200

    async def off(client: httpx.AsyncClient) -> None:
        assert (await _call(client, method, path, body, AUTH)).status_code == 403

    drive(r, scenario)
    drive(disabled, off)


def test_admin_changes_apply_to_this_replica_at_once() -> None:
    r = replica()

    async def scenario(client: httpx.AsyncClient) -> None:
        exp = (await client.get("/admin/experiment", headers=AUTH)).json()
        assert exp["revision"] == 1
        assert exp["effective_weights"] == {"v1": 100.0, "v2": 0.0}
        resp = await client.put("/admin/weights", json={"weights": {"v1": 80, "v2": 20}},
                                headers={**AUTH, "X-Admin-User": "alice"})
        assert resp.status_code == 200
        assert resp.json()["revision"] == 2 and r.parts.core.revision == 2
        assert resp.json()["effective_weights"] == {"v1": 80.0, "v2": 20.0}
        paused = (await client.post("/admin/pause", headers=AUTH)).json()
        assert paused["paused"] is True and paused["effective_weights"]["v1"] == 100.0
        assert r.parts.follower.paused is True
        assert (await client.get("/models")).json()["paused"] is True
        await client.post("/admin/resume", headers=AUTH)
        audit = (await client.get("/admin/audit?limit=2", headers=AUTH)).json()["entries"]
        assert [e["operation"] for e in audit] == ["pause", "resume"]
        assert r.control.entries[0]["who"] == "alice"

    drive(r, scenario)


def test_a_change_that_moves_sticky_users_says_so_in_its_response(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every change answers ``reassigned``: null inside the layout's promise, else the share
    and the moves of its audit entry; the CLI prints that as a warning."""
    r = replica()

    async def scenario(client: httpx.AsyncClient) -> None:
        first = await client.put("/admin/weights", json={"weights": {"v1": 80, "v2": 20}},
                                 headers=AUTH)
        assert first.status_code == 200 and first.json()["reassigned"] is None
        added = await client.post("/admin/candidates", json={"version": "v3", "weight": 10},
                                  headers=AUTH)
        assert added.json()["reassigned"] is None  # the newest candidate takes baseline users
        before = r.control.state.experiment
        resp = await client.put("/admin/weights",  # v2 (listed first) grows into v3's space
                                json={"weights": {"v1": 40, "v2": 50, "v3": 10}}, headers=AUTH)
        assert resp.status_code == 200
        body = resp.json()
        expected = reassigned(before, r.control.state.experiment)
        assert expected is not None and body["reassigned"] == expected
        assert body["reassigned"] == r.control.entries[-1]["reassigned"]
        assert body["reassigned"]["percent_of_users"] > 0
        assert "v3 -> v2" in body["reassigned"]["moves"]
        assert body["revision"] == 4 and r.parts.core.revision == 4  # applied all the same
        assert (await client.post("/admin/pause", headers=AUTH)).json()["reassigned"] is None
        assert "reassigned" not in (await client.get("/admin/experiment", headers=AUTH)).json()

        print_experiment(first.json())
        quiet = capsys.readouterr()
        assert "experiment default" in quiet.out and "warning" not in quiet.out + quiet.err
        print_experiment(body)
        printed = capsys.readouterr()
        percent = f"{body['reassigned']['percent_of_users']:g}%"
        assert "v3" in printed.out and "warning" not in printed.out
        assert printed.err.startswith(f"warning: this change moved {percent} of users")
        assert body["reassigned"]["moves"] in printed.err

    drive(r, scenario)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PUT", "/admin/weights", {"weights": {"v1": 50}}, 422),
        ("PUT", "/admin/weights", [1, 2], 422),
        ("POST", "/admin/candidates", {"version": "v3", "bogus": 1}, 422),
        ("POST", "/admin/candidates", {"version": "v9"}, 422),
        ("DELETE", "/admin/candidates/v9", None, 404),
        ("POST", "/admin/promote", {"version": "v9"}, 404),
        ("POST", "/admin/canary", {"steps": [5]}, 422),
        ("POST", "/admin/canary/explode", None, 422),
    ],
)
def test_admin_refusals_keep_their_status(
    method: str, path: str, body: Any, status: int
) -> None:
    r = replica()

    async def scenario(client: httpx.AsyncClient) -> None:
        resp = await _call(client, method, path, body, AUTH)
        assert resp.status_code == status, resp.text
        assert "error" in resp.json()
        assert r.parts.core.revision in (0, 1)  # nothing applied

    drive(r, scenario)


# ------------------------------------------------------------------ admission


def test_admission_sheds_with_retry_after() -> None:
    r = replica()
    admission = r.parts.admission

    async def scenario(client: httpx.AsyncClient) -> None:
        admission.inflight = 4  # the replica is full
        for path, body in (("/predict", {"features": FEATURES}),
                           ("/predict/batch", {"instances": [FEATURES]}),
                           ("/v2/models/activity/infer", _infer_body())):
            shed = await client.post(path, json=body)
            assert shed.status_code == 503, path
            assert shed.headers["retry-after"] == "2"
            assert shed.json()["code"] == "overloaded"
        assert (await client.get("/health")).status_code == 200  # never shed
        assert (await client.get("/stats")).json()["admission"]["shed_overload"] == 3
        admission.inflight = 0
        admission.per_key["u1"] = 2  # this key has two requests in flight
        greedy = await predict(client, **{"X-User-Id": "u1"})
        assert greedy.status_code == 429
        assert greedy.headers["retry-after"] == "2"
        assert (await predict(client, **{"X-User-Id": "u2"})).status_code == 200
        del admission.per_key["u1"]

    drive(r, scenario)
