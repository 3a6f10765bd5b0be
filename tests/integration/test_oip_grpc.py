"""The Open Inference Protocol over gRPC end to end, spoken by tritonclient.grpc through
Serve's gRPC ingress (the session's Serve starts it on ``ServeInstance.grpc_port``, in
the suite's ingress mode: HAProxy in the throughput mode, Serve's Python gRPC proxy in
the default one).

Each call names the application in the ``application`` metadata key, as a client of a
cluster with several abserve applications must; the sticky user key travels as the
``x-user-id`` metadata key, as the REST header does.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from benchmarks.faults import set_fault_all
from models.activity.data import CLASS_LABELS, make_windows
from serve.config import AbserveConfig, model_deployment_name
from tests.integration.conftest import APP, ServeInstance

MODEL = "activity"
ROUTE = {"application": APP}


@pytest.fixture(scope="module")
def client(app: AbserveConfig, serve_instance: ServeInstance) -> Iterator[Any]:
    c = tgrpc.InferenceServerClient(url=f"127.0.0.1:{serve_instance.grpc_port}")
    deadline = time.monotonic() + 60  # the gRPC ingress learns the app a moment after HTTP
    while True:
        try:
            if c.is_server_live(headers=ROUTE):
                break
        except InferenceServerException:
            pass
        assert time.monotonic() < deadline, "the gRPC ingress never answered"
        time.sleep(0.5)
    yield c
    c.close()


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    X, _ = make_windows(300, seed=777)
    return X


def infer(client: Any, x: np.ndarray, version: str = "", user: str | None = None,
          **kwargs: Any) -> Any:
    inp = tgrpc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x.astype(np.float32))
    headers = {**ROUTE, **({"x-user-id": user} if user else {})}
    outputs = [tgrpc.InferRequestedOutput(n) for n in ("probabilities", "label")]
    return client.infer(MODEL, [inp], model_version=version, outputs=outputs,
                        headers=headers, client_timeout=60, **kwargs)


def params(result: Any) -> dict[str, Any]:
    out = {}
    for key, p in result.get_response().parameters.items():
        out[key] = getattr(p, p.WhichOneof("parameter_choice"))
    return out


def error_of(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def test_health_and_metadata(client: Any) -> None:
    assert client.is_server_live(headers=ROUTE)
    assert client.is_server_ready(headers=ROUTE)
    meta = client.get_server_metadata(headers=ROUTE)
    assert meta.name == "abserve"
    assert client.is_model_ready(MODEL, headers=ROUTE)
    assert client.is_model_ready(MODEL, "v3", headers=ROUTE)
    model = client.get_model_metadata(MODEL, headers=ROUTE)
    assert model.name == MODEL and set(model.versions) == {"v1", "v2", "v3", "v4"}
    assert [(t.name, list(t.shape)) for t in model.inputs] == [("input", [-1, 50, 9])]
    version = client.get_model_metadata(MODEL, "v2", headers=ROUTE)
    assert list(version.versions) == ["v2"]


def test_pinned_answers_equal_rest(client: Any, serve_instance: ServeInstance,
                                   windows: np.ndarray) -> None:
    x = windows[10:12]
    for version in ("v1", "v2", "v3"):
        result = infer(client, x, version=version)
        probs = result.as_numpy("probabilities")
        labels = [v.decode() for v in result.as_numpy("label")]
        assert result.get_response().model_version == version
        assert params(result)["arm"] == version and params(result)["fallback"] is False
        assert probs.shape == (2, len(CLASS_LABELS))
        assert labels == [CLASS_LABELS[i] for i in probs.argmax(axis=1)]
        rest = httpx.post(f"{serve_instance.url}/predict/batch",
                          json={"instances": x.tolist()},
                          headers={"X-Model-Version": version}, timeout=30)
        assert rest.status_code == 200, rest.text
        rest_probs = np.array([[p["probabilities"][c] for c in CLASS_LABELS]
                               for p in rest.json()["predictions"]])
        np.testing.assert_allclose(probs, rest_probs, atol=1e-6)


def test_unpinned_calls_follow_the_split_and_stick_to_the_user(
    client: Any, windows: np.ndarray
) -> None:
    """90/10 split. 20 users x 6 calls: a router that ignored the metadata key would give
    one user six equal versions with probability 0.9**6 + 0.1**6 = 0.53, all twenty
    with 3e-6."""
    seen: Counter[str] = Counter()
    for u in range(20):
        versions = {infer(client, windows[20 + 6 * u + i: 21 + 6 * u + i],
                          user=f"grpc-user-{u}").get_response().model_version
                    for i in range(6)}
        assert len(versions) == 1, (u, versions)
        seen.update(versions)
    assert set(seen) <= {"v1", "v2"}, seen
    free = Counter(infer(client, windows[150 + i: 151 + i]).get_response().model_version
                   for i in range(100))
    assert free["v1"] > free["v2"] > 0, free  # P(no v2 in 100 at 10 %) < 3e-5


def test_a_repeated_input_is_served_from_the_cache(client: Any, windows: np.ndarray) -> None:
    x = windows[260:261] + 0.5  # not sent by any other test
    first = infer(client, x, version="v1")
    assert params(first)["cached"] is False
    deadline = time.monotonic() + 5  # the cache is written off the request path
    while True:
        again = infer(client, x, version="v1")
        if params(again)["cached"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert params(again)["cached"] is True
    np.testing.assert_array_equal(again.as_numpy("probabilities"),
                                  first.as_numpy("probabilities"))


def test_a_failing_candidate_is_answered_by_the_baseline(
    client: Any, serve_instance: ServeInstance, windows: np.ndarray
) -> None:
    candidate = model_deployment_name(MODEL, "v2")
    set_fault_all(APP, candidate, error_rate=1.0)
    try:
        for i in range(5):
            result = infer(client, windows[200 + i: 201 + i] + 9.0, version="v2")
            p = params(result)
            assert p["fallback"] is True and p["arm"] == "v2", p
            assert result.get_response().model_version == "v1"
    finally:
        set_fault_all(APP, candidate, error_rate=0.0)
    deadline = time.monotonic() + 15  # the breaker's cool-down, then a probe closes it
    while params(infer(client, windows[5:6] + 3.7, version="v2"))["fallback"]:
        assert time.monotonic() < deadline, "the candidate never came back"
        time.sleep(0.3)


def test_bad_calls_get_the_right_status_codes(client: Any, windows: np.ndarray) -> None:
    exc = error_of(lambda: client.infer("no-such-model", [], headers=ROUTE))
    assert exc.status() == "StatusCode.NOT_FOUND", exc
    assert "unknown model 'no-such-model'" in exc.message()
    exc = error_of(lambda: infer(client, windows[:1], version="v9"))
    assert exc.status() == "StatusCode.NOT_FOUND" and "v9" in exc.message()
    exc = error_of(lambda: client.is_model_ready(MODEL, "v9", headers=ROUTE))
    assert exc.status() == "StatusCode.NOT_FOUND"
    exc = error_of(lambda: infer(client, windows[:1, :, :8].copy()))
    assert exc.status() == "StatusCode.INVALID_ARGUMENT" and "shape" in exc.message()
    nan = windows[:1].copy()
    nan[0, 0, 0] = np.nan
    exc = error_of(lambda: infer(client, nan))
    assert exc.status() == "StatusCode.INVALID_ARGUMENT" and "finite" in exc.message()
    exc = error_of(lambda: infer(client, np.repeat(windows[:1], 65, axis=0)))
    assert exc.status() == "StatusCode.INVALID_ARGUMENT" and "65 instances" in exc.message()
    # Nothing died: every version is still ready.
    assert client.is_server_ready(headers=ROUTE)
