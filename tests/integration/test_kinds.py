"""A regression model on tabular records through the real router (issue 17): the sales family,
v1 a scikit-learn Pipeline with a ColumnTransformer (one-hot and scaling) and v2 a torch net,
split 50/50 on the session's Ray with the session's real Redis.

Records in, numbers out; the answer equals the pipeline's own predict on the same DataFrame;
field-named 422s; the cache hits for the same record however it is written (key order, 1 vs
1.0, a missing optional field); a raising candidate falls back to the baseline; the true
values fed back give the report's MAE, RMSE and R², equal to what the client computes from
the answers it got; OIP takes the records too and answers ``predictions``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import joblib
import numpy as np
import pytest

from benchmarks.faults import set_fault_all
from models.registry import Registry
from models.sales.data import records
from tests.integration.conftest import ADMIN_TOKEN, ServeInstance, serve_app, small_app

APP, PREFIX = "kinds", "/kinds"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def sales(serve_instance: ServeInstance, registry_root: str, state_dir: str,
          redis_server: Any) -> Iterator[str]:
    registry = Registry(registry_root)
    if "sales" not in registry.models():
        from models.sales.train import train_all

        train_all(registry_root, quiet=True)
    config = small_app(serve_instance, registry_root, state_dir, APP, ("v1", "v2"), {
        "baseline": "v1", "arms": [{"version": "v1", "weight": 50},
                                   {"version": "v2", "weight": 50}],
        "breaker": {"failure_threshold": 1000, "cooldown_s": 1},
    }, model="sales", cache={"redis_url": redis_server.url, "ttl_s": 600})
    yield from serve_app(config, serve_instance, PREFIX)


def _pipeline_predict(registry_root: str, rows: list[dict[str, Any]]) -> np.ndarray:
    """v1's own answer: its Pipeline on a DataFrame of the records, no abserve involved."""
    import pandas as pd

    from models.sales.data import DEFAULT_DISTANCE_KM, FEATURES

    registry = Registry(registry_root)
    pipeline = joblib.load(registry.verified_artifact(registry.manifest("sales", "v1")))
    frame = pd.DataFrame([{**{"competitor_distance_km": DEFAULT_DISTANCE_KM}, **r}
                          for r in rows])[list(FEATURES)]
    return np.asarray(pipeline.predict(frame), dtype=np.float64)


def test_records_in_numbers_out_equal_the_pipeline(sales: str, registry_root: str) -> None:
    rows = records(6, seed=4242)
    with httpx.Client(timeout=30) as client:
        r = client.post(f"{sales}/predict/batch", json={"records": rows},
                        headers={"X-Model-Version": "v1"})
        assert r.status_code == 200, r.text
        body = r.json()
        got = np.array([p["value"] for p in body["predictions"]])
        assert body["version"] == "v1" and "probabilities" not in body["predictions"][0]
        # float32 on the way out: the same numbers to float32's precision.
        np.testing.assert_allclose(got, _pipeline_predict(registry_root, rows), rtol=1e-6)
        one = client.post(f"{sales}/predict", json={"record": rows[0]}).json()
        assert isinstance(one["value"], float) and one["version"] in ("v1", "v2")
        models = client.get(f"{sales}/models").json()
        assert models["kind"] == "regression" and models["outputs"] == ["units_sold"]
        assert [f["name"] for f in models["input_schema"]][:2] == ["store", "day_of_week"]


def test_bad_records_are_422s_naming_the_field(sales: str) -> None:
    good = records(1, seed=7)[0]
    cases = [({**good, "price": "cheap"}, "record.price"),
             ({**good, "store": "s99"}, "record.store"),
             ({k: v for k, v in good.items() if k != "promo"}, "record.promo"),
             ({**good, "colour": "red"}, "record")]
    with httpx.Client(timeout=30) as client:
        for record, field in cases:
            r = client.post(f"{sales}/predict", json={"record": record})
            assert r.status_code == 422, r.text
            assert r.json()["field"].startswith(field), (field, r.json())


def test_the_same_record_written_otherwise_is_a_cache_hit(sales: str) -> None:
    base = {**records(1, seed=991)[0], "competitor_distance_km": 5.0}  # the default
    other = {k: base[k] for k in reversed(list(base))}  # another key order
    other["day_of_week"] = float(base["day_of_week"])  # 3.0 for 3
    del other["competitor_distance_km"]  # the optional field left out: its default
    pin = {"X-Model-Version": "v2"}
    with httpx.Client(timeout=30) as client:
        first = client.post(f"{sales}/predict", json={"record": base}, headers=pin)
        assert first.headers["X-Cache"] == "MISS", first.headers
        for _ in range(20):  # the cache write is in the background
            again = client.post(f"{sales}/predict", json={"record": other}, headers=pin)
            if again.headers["X-Cache"] == "HIT":
                break
        assert again.headers["X-Cache"] == "HIT", again.headers
        assert again.json()["value"] == first.json()["value"]


def test_a_raising_candidate_falls_back_to_the_baseline(sales: str) -> None:
    rows = records(3, seed=5150)
    set_fault_all(APP, "sales-v2", error_rate=1.0)
    try:
        with httpx.Client(timeout=30) as client:
            for row in rows:
                r = client.post(f"{sales}/predict", json={"record": row},
                                headers={"X-Model-Version": "v2"})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["fallback"] is True and body["version"] == "v1", body
                assert body["fallback_reason"] == "error" and isinstance(body["value"], float)
    finally:
        set_fault_all(APP, "sales-v2", error_rate=0.0)


def test_true_values_fed_back_give_the_reports_mae(sales: str) -> None:
    rows = records(120, seed=777, with_target=True)
    answered: dict[str, list[tuple[float, float]]] = {"v1": [], "v2": []}
    with httpx.Client(timeout=30) as client:
        for i, row in enumerate(rows):
            truth = row.pop("units_sold")
            r = client.post(f"{sales}/predict", json={"record": row},
                            headers={"X-User-Id": f"store-day-{i}"})
            assert r.status_code == 200, r.text
            body = r.json()
            fb = client.post(f"{sales}/feedback",
                             json={"request_id": body["request_id"], "value": truth})
            assert fb.status_code == 200 and fb.json()["counted"] is True, fb.text
            answered[body["version"]].append((body["value"], truth))
        report = client.get(f"{sales}/admin/report", headers=AUTH).json()
    assert report["kind"] == "regression"
    for version, pairs in answered.items():
        assert pairs, f"{version} answered nothing of a 50/50 split"
        pred, truth = np.array(pairs).T
        row = report["arms"][version]["regression"]
        assert row["n"] == len(pairs)
        assert row["mae"] == pytest.approx(float(np.abs(pred - truth).mean()), rel=1e-6)
        assert row["rmse"] == pytest.approx(float(np.sqrt(((pred - truth) ** 2).mean())),
                                            rel=1e-6)
        assert row["mae_ci95"][0] < row["mae"] < row["mae_ci95"][1]
    assert report["arms"]["v2"]["mae_delta"] == pytest.approx(
        report["arms"]["v2"]["regression"]["mae"] - report["arms"]["v1"]["regression"]["mae"])
    verdict = report["arms"]["v2"]["verdict"]
    assert "error" in verdict and "accuracy" not in verdict, verdict


def test_oip_takes_records_and_answers_predictions(sales: str, registry_root: str) -> None:
    rows = records(2, seed=31337)
    columns = [
        {"name": "store", "datatype": "BYTES", "shape": [2], "data": [r["store"] for r in rows]},
        *({"name": f, "datatype": dt, "shape": [2], "data": [r[f] for r in rows]}
          for f, dt in (("day_of_week", "INT64"), ("month", "INT64"), ("holiday", "BOOL"),
                        ("promo", "BOOL"), ("price", "FP64"),
                        ("competitor_distance_km", "FP64"))),
    ]
    with httpx.Client(timeout=30) as client:
        # OIP pins a version by its path (the X-Model-Version header is /predict's).
        r = client.post(f"{sales}/v2/models/sales/versions/v1/infer", json={"inputs": columns})
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert list(out) == ["predictions"] and out["predictions"]["shape"] == [2, 1]
        np.testing.assert_allclose(out["predictions"]["data"],
                                   _pipeline_predict(registry_root, rows), rtol=1e-6)
        meta = client.get(f"{sales}/v2/models/sales").json()
        assert meta["outputs"] == [{"name": "predictions", "datatype": "FP32",
                                    "shape": [-1, 1]}]
