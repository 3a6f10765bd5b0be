"""Live drift per version on the session cluster (real Ray, real redis-server): inputs from a
shifted distribution pinned to v2 raise its drift above the thresholds, in the report, in
/stats (the status column) and in Ray's exported metrics, while v1, sent its reference's own
held-out windows, stays below; v4, registered without reference data, says "no reference"."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from models.activity.data import make_windows
from models.activity.train import TEST_SEED_OFFSET
from serve.cli.admin import drift_lines
from tests.integration.conftest import ADMIN_TOKEN, ServeInstance, serve_app, small_app

APP, PREFIX = "drift", "/drift"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROWS, BATCH = 500, 50


@pytest.fixture(scope="module")
def drift_app(serve_instance: ServeInstance, registry_root: str, state_dir: str,
              redis_server: Any) -> Iterator[str]:
    config = small_app(serve_instance, registry_root, state_dir, APP, ("v1", "v2", "v4"), {
        "baseline": "v1", "arms": [{"version": "v1", "weight": 50},
                                   {"version": "v2", "weight": 50},
                                   {"version": "v4", "weight": 0}],
        "breaker": {"failure_threshold": 1000, "cooldown_s": 1},
    }, cache={"redis_url": redis_server.url, "ttl_s": 600},
        drift={"window_s": 120, "step_s": 5, "min_rows": 200, "psi_alert": 0.2,
               "ks_alert": 0.1, "label_js_alert": 0.1})
    yield from serve_app(config, serve_instance, PREFIX)


def _send(url: str, windows: np.ndarray, version: str) -> None:
    with httpx.Client(timeout=60) as client:
        for i in range(0, len(windows), BATCH):
            r = client.post(f"{url}/predict/batch", headers={"X-Model-Version": version},
                            json={"instances": windows[i:i + BATCH].tolist()})
            assert r.status_code == 200, r.text
            assert r.headers["X-Model-Version"] == version


def _drift(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/admin/report", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["drift"]


def _scrape(serve_instance: ServeInstance, name: str) -> dict[tuple[str, str], float]:
    """(version, channel) -> value of an exported gauge of this app's experiment."""
    text = httpx.get(f"http://127.0.0.1:{serve_instance.metrics_port}/metrics",
                     timeout=10).text
    out = {}
    for line in text.splitlines():
        if not line.startswith(name + "{") or f'experiment="{APP}"' not in line:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        out[(labels["version"], labels["channel"])] = float(line.rsplit(" ", 1)[1])
    return out


def test_a_shifted_version_alerts_and_an_unshifted_one_stays_below(
    drift_app: str, serve_instance: ServeInstance
) -> None:
    # The reference of every demo version is its held-out set: make_windows(n_test, seed +
    # TEST_SEED_OFFSET) with the session registry's n_test=500 and seed 0.
    held_out, _ = make_windows(500, TEST_SEED_OFFSET)
    shifted = held_out * 1.5 + 2.0  # every channel: mean and scale moved
    _send(drift_app, held_out[:ROWS], "v1")
    _send(drift_app, shifted[:ROWS], "v2")
    _send(drift_app, held_out[:60], "v4")

    deadline = time.monotonic() + 60
    while True:
        drift = _drift(drift_app)
        v1, v2 = drift["versions"]["v1"], drift["versions"]["v2"]
        if v1["rows"] >= ROWS and v2["rows"] >= ROWS and v2["status"] == "alert":
            break
        assert time.monotonic() < deadline, f"drift not reported: {drift}"
        time.sleep(1.0)

    assert v2["max_psi"] > drift["thresholds"]["psi_alert"]
    assert v2["max_ks"] > drift["thresholds"]["ks_alert"]
    assert {a["statistic"] for a in v2["alerts"]} >= {"psi", "ks"}
    assert len(v2["channels"]) == 9
    assert v1["status"] == "ok" and not v1["alerts"]
    assert v1["max_psi"] < 0.01 and v1["max_ks"] < 0.01  # its reference's own windows
    assert v1["labels"]["reference"]["js"] < 0.01  # the same answers as at training
    assert "baseline" in v2["labels"]  # v2's labels against v1's over the same window
    assert drift["versions"]["v4"]["status"] == "no reference"
    text = "\n".join(drift_lines(drift))
    assert "ALERT psi > 0.2: ch0 " in text and "v4: no reference" in text

    # /stats carries the controller's word per version (abserve status's drift column).
    deadline = time.monotonic() + 20
    while True:
        stats = httpx.get(f"{drift_app}/stats", timeout=30).json()
        words = stats.get("drift", {})
        if words.get("v2", "").startswith("ALERT"):
            break
        assert time.monotonic() < deadline, f"no drift word in /stats: {words}"
        time.sleep(1.0)
    assert words["v1"].startswith("ok") and words["v4"] == "no reference"

    # Ray's metrics: the gauges per version and channel, and the alert counter.
    deadline = time.monotonic() + 40
    while True:
        psi = _scrape(serve_instance, "ray_abserve_drift_psi")
        if ("v2", "ch0") in psi and ("v1", "ch0") in psi:
            break
        assert time.monotonic() < deadline, "no drift gauges exported"
        time.sleep(2.0)
    assert max(v for (ver, _), v in psi.items() if ver == "v2") > 0.2
    assert max(v for (ver, _), v in psi.items() if ver == "v1") < 0.2
    assert _scrape(serve_instance, "ray_abserve_drift_alert")[("v2", "any")] == 1.0
    alerts = _scrape(serve_instance, "ray_abserve_drift_alerts_total")
    assert alerts.get(("v2", "psi"), 0) >= 1 and ("v1", "psi") not in alerts
