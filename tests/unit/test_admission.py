"""Admission control: in-flight limits, 503/429 with Retry-After, never on other routes."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from router.dataplane.admission import Admission, AdmissionMiddleware, is_shed_path
from serve.config import RouterConfig


def test_limits_and_release() -> None:
    adm = Admission(max_inflight=2, max_inflight_per_key=1, retry_after_s=0.2)
    assert adm.retry_after == "1"  # whole seconds, rounded up, never 0
    assert adm.try_enter("a") == 0
    assert adm.try_enter("a") == 429  # one key, one at a time
    assert adm.try_enter(None) == 0
    assert adm.try_enter("b") == 503  # the replica is full
    adm.leave("a")
    assert adm.try_enter("a") == 0 and adm.inflight == 2
    adm.leave("a")
    adm.leave(None)
    assert adm.inflight == 0 and adm.per_key == {}
    assert (adm.stats.shed_overload, adm.stats.shed_per_key, adm.stats.peak_inflight) == (1, 1, 2)


def test_no_limits_admit_everything() -> None:
    adm = Admission()
    assert all(adm.try_enter("k") == 0 for _ in range(10_000))


@pytest.mark.parametrize("method, path, shed", [
    ("POST", "/predict", True), ("POST", "/x/predict/batch", True),
    ("POST", "/v2/models/activity/infer", True), ("GET", "/predict", False),
    ("GET", "/health", False), ("GET", "/ready", False), ("GET", "/stats", False),
    ("POST", "/admin/weights", False), ("POST", "/feedback", False),
])
def test_only_prediction_routes_are_shed(method: str, path: str, shed: bool) -> None:
    assert is_shed_path(method, path) is shed


def _scope(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "headers": headers or []}


def test_middleware_rejects_without_calling_the_app_and_releases_on_error() -> None:
    adm = Admission(max_inflight=1, retry_after_s=2)
    gate = asyncio.Event()
    calls: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        if scope["path"] == "/predict":
            await gate.wait()
            raise RuntimeError("the app failed")

    mw = AdmissionMiddleware(inner, adm, {})

    async def go() -> list[Any]:
        sent: list[Any] = []

        async def send(msg: Any) -> None:
            sent.append(msg)

        async def receive() -> Any:
            raise AssertionError("a rejected request's body is never read")

        first = asyncio.ensure_future(mw(_scope("/predict"), receive, send))
        await asyncio.sleep(0)
        await mw(_scope("/predict"), receive, send)  # over the limit: answered at once
        await mw({**_scope("/health"), "method": "GET"}, receive, send)  # never shed
        gate.set()
        with pytest.raises(RuntimeError):
            await first
        return sent

    sent = asyncio.run(go())
    start = sent[0]
    assert start["status"] == 503 and (b"retry-after", b"2") in start["headers"]
    assert orjson.loads(sent[1]["body"])["code"] == "overloaded"
    assert calls == ["/predict", "/health"]
    assert adm.inflight == 0  # released although the app raised


def test_per_key_limit_reads_the_configured_header() -> None:
    adm = Admission(max_inflight_per_key=1, key_header="X-Tenant")
    key = [(b"x-tenant", b"acme")]

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.01)

    async def go() -> list[int]:
        statuses: list[int] = []

        async def send(msg: Any) -> None:
            if msg["type"] == "http.response.start":
                statuses.append(msg["status"])

        mw = AdmissionMiddleware(inner, adm, {})
        await asyncio.gather(mw(_scope("/predict", key), None, send),  # type: ignore[arg-type]
                             mw(_scope("/predict", key), None, send))  # type: ignore[arg-type]
        return statuses

    assert asyncio.run(go()) == [429]


def test_config_refuses_a_limit_serve_would_hide() -> None:
    with pytest.raises(ValueError, match="max_inflight"):
        RouterConfig(max_inflight=1000, max_ongoing_requests=1000)
    assert RouterConfig(max_inflight=None).max_inflight is None


def test_admitted_requests_go_to_the_raw_route_for_their_path_without_the_prefix() -> None:
    seen: list[str] = []

    def handler(name: str) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen.append(name)
        return app

    adm = Admission(max_inflight=10)
    mw = AdmissionMiddleware(handler("framework"), adm, {"/predict": handler("raw")})

    async def go() -> None:
        await mw(_scope("/predict"), None, None)  # type: ignore[arg-type]
        await mw({**_scope("/ab/predict"), "root_path": "/ab"}, None, None)  # type: ignore[arg-type]
        await mw(_scope("/predict/"), None, None)  # type: ignore[arg-type]
        await mw({**_scope("/predict"), "method": "GET"}, None, None)  # type: ignore[arg-type]

    asyncio.run(go())
    assert seen == ["raw", "raw", "framework", "framework"]
    assert adm.stats.admitted == 3 and adm.inflight == 0
