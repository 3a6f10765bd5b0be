"""The prediction log through the real router (issue 19 item 1), on the session's Ray and Redis.

One small app (v1 sklearn baseline, v2 torch, 50/50, the real Redis cache) with ``log:`` on
and a flush interval of an hour, so that every row is written by the replica's shutdown:
a split over many users, a pinned candidate that raises (the baseline answers, fallback
``error``), a cache hit, a /predict/batch and an OIP infer, and feedback for some of them.
While the app runs nothing is on disk (the rows wait in the buffer: /stats says how many);
``serve.delete`` makes Serve call the router's destructor, which writes them. The bench's
live switch (``set_log_sample``, variant l) at 0 % keeps nothing more, and back at the
config's share keeps the next request. Then every
row read back with pyarrow.dataset carries the arm, version, fallback, reason and cached
flag the client was answered, its input and digest; the feedback table joins by request_id.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.dataset as ds
import pytest

from benchmarks.faults import set_fault_all, set_log_sample_all
from models.activity.data import CLASS_LABELS, make_windows
from router.dataplane.predlog import PARTITIONING, PREDICTIONS_SCHEMA
from tests.integration.conftest import ServeInstance, deploy, small_app

APP, PREFIX = "predlog", "/predlog"


def _read(root: Path, table: str) -> list[dict[str, Any]]:
    path = root / "activity" / table
    if not path.exists():
        return []
    part = ds.partitioning(PARTITIONING, flavor="hive")
    return list(ds.dataset(path, format="parquet", partitioning=part).to_table().to_pylist())


def _digest(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def served(serve_instance: ServeInstance, registry_root: str, state_dir: str, redis_server: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Deploy, send every kind of request, delete the app; what was answered, and where."""
    from ray import serve

    root = tmp_path_factory.mktemp("predlog")
    config = small_app(serve_instance, registry_root, state_dir, APP, ("v1", "v2"), {
        "baseline": "v1", "arms": [{"version": "v1", "weight": 50},
                                   {"version": "v2", "weight": 50}],
        "breaker": {"failure_threshold": 1000, "cooldown_s": 1},
    }, cache={"redis_url": redis_server.url, "ttl_s": 600},
        log={"enabled": True, "location": str(root), "flush_interval_s": 3600})
    deploy(config, route_prefix=PREFIX)
    url = serve_instance.url + PREFIX
    X, _ = make_windows(60, seed=1919)
    answers: dict[str, dict[str, Any]] = {}  # request id -> answer, with the input
    feedback: dict[str, str] = {}
    deleted = False
    try:
        with httpx.Client(timeout=30) as client:

            def predict(x: np.ndarray, **headers: str) -> dict[str, Any]:
                r = client.post(f"{url}/predict", json={"features": x.tolist()},
                                headers=headers)
                assert r.status_code == 200, r.text
                body = dict(r.json())
                body["digest"] = _digest(x)
                body["input"] = x
                answers[body["request_id"]] = body
                return body

            for i in range(40):  # the split
                predict(X[i], **{"X-User-Id": f"user-{i}"})
            set_fault_all(APP, "activity-v2", error_rate=1.0)
            try:
                for i in range(40, 43):  # the pinned candidate raises: v1 answers
                    body = predict(X[i], **{"X-Model-Version": "v2"})
                    assert body["fallback"] is True and body["version"] == "v1", body
            finally:
                set_fault_all(APP, "activity-v2", error_rate=0.0)
            first = predict(X[43], **{"X-Model-Version": "v1"})
            assert first["cached"] is False
            for _ in range(20):  # the cache write is in the background
                again = predict(X[43], **{"X-Model-Version": "v1"})
                if again["cached"]:
                    break
                time.sleep(0.1)
            assert again["cached"] is True
            batch = X[44:47]
            r = client.post(f"{url}/predict/batch", json={"instances": batch.tolist()},
                            headers={"X-Model-Version": "v2"})
            assert r.status_code == 200, r.text
            rid = r.json()["request_id"]
            for i, item in enumerate(r.json()["predictions"]):
                answers[f"{rid}/{i}"] = {**item, "digest": _digest(batch[i]),
                                         "input": batch[i], "fallback_reason": None}
            oip = X[47:49]
            r = client.post(f"{url}/v2/models/activity/versions/v1/infer", json={"inputs": [{
                "name": "input", "datatype": "FP32", "shape": list(oip.shape),
                "data": oip.ravel().tolist()}]})
            assert r.status_code == 200, r.text
            for i, rid in enumerate(list(answers)[:10]):
                label = CLASS_LABELS[i % len(CLASS_LABELS)]
                fb = client.post(f"{url}/feedback", json={"request_id": rid, "label": label})
                assert fb.status_code == 200, fb.text
                feedback[rid] = label
            # Every row waits in the router's buffer: nothing is written before shutdown.
            stats = client.get(f"{url}/stats").json()
            answered_at_stats = len(answers)
            # The bench's live switch (variant l) on every router replica: at 0 % nothing
            # more is kept; back to the config's share, the next request is.
            assert set_log_sample_all(APP, 0.0), "the router replicas have a prediction log"
            unlogged = set()
            for i in range(49, 54):
                r = client.post(f"{url}/predict", json={"features": X[i].tolist()})
                assert r.status_code == 200, r.text
                unlogged.add(r.json()["request_id"])
            switched = client.get(f"{url}/stats").json()["log"]
            assert switched["buffered"] == stats["log"]["buffered"], switched
            assert set_log_sample_all(APP, None)
            predict(X[54])  # logged again
        on_disk_before = _read(root, "predictions") + _read(root, "feedback")
        serve.delete(APP)
        deleted = True
        yield {"root": root, "answers": answers, "feedback": feedback, "stats": stats,
               "oip": oip, "on_disk_before": on_disk_before, "unlogged": unlogged,
               "answered_at_stats": answered_at_stats}
    finally:
        if not deleted:
            serve.delete(APP)


def test_rows_wait_in_the_buffer_until_the_replica_shuts_down(served: dict[str, Any]) -> None:
    assert served["on_disk_before"] == []
    log = served["stats"]["log"]  # the router replica's counters, on /stats
    assert log["buffered"] == served["answered_at_stats"] + 2 + len(served["feedback"]), log
    assert log["predictions"] == {"written": 0, "dropped": 0, "failed": 0}


def test_every_answer_lands_with_its_arm_version_fallback_and_cache(
    served: dict[str, Any],
) -> None:
    rows = {r["request_id"]: r for r in _read(served["root"], "predictions")}
    answers = served["answers"]
    missing = sorted(set(answers) - set(rows))
    assert not missing, missing
    assert not served["unlogged"] & set(rows)  # answered while the log was switched to 0 %
    split = {answers[rid]["version"] for rid in list(answers)[:40]}
    assert split == {"v1", "v2"}, split  # both arms answered the split
    for rid, want in answers.items():
        row = rows[rid]
        got = (row["arm"], row["version"], row["fallback"], row["fallback_reason"],
               row["cached"], row["label"], row["input_digest"])
        expect = (want["arm"], want["version"], want["fallback"],
                  want.get("fallback_reason"), want["cached"], want["label"], want["digest"])
        assert got == expect, (rid, got, expect)
        assert row["experiment"] == APP and row["latency_ms"] > 0
        probs = [want["probabilities"][lb] for lb in CLASS_LABELS]
        np.testing.assert_allclose(row["outputs"], probs, atol=1e-5)
        assert row["input_shape"] == [50, 9]
        np.testing.assert_array_equal(np.asarray(row["input"], np.float32),
                                      want["input"].ravel())
    fallbacks = [r for r in rows.values() if r["fallback"]]
    assert len(fallbacks) == 3 and {r["fallback_reason"] for r in fallbacks} == {"error"}
    assert {(r["arm"], r["version"]) for r in fallbacks} == {("v2", "v1")}
    assert sum(r["cached"] for r in rows.values()) >= 1
    oip = {_digest(x) for x in served["oip"]}
    oip_rows = [r for r in rows.values() if r["input_digest"] in oip]
    assert len(oip_rows) == 2 and {r["version"] for r in oip_rows} == {"v1"}
    assert {r["request_id"].rsplit("/", 1)[1] for r in oip_rows} == {"0", "1"}
    table = ds.dataset(served["root"] / "activity" / "predictions", format="parquet")
    assert table.schema.field("input").type == PREDICTIONS_SCHEMA.field("input").type


def test_feedback_lands_in_its_table_and_joins_by_request_id(served: dict[str, Any]) -> None:
    fb = _read(served["root"], "feedback")
    assert {r["request_id"]: r["label"] for r in fb} == served["feedback"]
    assert all(r["value"] is None for r in fb)
    part = ds.partitioning(PARTITIONING, flavor="hive")
    base = served["root"] / "activity"
    preds = ds.dataset(base / "predictions", partitioning=part).to_table(
        columns=["request_id", "version", "label"])
    truth = ds.dataset(base / "feedback", partitioning=part).to_table(
        columns=["request_id", "label"])
    joined = preds.join(truth, "request_id", right_suffix="_true", join_type="inner")
    assert joined.num_rows == len(served["feedback"])
    for row in joined.to_pylist():
        assert row["label_true"] == served["feedback"][row["request_id"]]
        assert row["version"] == served["answers"][row["request_id"]]["version"]
