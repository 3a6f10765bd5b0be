"""The Open Inference Protocol end to end, spoken by a standard client (tritonclient).

No hand-written HTTP on the protocol's side: if tritonclient can talk to us, so can
the tools built on it. The app is the session's (v1 sklearn baseline 90 %, v2 torch
10 %, v3 keras 0 %, v4 sklearn 0 %; Redis cache on).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from models.activity.data import CLASS_LABELS, make_windows
from serve.config import AbserveConfig
from tests.integration.conftest import ServeInstance

MODEL = "activity"
VERSIONS = ["v1", "v2", "v3", "v4"]
SHAPE = [50, 9]


@pytest.fixture(scope="module")
def client(app: AbserveConfig, serve_instance: ServeInstance) -> Iterator[Any]:
    c = triton.InferenceServerClient(
        url=f"127.0.0.1:{serve_instance.http_port}", network_timeout=60
    )
    yield c
    c.close()


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    X, _ = make_windows(400, seed=321)
    return X


def make_input(x: np.ndarray, datatype: str = "FP32", binary: bool = False) -> Any:
    inp = triton.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def outputs(*names: str, binary: bool = False) -> list[Any]:
    return [triton.InferRequestedOutput(n, binary_data=binary) for n in names]


def infer(client: Any, x: np.ndarray, version: str = "", **kwargs: Any) -> Any:
    kwargs.setdefault("outputs", outputs("probabilities", "label"))
    return client.infer(MODEL, [make_input(x)], model_version=version, **kwargs)


def error_of(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def check_result(result: Any, n: int) -> np.ndarray:
    probs = result.as_numpy("probabilities")
    labels = result.as_numpy("label")
    assert probs.shape == (n, len(CLASS_LABELS)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert labels.shape == (n,)
    decoded = [v.decode() if isinstance(v, bytes) else v for v in labels]
    assert decoded == [CLASS_LABELS[i] for i in probs.argmax(axis=1)]
    return probs


# ---------------------------------------------------------------- health and metadata


def test_server_health_and_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "abserve" and "version" in meta


def test_model_ready(client: Any) -> None:
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, model_version="v2")
    assert not client.is_model_ready("no-such-model")
    assert not client.is_model_ready(MODEL, model_version="v9")


def test_model_metadata(client: Any) -> None:
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL
    assert meta["versions"] == VERSIONS
    assert meta["platform"] == "abserve"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, *SHAPE]}]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(CLASS_LABELS)]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]
    for version, platform in (("v1", "sklearn"), ("v2", "pytorch"), ("v3", "tensorflow")):
        meta = client.get_model_metadata(MODEL, model_version=version)
        assert meta["versions"] == [version] and meta["platform"] == platform
        assert meta["inputs"][0]["shape"] == [-1, *SHAPE]


# ---------------------------------------------------------------- infer


def test_infer_single(client: Any, windows: np.ndarray) -> None:
    result = infer(client, windows[:1], request_id="one-1")
    check_result(result, 1)
    response = result.get_response()
    assert response["model_name"] == MODEL
    assert response["model_version"] in {"v1", "v2"}  # the experiment's arms with traffic
    assert response["id"] == "one-1"
    params = response["parameters"]
    assert params["arm"] in {"v1", "v2"} and params["fallback"] is False
    assert isinstance(params["cached"], bool) and params["request_id"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_batched(client: Any, windows: np.ndarray, binary: bool) -> None:
    x = windows[10:14]
    result = client.infer(
        MODEL,
        [make_input(x, binary=binary)],
        outputs=outputs("probabilities", "label", binary=binary),
    )
    check_result(result, 4)


def test_infer_with_client_defaults(client: Any, windows: np.ndarray) -> None:
    """tritonclient's defaults: binary input data, no outputs named (binary_data_output)."""
    inp = triton.InferInput("input", [2, *SHAPE], "FP32")
    inp.set_data_from_numpy(windows[20:22])
    check_result(client.infer(MODEL, [inp]), 2)


def test_fp64_input_gives_the_fp32_answer(client: Any, windows: np.ndarray) -> None:
    x = windows[30:32]
    fp32 = infer(client, x, version="v1").as_numpy("probabilities")
    result = client.infer(
        MODEL,
        [make_input(x.astype(np.float64), "FP64")],
        model_version="v1",
        outputs=outputs("probabilities", "label"),
    )
    np.testing.assert_allclose(check_result(result, 2), fp32, rtol=1e-6, atol=1e-7)


def test_pinned_version_is_reported(client: Any, windows: np.ndarray) -> None:
    for version in ("v3", "v4", "v2"):
        result = infer(client, windows[40:43], version=version, request_id=f"pin-{version}")
        check_result(result, 3)
        response = result.get_response()
        assert response["model_version"] == version, response
        assert response["parameters"]["arm"] == version
        assert response["parameters"]["fallback"] is False
        assert response["id"] == f"pin-{version}"


def test_pinned_answer_matches_predict(
    client: Any, serve_instance: ServeInstance, windows: np.ndarray
) -> None:
    x = windows[50:51]
    label = infer(client, x, version="v2").as_numpy("label")[0]
    r = httpx.post(
        f"{serve_instance.url}/predict",
        json={"features": x[0].tolist()},
        headers={"X-Model-Version": "v2"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert (label.decode() if isinstance(label, bytes) else label) == r.json()["label"]


def test_unversioned_infer_follows_the_split(client: Any, windows: np.ndarray) -> None:
    seen = Counter(
        infer(client, windows[100 + i : 101 + i]).get_response()["model_version"]
        for i in range(150)
    )
    assert set(seen) <= {"v1", "v2"}, seen  # v3 and v4 have no traffic
    assert seen["v1"] > seen["v2"] > 0, seen  # 90/10: P(no v2 in 150) < 1e-6


def test_sticky_user_key_header(client: Any, windows: np.ndarray) -> None:
    """20 users x 8 requests at 90/10. A router that ignored the key would give one user
    8 equal answers with probability 0.9**8 + 0.1**8 = 0.43, all 20 users with
    0.43**20 = 5e-8: this fails for a non-sticky router but for one run in 20 million."""
    assert (0.9**8 + 0.1**8) ** 20 < 1e-6
    for user in [f"user-{k}" for k in range(20)]:
        versions = {
            infer(client, windows[300 + i : 301 + i], headers={"X-User-Id": user}).get_response()[
                "model_version"
            ]
            for i in range(8)
        }
        assert len(versions) == 1, (user, versions)


def test_repeated_infer_is_served_from_the_cache(client: Any, windows: np.ndarray) -> None:
    x = windows[60:61]
    first = infer(client, x, version="v1").get_response()
    assert first["parameters"]["cached"] is False
    deadline = time.monotonic() + 5  # the cache is written off the request path
    while True:
        again = infer(client, x, version="v1").get_response()
        if again["parameters"]["cached"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert again["parameters"]["cached"] is True
    assert again["outputs"][0]["data"] == first["outputs"][0]["data"]


def test_outputs_subset(client: Any, windows: np.ndarray) -> None:
    result = infer(client, windows[:1], outputs=outputs("label"))
    assert result.as_numpy("probabilities") is None
    assert result.as_numpy("label").shape == (1,)


def test_request_parameters_are_accepted(client: Any, windows: np.ndarray) -> None:
    result = infer(client, windows[:1], parameters={"tag": "from-a-client", "level": 3})
    check_result(result, 1)


# ---------------------------------------------------------------- errors


def test_unknown_model_is_404(client: Any, windows: np.ndarray) -> None:
    exc = error_of(lambda: client.infer("no-such-model", [make_input(windows[:1])]))
    assert exc.status() == "404" and "unknown model 'no-such-model'" in exc.message()
    exc = error_of(lambda: client.get_model_metadata("no-such-model"))
    assert exc.status() == "404"


def test_unknown_version_is_404(client: Any, windows: np.ndarray) -> None:
    # v9 is registered but not deployed: still unknown here.
    exc = error_of(lambda: infer(client, windows[:1], version="v9"))
    assert exc.status() == "404" and "no deployed version 'v9'" in exc.message()
    exc = error_of(lambda: client.get_model_metadata(MODEL, model_version="v9"))
    assert exc.status() == "404"


def test_bad_input_is_400(client: Any, windows: np.ndarray) -> None:
    bad_shape = windows[:1, :, :8].copy()
    exc = error_of(lambda: infer(client, bad_shape))
    assert exc.status() == "400" and "inputs[0].shape" in exc.message()

    nan = windows[:1].copy()
    nan[0, 0, 0] = np.nan
    exc = error_of(lambda: client.infer(MODEL, [make_input(nan, binary=True)]))
    assert exc.status() == "400" and "finite" in exc.message()

    text = triton.InferInput("input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"hello"], dtype=np.object_), binary_data=False)
    exc = error_of(lambda: client.infer(MODEL, [text]))
    assert exc.status() == "400" and "BYTES" in exc.message()

    exc = error_of(lambda: infer(client, windows[:1], outputs=outputs("logits")))
    assert exc.status() == "400" and "unknown output 'logits'" in exc.message()

    too_many = np.repeat(windows[:1], 65, axis=0)  # http.max_batch_instances is 64
    exc = error_of(lambda: infer(client, too_many))
    assert exc.status() == "400" and "65 instances" in exc.message()


def test_error_bodies_are_the_protocol_shape(serve_instance: ServeInstance, client: Any) -> None:
    """The one check on raw bytes: nothing but "error" in an OIP error body."""
    r = httpx.get(f"{serve_instance.url}/v2/models/no-such-model", timeout=30)
    assert r.status_code == 404 and set(r.json()) == {"error"}
    r = httpx.post(f"{serve_instance.url}/v2/models/{MODEL}/infer", content=b"{", timeout=30)
    assert r.status_code == 400 and set(r.json()) == {"error"}
