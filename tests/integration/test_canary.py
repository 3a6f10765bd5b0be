"""Automated canary analysis in the cluster: a healthy candidate is promoted, a candidate
failing 20 % of its calls is rolled back, and no client sees an error either way."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from benchmarks.faults import set_fault_all
from serve.app import model_deployment_name
from tests.integration.canary_load import drive_canary
from tests.integration.conftest import ADMIN_TOKEN, ServeInstance, serve_app, small_app

APP, PREFIX = "can", "/can"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Admin-User": "pytest"}


@pytest.fixture(scope="module")
def can(serve_instance: ServeInstance, registry_root: str, state_dir: str) -> Iterator[str]:
    config = small_app(serve_instance, registry_root, state_dir, APP, ("v1", "v2", "v4"), {
        "baseline": "v1", "arms": [{"version": "v1", "weight": 100}],
        "breaker": {"failure_threshold": 50, "cooldown_s": 1},
    })
    yield from serve_app(config, serve_instance, PREFIX)

@pytest.fixture(autouse=True)
def fresh(can: str) -> Iterator[None]:
    """Each test starts from the module's config, whatever ran before it (or failed): no
    canary running, v1 the baseline and the only arm at 100 %."""
    status = httpx.get(f"{can}/admin/canary", headers=AUTH, timeout=30).json()
    if (status.get("state") or {}).get("status") in ("running", "paused"):
        r = httpx.post(f"{can}/admin/canary/abort", headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
    exp = httpx.get(f"{can}/admin/experiment", headers=AUTH, timeout=30).json()
    if exp["experiment"]["baseline"] != "v1":
        r = httpx.post(f"{can}/admin/promote", json={"version": "v1"}, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        exp = r.json()
    for arm in exp["experiment"]["arms"]:
        if arm["version"] != "v1":
            r = httpx.delete(f"{can}/admin/candidates/{arm['version']}", headers=AUTH,
                             timeout=30)
            assert r.status_code == 200, r.text
    exp = httpx.get(f"{can}/admin/experiment", headers=AUTH, timeout=30).json()
    assert exp["experiment"]["baseline"] == "v1", exp
    assert [a["version"] for a in exp["experiment"]["arms"]] == ["v1"], exp
    yield


def start(url: str, candidate: str, **gates: Any) -> dict[str, Any]:
    plan = {"candidate": candidate, "steps": [20, 50, 100], "interval_s": 2,
            "min_requests": 25, "gates": {"max_p99_ratio": None, "max_p99_ms": 2000, **gates}}
    r = httpx.post(f"{url}/admin/canary", json=plan, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_plan_validation(can: str) -> None:
    bad = {"candidate": "v2", "steps": [50, 20]}
    r = httpx.post(f"{can}/admin/canary", json=bad, headers=AUTH)
    assert r.status_code == 422 and "steps" in r.json()["error"]
    r = httpx.post(f"{can}/admin/canary", json={"candidate": "v7"}, headers=AUTH)
    assert r.status_code == 422
    assert httpx.post(f"{can}/admin/canary", json={"candidate": "v2"}).status_code == 401


def test_healthy_candidate_is_promoted(can: str) -> None:
    started = start(can, "v2")
    assert started["state"]["status"] == "running" and started["state"]["weight"] == 20
    run = asyncio.run(drive_canary(can, timeout_s=90))
    statuses, status = run.predict, run.status
    assert status["state"]["status"] == "promoted", status["state"]["history"][-3:]
    assert statuses and set(statuses) == {200}
    history = status["state"]["history"]
    actions = [d["action"] for d in history]
    assert actions == ["start", "advance", "advance", "promote"], [
        (d["action"], d["verdict"], d["reasons"], d.get("metrics")) for d in history]
    exp = httpx.get(f"{can}/admin/experiment", headers=AUTH).json()
    assert exp["experiment"]["baseline"] == "v2" and exp["effective_weights"]["v2"] == 100
    audit = httpx.get(f"{can}/admin/audit?limit=50", headers=AUTH).json()["entries"]
    assert any(e["who"] == "canary" and e["operation"] == "promote" for e in audit)


def test_candidate_failing_20_percent_is_rolled_back(can: str) -> None:
    # On v4's replica and on the router's colocated copy of v4 (scikit-learn).
    v4 = model_deployment_name("activity", "v4")
    set_fault_all(APP, v4, error_rate=0.2)
    try:
        start(can, "v4", failures_to_rollback=2)
        t0 = time.monotonic()
        run = asyncio.run(drive_canary(can, timeout_s=90))
        statuses, status = run.predict, run.status
        elapsed = time.monotonic() - t0
    finally:
        set_fault_all(APP, v4, error_rate=0.0)
    state = status["state"]
    assert state["status"] == "rolled_back", state["history"][-3:]
    assert set(statuses) == {200}, "a client saw the candidate's failure"
    verdicts = [d["verdict"] for d in state["history"] if d["action"] != "start"]
    assert verdicts[-2:] == ["fail", "fail"]  # two failed windows in a row, then rollback
    assert any("fallback" in r for r in state["history"][-1]["reasons"])
    assert elapsed < 30
    exp = httpx.get(f"{can}/admin/experiment", headers=AUTH).json()
    assert exp["effective_weights"]["v4"] == 0 and exp["experiment"]["baseline"] == "v1"


def test_plan_survives_a_controller_restart(can: str) -> None:
    r = httpx.post(f"{can}/admin/canary", json={"candidate": "v4", "steps": [10, 100],
                                                "interval_s": 3600}, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    before = r.json()
    os.kill(before["controller_pid"], signal.SIGKILL)  # Serve starts a new controller replica
    deadline = time.monotonic() + 60
    while True:
        try:
            now = httpx.get(f"{can}/admin/canary", headers=AUTH, timeout=5)
            if now.status_code == 200 and now.json()["controller_pid"] != before["controller_pid"]:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the controller did not come back"
        time.sleep(0.5)
    after = now.json()
    assert after["plan"] == before["plan"] and after["state"] == before["state"]
    assert after["state"]["status"] == "running" and after["state"]["weight"] == 10
    exp = httpx.get(f"{can}/admin/experiment", headers=AUTH).json()
    assert exp["effective_weights"]["v4"] == 10
    r = httpx.post(f"{can}/admin/canary/abort", headers=AUTH, timeout=30)
    assert r.json()["state"]["status"] == "rolled_back"
