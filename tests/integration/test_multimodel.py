"""Two models side by side on the session's cluster, each its own Serve application:
the session's ``itest`` (activity, at ``/``) and the sales forecast (regression on
tabular records) at ``/models/sales``, deployed as ``abserve up`` deploys a config
(``deploy_apps``: the config's own route prefix) and deleted at the end of the module.

Each model answers under its prefix and the default also at the root; GET /models lists
both (from Serve's own status); one model's admin changes leave the other alone; their
Redis keys never collide in the one Redis they share; tritonclient reaches the sales
model's OIP routes at the cluster root (the default application forwards them), in both
of its tabular forms; the CLI's ``--model`` addresses it.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from models.activity.data import CLASS_LABELS, make_windows
from models.sales.data import INPUT_SCHEMA, records
from models.schema import Schema
from router.dataplane.cache import cache_key
from serve.config import AbserveConfig, parse_config
from tests.integration.conftest import ADMIN_TOKEN, APP, RedisServer, ServeInstance

ROOT = Path(__file__).resolve().parents[2]
SALES = "sales"
PREFIX = "/models/sales"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FIELD_TYPES = {"float": ("FP64", np.float64), "int": ("INT64", np.int64),
               "bool": ("BOOL", np.bool_), "category": ("BYTES", np.object_)}


@pytest.fixture(scope="module")
def sales(
    app: AbserveConfig, serve_instance: ServeInstance, redis_server: RedisServer,
    registry_root: str, state_dir: str,
) -> Iterator[AbserveConfig]:
    """The sales config beside the session's ``itest``, deployed by the CLI's own code."""
    from ray import serve

    from serve.cli.deploy import deploy_apps, wait_running

    config = parse_config({
        "app_name": SALES,
        "model": SALES,
        "registry": registry_root,
        "models": [{"version": "v1", "num_cpus": 0.1}, {"version": "v2", "num_cpus": 0.1}],
        "experiment": {"name": "sales-ab", "baseline": "v1", "timeout_ms": 5000,
                       "arms": [{"version": "v1", "weight": 50},
                                {"version": "v2", "weight": 50}]},
        # The session's Redis and the same key prefix as itest: only the model tells apart.
        "cache": {"redis_url": redis_server.url, "ttl_s": 600},
        "http": {"port": serve_instance.http_port, "route_prefix": PREFIX},
        "router": {"num_cpus": 0.1},
        "state": {"dir": state_dir},
    })
    assert config.cache.key_prefix == app.cache.key_prefix
    deploy_apps([config])
    try:
        wait_running(SALES, 240)
        deadline = time.monotonic() + 120
        while httpx.get(f"{serve_instance.url}{PREFIX}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "sales not ready"
            time.sleep(0.5)
        yield config
    finally:
        serve.delete(SALES)


@pytest.fixture(scope="module")
def sales_url(sales: AbserveConfig, serve_instance: ServeInstance) -> str:
    return serve_instance.url + PREFIX


def _record(i: int) -> dict[str, Any]:
    return records(40, seed=77)[i]


def _window(i: int) -> list[Any]:
    X, _ = make_windows(8, seed=4242)
    return (X[i] + 0.0314).tolist()  # inputs no other test sends


def _experiment(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/admin/experiment", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


# ---------------------------------------------------------------- routes


def test_sales_answers_a_number_for_a_record_and_predict_stays_activity(
    sales_url: str, serve_instance: ServeInstance
) -> None:
    r = httpx.post(f"{sales_url}/predict", json={"record": _record(0)}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == SALES and body["version"] in ("v1", "v2")
    assert isinstance(body["value"], float) and math.isfinite(body["value"])
    assert 0 < body["value"] < 5000  # units sold in a day, not a probability
    assert "label" not in body and "probabilities" not in body
    for version in ("v1", "v2"):
        pinned = httpx.post(f"{sales_url}/predict", json={"record": _record(1)},
                            headers={"X-Model-Version": version}, timeout=30)
        assert pinned.status_code == 200 and pinned.json()["version"] == version
    batch = httpx.post(f"{sales_url}/predict/batch",
                       json={"records": [_record(i) for i in range(2, 6)]}, timeout=30)
    assert batch.status_code == 200, batch.text
    assert [isinstance(p["value"], float) for p in batch.json()["predictions"]] == [True] * 4
    bad = httpx.post(f"{sales_url}/predict", json={"record": {"store": "s99"}}, timeout=30)
    assert bad.status_code == 422 and bad.json()["field"].startswith("record.")

    root = serve_instance.url
    for url in (f"{root}/predict", f"{root}/models/activity/predict"):
        a = httpx.post(url, json={"features": _window(0)}, timeout=30)
        assert a.status_code == 200, a.text
        assert a.json()["model"] == "activity" and a.json()["label"] in CLASS_LABELS
    # A window is no sales record, and a record no window: each model keeps its input.
    assert httpx.post(f"{sales_url}/predict", json={"features": _window(0)},
                      timeout=30).status_code == 422
    assert httpx.post(f"{root}/predict", json={"record": _record(0)},
                      timeout=30).status_code == 422


def test_get_models_lists_both_models(sales_url: str, serve_instance: ServeInstance) -> None:
    body = httpx.get(f"{serve_instance.url}/models", timeout=30).json()
    assert body["model"] == "activity" and body["baseline"] == "v1"  # today's body
    listed = {m["application"]: m for m in body["models"]}
    assert listed[APP] == {"name": "activity", "application": APP, "route_prefix": "/",
                           "status": "RUNNING"}
    assert listed[SALES] == {"name": SALES, "application": SALES, "route_prefix": PREFIX,
                             "status": "RUNNING"}
    own = httpx.get(f"{sales_url}/models", timeout=30).json()
    assert own["model"] == SALES and own["kind"] == "regression"
    assert [f["name"] for f in own["input_schema"]] == [f["name"] for f in INPUT_SCHEMA]
    alias = httpx.get(f"{serve_instance.url}/models/activity/models", timeout=30).json()
    assert alias["model"] == "activity"


def test_one_models_weights_leave_the_others_alone(
    sales_url: str, serve_instance: ServeInstance
) -> None:
    root = serve_instance.url
    before = _experiment(root)
    sales_before = _experiment(sales_url)
    try:
        r = httpx.put(f"{sales_url}/admin/weights", headers=AUTH, timeout=30,
                      json={"weights": {"v1": 100, "v2": 0}})
        assert r.status_code == 200, r.text
        changed = _experiment(sales_url)
        assert {a["version"]: a["weight"] for a in changed["experiment"]["arms"]} == {
            "v1": 100, "v2": 0}
        assert changed["revision"] > sales_before["revision"]
        after = _experiment(root)
        assert after["revision"] == before["revision"]
        assert after["experiment"] == before["experiment"]
        # The alias of the default model is the default model's admin API, not sales'.
        assert _experiment(f"{root}/models/activity")["revision"] == before["revision"]
        time.sleep(2.5)  # every sales router follows its revision well within 2 s
        versions = {httpx.post(f"{sales_url}/predict", json={"record": _record(10 + i)},
                               headers={"X-User-Id": f"u{i}"}, timeout=30).json()["version"]
                    for i in range(12)}
        assert versions == {"v1"}
    finally:
        httpx.put(f"{sales_url}/admin/weights", headers=AUTH, timeout=30,
                  json={"weights": {a["version"]: a["weight"]
                                    for a in sales_before["experiment"]["arms"]}})


def test_their_redis_keys_never_collide(
    sales_url: str, serve_instance: ServeInstance, redis_server: RedisServer,
    app: AbserveConfig,
) -> None:
    rec, window = _record(20), _window(3)
    s = httpx.post(f"{sales_url}/predict", json={"record": rec},
                   headers={"X-Model-Version": "v1"}, timeout=30)
    a = httpx.post(f"{serve_instance.url}/predict", json={"features": window},
                   headers={"X-Model-Version": "v1"}, timeout=30)
    assert s.status_code == a.status_code == 200
    row = Schema.parse(INPUT_SCHEMA).encode([rec])[0]
    prefix = app.cache.key_prefix
    sales_key = cache_key(SALES, "v1", row, prefix)
    activity_key = cache_key("activity", "v1", np.asarray(window, np.float32), prefix)
    client = redis_server.client()
    deadline = time.monotonic() + 10
    while (client.get(sales_key) is None or client.get(activity_key) is None) and (
            time.monotonic() < deadline):
        time.sleep(0.05)  # the writes are not awaited on the request path
    assert json.loads(client.get(sales_key)) == pytest.approx([s.json()["value"]], rel=1e-6)
    assert len(json.loads(client.get(activity_key))) == len(CLASS_LABELS)
    # Scan all of it: every key is prefix:model:version:digest of one model, and the two
    # models' key sets are disjoint.
    pattern = re.compile(rf"^{re.escape(prefix)}:(activity|sales):(v\d+):[0-9a-f]{{32}}$")
    by_model: dict[str, set[str]] = {"activity": set(), SALES: set()}
    for raw in client.scan_iter(match=f"{prefix}:*", count=1000):
        key = raw.decode()
        m = pattern.match(key)
        assert m is not None, key
        by_model[m.group(1)].add(key)
        width = len(json.loads(client.get(key) or b"[0]"))
        assert width == (1 if m.group(1) == SALES else len(CLASS_LABELS)), key
    assert sales_key in by_model[SALES] and activity_key in by_model["activity"]
    assert not by_model[SALES] & by_model["activity"]
    assert {k.split(":")[2] for k in by_model[SALES]} <= {"v1", "v2"}
    again = httpx.post(f"{sales_url}/predict", json={"record": rec},
                       headers={"X-Model-Version": "v1"}, timeout=30)
    assert again.headers["X-Cache"] == "HIT" and again.json()["value"] == s.json()["value"]


# ---------------------------------------------------------------- OIP at the cluster root


@pytest.fixture(scope="module")
def client(sales: AbserveConfig, serve_instance: ServeInstance) -> Iterator[Any]:
    c = triton.InferenceServerClient(url=f"127.0.0.1:{serve_instance.http_port}",
                                     network_timeout=60)
    yield c
    c.close()


def _records_input(recs: list[dict[str, Any]]) -> list[Any]:
    x = triton.InferInput("records", [len(recs)], "BYTES")
    x.set_data_from_numpy(np.array([json.dumps(r) for r in recs], dtype=np.object_),
                          binary_data=False)
    return [x]


def _field_inputs(recs: list[dict[str, Any]]) -> list[Any]:
    inputs = []
    for f in INPUT_SCHEMA:
        datatype, dtype = FIELD_TYPES[f["dtype"]]
        x = triton.InferInput(f["name"], [len(recs)], datatype)
        x.set_data_from_numpy(np.array([r[f["name"]] for r in recs], dtype=dtype),
                              binary_data=False)
        inputs.append(x)
    return inputs


def test_tritonclient_reaches_the_sales_model_at_the_cluster_root(
    client: Any, sales_url: str
) -> None:
    assert client.is_server_live()
    assert client.is_model_ready(SALES) and client.is_model_ready(SALES, "v2")
    meta = client.get_model_metadata(SALES)
    assert meta["name"] == SALES and meta["versions"] == ["v1", "v2"]
    assert [i["name"] for i in meta["inputs"]] == [f["name"] for f in INPUT_SCHEMA]
    assert [o["name"] for o in meta["outputs"]] == ["predictions"]
    assert client.get_model_metadata(SALES, "v2")["platform"] == "pytorch"

    recs = [_record(i) for i in range(30, 36)]
    expected = httpx.post(f"{sales_url}/predict/batch", json={"records": recs},
                          headers={"X-Model-Version": "v2"}, timeout=30).json()
    values = [p["value"] for p in expected["predictions"]]
    wanted = [triton.InferRequestedOutput("predictions", binary_data=False)]
    for form, inputs in (("records", _records_input(recs)), ("fields", _field_inputs(recs))):
        result = client.infer(SALES, inputs, model_version="v2", outputs=wanted,
                              request_id=f"mm-{form}")
        response = result.get_response()
        assert (response["model_name"], response["model_version"]) == (SALES, "v2"), form
        assert response["id"] == f"mm-{form}"
        out = result.as_numpy("predictions")
        assert out.shape == (len(recs), 1) and out.dtype == np.float32, form
        np.testing.assert_allclose(out[:, 0], values, rtol=1e-5, err_msg=form)
    # Through the experiment's split (no version): a regression answer from v1 or v2.
    split = client.infer(SALES, _field_inputs(recs[:2]))
    assert split.get_response()["model_version"] in ("v1", "v2")
    assert split.as_numpy("predictions").shape == (2, 1)
    # The default model is still served at the root, by its own router.
    x = triton.InferInput("input", [1, 50, 9], "FP32")
    x.set_data_from_numpy(np.asarray([_window(5)], np.float32))
    assert client.infer("activity", [x]).get_response()["model_name"] == "activity"


def test_an_unknown_model_is_404_listing_the_models(client: Any, serve_instance: ServeInstance
                                                    ) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert "404" in str(info.value.status()) or "unknown model 'nope'" in str(info.value)
    r = httpx.get(f"{serve_instance.url}/v2/models/nope", timeout=30)
    assert r.status_code == 404
    assert r.json() == {"error": "unknown model 'nope'; the models on this cluster: "
                                 "['activity', 'sales']"}
    bad = httpx.post(f"{serve_instance.url}/v2/models/sales/infer", timeout=30,
                     json={"inputs": [{"name": "store", "shape": [1], "datatype": "BYTES",
                                       "data": ["s01"]}]})
    assert bad.status_code == 400 and "required field" in bad.json()["error"]  # sales' own


# ---------------------------------------------------------------- the CLI's --model


def test_the_cli_addresses_a_model_by_name(
    sales_url: str, serve_instance: ServeInstance, tmp_path: Path
) -> None:
    env = {**os.environ, "ABSERVE_STATE_DIR": str(tmp_path), "ABSERVE_ADMIN_TOKEN": ADMIN_TOKEN,
           "PYTHONPATH": str(ROOT)}

    def cli(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "serve.cli", *args, "--url",
                               serve_instance.url], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    out = cli("status", "--model", SALES, "--no-replicas")
    assert "model sales  experiment sales-ab" in out
    predicted = cli("predict", "--model", SALES)
    assert json.loads(predicted[:predicted.rindex("}") + 1])["model"] == SALES
    before = _experiment(serve_instance.url)["revision"]
    try:
        out = cli("traffic", "v1=70", "v2=30", "--model", SALES)
        assert "experiment sales-ab" in out and "70%" in out
        assert _experiment(serve_instance.url)["revision"] == before
    finally:
        cli("traffic", "v1=50", "v2=50", "--model", SALES)
    assert "experiment itest" in cli("experiment")
