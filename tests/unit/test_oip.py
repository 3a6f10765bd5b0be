"""The Open Inference Protocol's pure half: parsing, responses, metadata, errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from models.registry import Manifest
from router.protocol.oip import (
    DATATYPES,
    InferRequest,
    OIPError,
    check_model,
    decode_body,
    error_body,
    infer_response,
    model_metadata,
    parse_infer_request,
    server_metadata,
    version_metadata,
)
from serve.errors import BadRequest, NotFound, ServiceUnavailable, to_http

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (50, 9)
LABELS = ("Still", "Walking", "Running", "Bike", "Car", "Bus")
RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, *SHAPE)).astype(np.float32)


def tensor(data: Any, shape: list[int], datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    return {"name": "input", "shape": shape, "datatype": datatype, "data": data, **extra}


def request(*inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"inputs": list(inputs), **extra}


def parse(body: Any, max_instances: int = 8, binary: bytes = b"") -> InferRequest:
    return parse_infer_request(body, SHAPE, max_instances, binary)


def refused(body: Any, needle: str, max_instances: int = 8, binary: bytes = b"") -> OIPError:
    with pytest.raises(OIPError) as info:
        parse(body, max_instances, binary)
    assert needle in info.value.message, info.value.message
    assert to_http(info.value)[0] == 400
    return info.value


def manifest(version: str, framework: str) -> Manifest:
    return Manifest(
        name="activity",
        version=version,
        framework=framework,
        input_shape=SHAPE,
        input_dtype="float32",
        class_labels=LABELS,
        accuracy=0.9,
        training_time_s=1.0,
        created_at="2025-01-01T00:00:00+00:00",
        artifact="model.joblib",
        sha256="0" * 64,
    )


# ---------------------------------------------------------------- parsing


def test_flat_and_nested_data_give_the_same_batch() -> None:
    flat = parse(request(tensor(X.ravel().tolist(), [3, 50, 9])))
    nested = parse(request(tensor(X.tolist(), [3, 50, 9])))
    assert flat.batch.shape == (3, 50, 9) and flat.batch.dtype == np.float32
    np.testing.assert_array_equal(flat.batch, X)
    np.testing.assert_array_equal(nested.batch, flat.batch)


def test_instance_shape_alone_is_a_batch_of_one() -> None:
    for data in (X[0].tolist(), X[0].ravel().tolist()):
        req = parse(request(tensor(data, [50, 9])))
        assert req.batch.shape == (1, 50, 9)
        np.testing.assert_array_equal(req.batch[0], X[0])


def test_any_input_name_is_accepted() -> None:
    body = request({**tensor(X[0].tolist(), [50, 9]), "name": "dense_input"})
    assert parse(body).batch.shape == (1, 50, 9)


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_every_numeric_datatype(datatype: str) -> None:
    req = parse(request(tensor([3] * 450, [1, 50, 9], datatype)))
    assert req.batch.dtype == np.float32
    assert (req.batch == 3.0).all()


def test_fp64_values_become_float32() -> None:
    x64 = RNG.normal(size=(2, *SHAPE))
    req = parse(request(tensor(x64.ravel().tolist(), [2, 50, 9], "FP64")))
    np.testing.assert_array_equal(req.batch, x64.astype(np.float32))


def test_defaults_and_echoed_fields() -> None:
    req = parse(
        request(
            tensor(X[0].tolist(), [50, 9]),
            id="req-42",
            parameters={"binary_data_output": True, "priority": 1, "tag": "x"},
            outputs=[{"name": "label", "parameters": {"binary_data": True}}],
        )
    )
    assert req.id == "req-42"
    assert req.parameters == {"binary_data_output": True, "priority": 1, "tag": "x"}
    assert req.requested_outputs == ("label",)
    plain = parse(request(tensor(X[0].tolist(), [50, 9])))
    assert plain.id is None and plain.parameters == {} and plain.requested_outputs is None
    assert plain.requested_outputs is None


def test_null_optional_fields_count_as_absent() -> None:
    # KServe's own client sends "id": null and "parameters": null.
    body = request(tensor(X[0].tolist(), [50, 9], parameters=None), id=None, parameters=None)
    req = parse({**body, "outputs": None})
    assert req.id is None and req.parameters == {} and req.requested_outputs is None


def test_empty_outputs_list_means_every_output() -> None:
    assert parse(request(tensor(X[0].tolist(), [50, 9]), outputs=[])).requested_outputs is None


def test_most_instances_allowed_exactly() -> None:
    data = np.zeros((4, *SHAPE)).ravel().tolist()
    assert parse(request(tensor(data, [4, 50, 9])), max_instances=4).batch.shape == (4, 50, 9)
    refused(request(tensor(data, [4, 50, 9])), "4 instances, the most per request is 3", 3)


ONE = X[0].ravel().tolist()


@pytest.mark.parametrize(
    "body, needle",
    [
        ([], "body: expected a JSON object"),
        ({}, "inputs: missing"),
        ({"inputs": []}, "exactly one input tensor (0 inputs)"),
        ({"inputs": {"name": "input"}}, "exactly one input tensor (not a list)"),
        (request(tensor(ONE, [50, 9]), tensor(ONE, [50, 9])), "(2 inputs)"),
        ({**request(tensor(ONE, [50, 9])), "model": "x"}, "body: unknown key(s) ['model']"),
        (request(tensor(ONE, [50, 9]), id=7), "id: expected a string"),
        (request(tensor(ONE, [50, 9]), parameters=[1]), "parameters: expected a JSON object"),
        (request({"shape": [50, 9], "datatype": "FP32", "data": ONE}), "inputs[0].name: missing"),
        (request({**tensor(ONE, [50, 9]), "name": ""}), "inputs[0].name: expected a non-empty"),
        (request({**tensor(ONE, [50, 9]), "extra": 1}), "inputs[0]: unknown key(s) ['extra']"),
        (request({"name": "input", "shape": [50, 9], "datatype": "FP32"}), "data: missing"),
        # shapes
        (request(tensor(ONE, [1, 50, 8])), "inputs[0].shape: expected [-1, 50, 9]"),
        (request(tensor(ONE, [450])), "got [450]"),
        (request(tensor(ONE, [1, 1, 50, 9])), "got [1, 1, 50, 9]"),
        (request(tensor(ONE, [-1, 50, 9])), "non-negative integers"),
        (request(tensor(ONE, [1.0, 50, 9])), "non-negative integers"),
        (request(tensor(ONE, [True, 50, 9])), "non-negative integers"),
        (request(tensor(ONE, "1,50,9")), "non-negative integers"),
        (request(tensor([], [0, 50, 9])), "the batch is empty"),
        # element counts and nesting
        (request(tensor(ONE[:-1], [1, 50, 9])), "449 elements, the shape [1, 50, 9] needs 450"),
        (request(tensor(ONE + ONE, [1, 50, 9])), "900 elements"),
        (request(tensor(X[:2].reshape(2, 450).tolist(), [2, 50, 9])), "nested as [2, 450]"),
        (request(tensor([[0.0] * 9] * 49 + [[0.0] * 8], [50, 9])), "ragged nesting"),
        (request(tensor(0.5, [50, 9])), "expected a list of numbers"),
        # datatypes
        (request(tensor(ONE, [50, 9], "BYTES")), "'BYTES' is not a number type"),
        (request(tensor([True] * 450, [50, 9], "BOOL")), "'BOOL' is not a number type"),
        (request(tensor(ONE, [50, 9], "BF16")), "'BF16' is not a number type"),
        (request(tensor(ONE, [50, 9], "fp32")), "'fp32' is unknown"),
        (request(tensor(ONE, [50, 9], ["FP32"])), "is unknown"),
        # values
        (request(tensor(["a"] * 450, [50, 9])), "values must be numbers"),
        (request(tensor([None] * 450, [50, 9])), "values must be numbers"),
        (request(tensor([True] * 450, [50, 9])), "values must be numbers"),
        (request(tensor([1.0] * 449 + [True], [50, 9])), "values must be numbers"),
        (request(tensor([[1] * 8 + [False]] * 50, [50, 9])), "values must be numbers"),
        (request(tensor([2**70] * 450, [50, 9])), "values must be numbers"),
        (request(tensor([math.nan] * 450, [50, 9])), "finite FP32"),
        (request(tensor([1.0] * 449 + [math.inf], [50, 9])), "finite FP32"),
        (request(tensor([1e39] * 450, [50, 9])), "finite FP32"),
        (request(tensor([1e300] * 450, [50, 9], "FP64")), "overflow float32"),
        (request(tensor([70000] * 450, [50, 9], "FP16")), "finite FP16"),
        (request(tensor([1.5] * 450, [50, 9], "INT32")), "INT32 data must be integers"),
        (request(tensor([200] * 450, [50, 9], "INT8")), "INT8 values must lie in [-128, 127]"),
        (request(tensor([-1] * 450, [50, 9], "UINT8")), "UINT8 values must lie in [0, 255]"),
        (request(tensor([2**31] * 450, [50, 9], "INT32")), "INT32 values must lie"),
        # outputs
        (request(tensor(ONE, [50, 9]), outputs={"name": "label"}), "outputs: expected a list"),
        (request(tensor(ONE, [50, 9]), outputs=["label"]), "outputs[0]: expected a JSON object"),
        (request(tensor(ONE, [50, 9]), outputs=[{"name": "logits"}]), "unknown output 'logits'"),
        (
            request(tensor(ONE, [50, 9]), outputs=[{"name": "label"}, {"name": "label"}]),
            "outputs[1].name: 'label' requested twice",
        ),
        (
            request(tensor(ONE, [50, 9]), outputs=[{"name": "label", "x": 1}]),
            "outputs[0]: unknown key(s) ['x']",
        ),
        (
            request(
                tensor(ONE, [50, 9]),
                outputs=[{"name": "probabilities", "parameters": {"classification": 2}}],
            ),
            "outputs[0].parameters.classification: not supported",
        ),
        # shared memory
        (
            request(tensor(None, [50, 9], parameters={"shared_memory_region": "r"})),
            "shared memory is not supported",
        ),
    ],
)
def test_rejections_are_400_and_name_the_field(body: Any, needle: str) -> None:
    refused(body, needle)


def test_oip_error_is_a_bad_request() -> None:
    exc = OIPError("inputs[0].shape: nope", field="inputs[0].shape")
    assert isinstance(exc, BadRequest) and exc.status_code == 400
    assert to_http(exc) == (
        400,
        {"error": "inputs[0].shape: nope", "code": "bad_request", "field": "inputs[0].shape"},
    )


# ---------------------------------------------------------------- binary data


def binary_request(arr: np.ndarray, datatype: str, **extra: Any) -> tuple[bytes, str]:
    """What tritonclient sends with binary_data=True: JSON header, then raw bytes."""
    raw = arr.astype(DATATYPES[datatype]).tobytes()
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": list(arr.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
                **extra,
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    head = orjson.dumps(header)
    return head + raw, str(len(head))


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16", "INT64", "UINT8"])
def test_binary_tensor_data(datatype: str) -> None:
    arr = X[:2] if datatype.startswith("FP") else np.arange(900).reshape(2, 50, 9) % 200
    body, length = binary_request(arr, datatype)
    data, binary = decode_body(body, length)
    req = parse(data, binary=binary)
    expected = arr.astype(DATATYPES[datatype]).astype(np.float32)
    np.testing.assert_array_equal(req.batch, expected)


def test_binary_tensor_data_errors() -> None:
    body, length = binary_request(X[:1], "FP32")
    data, binary = decode_body(body, length)
    refused(data, "1800, but 1796 bytes follow", binary=binary[:-4])
    short = {**data, "inputs": [{**data["inputs"][0], "parameters": {"binary_data_size": 4}}]}
    refused(short, "4 bytes; the shape needs 450 FP32 elements (1800 bytes)", binary=binary[:4])
    refused(
        {**data, "inputs": [{**data["inputs"][0], "data": ONE}]},
        "give either data or parameters.binary_data_size",
        binary=binary,
    )
    refused(request(tensor(ONE, [50, 9])), "binary_data_size: missing, yet 1800 bytes", 8, binary)
    nan = np.full((1, *SHAPE), np.nan, dtype=np.float32)
    data, binary = decode_body(*binary_request(nan, "FP32"))
    refused(data, "finite FP32", binary=binary)


def test_decode_body() -> None:
    assert decode_body(b'{"inputs": []}') == ({"inputs": []}, b"")
    assert decode_body(b'{"a": 1}xyz', "8") == ({"a": 1}, b"xyz")
    for bad in ("0", "-1", "abc", "99"):
        with pytest.raises(OIPError, match="Inference-Header-Content-Length"):
            decode_body(b'{"a": 1}xyz', bad)
    with pytest.raises(BadRequest) as info:
        decode_body(b"{not json")
    assert info.value.status_code == 400


# ---------------------------------------------------------------- responses


def test_infer_response_shapes() -> None:
    probs = np.array([[0.1, 0.7, 0.1, 0.05, 0.05, 0.0], [0.9, 0.0, 0.0, 0.0, 0.0, 0.1]])
    params = {"arm": "v2", "cached": False, "fallback": False, "request_id": "r1"}
    body = infer_response("activity", "v2", "req-1", probs, LABELS, None, params)
    assert body == {
        "model_name": "activity",
        "model_version": "v2",
        "id": "req-1",
        "parameters": params,
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [2, 6],
                "data": probs.astype(np.float32).ravel().tolist(),
            },
            {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["Walking", "Still"]},
        ],
    }
    orjson.dumps(body)  # plain JSON values only


def test_infer_response_subset_order_and_no_id() -> None:
    probs = np.full((1, 6), 1 / 6, dtype=np.float32)
    body = infer_response("activity", "v1", None, probs, LABELS, ("label",), {})
    assert "id" not in body
    assert [o["name"] for o in body["outputs"]] == ["label"]
    both = infer_response("activity", "v1", None, probs, LABELS, ("label", "probabilities"), {})
    assert [o["name"] for o in both["outputs"]] == ["label", "probabilities"]
    with pytest.raises(ValueError, match="do not fit a multiclass model of width 5"):
        infer_response("activity", "v1", None, probs, LABELS[:5], None, {})


def test_model_metadata() -> None:
    manifests = {"v1": manifest("v1", "sklearn"), "v2": manifest("v2", "torch")}
    meta = model_metadata("activity", manifests)
    assert meta == {
        "name": "activity",
        "versions": ["v1", "v2"],
        "platform": "abserve",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 50, 9]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 6]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
    }
    with pytest.raises(ValueError):
        model_metadata("activity", {})


@pytest.mark.parametrize(
    "framework, platform",
    [("sklearn", "sklearn"), ("torch", "pytorch"), ("tensorflow", "tensorflow")],
)
def test_version_metadata(framework: str, platform: str) -> None:
    meta = version_metadata("activity", manifest("v3", framework))
    assert meta["name"] == "activity" and meta["versions"] == ["v3"]
    assert meta["platform"] == platform
    assert meta["inputs"] == model_metadata("activity", {"v3": manifest("v3", framework)})["inputs"]


def test_server_metadata() -> None:
    assert server_metadata("0.1.0") == {"name": "abserve", "version": "0.1.0", "extensions": []}


def test_check_model() -> None:
    check_model("activity", None, "activity", ["v1", "v2"])
    check_model("activity", "v2", "activity", ["v1", "v2"])
    with pytest.raises(NotFound, match="unknown model 'nope'") as info:
        check_model("nope", None, "activity", ["v1"])
    assert info.value.status_code == 404
    with pytest.raises(NotFound, match="no deployed version 'v9'; deployed: \\['v1', 'v2'\\]"):
        check_model("activity", "v9", "activity", ["v2", "v1"])


def test_error_body_is_the_protocol_shape() -> None:
    assert error_body(OIPError("inputs[0].shape: bad", field="x")) == {
        "error": "inputs[0].shape: bad"
    }
    assert error_body(NotFound("unknown model 'x'")) == {"error": "unknown model 'x'"}
    assert error_body(ServiceUnavailable("no arm")) == {"error": "no arm"}
    assert error_body(RuntimeError("secret detail")) == {"error": "internal server error"}
