"""The Open Inference Protocol (KServe V2 REST) as plain functions: no Ray, no FastAPI.

Standard clients (tritonclient, KServe's and MLServer's) speak this protocol, so
serving it lets them reach the experiment's split, cache and fallback unchanged.
The ingress only reads bytes and headers, calls these functions and the router
core, and writes JSON; every check and every shape of the protocol lives here.

What the router accepts, and why it is strict:

- Exactly one input tensor, of any name (clients name it after their own model;
  the router has only one input to give it). Its shape is ``[n, *input_shape]``,
  or ``input_shape`` alone for one instance; its data are row-major, either flat
  or nested exactly as the shape says (a nesting that disagrees with the shape is
  refused rather than guessed at).
- Numeric datatypes only (FP16/32/64, INT8..64, UINT8..64); BOOL, BYTES and BF16
  are refused. Values must be numbers (never JSON booleans), integers for INT/UINT
  types within their range, finite, and representable as float32 (the models take
  float32, as ``/predict`` does).
- Data in JSON, or as raw little-endian bytes after the JSON header (the binary
  tensor extension that tritonclient uses by default: ``binary_data_size`` in the
  input's parameters, ``Inference-Header-Content-Length`` on the request).
  Responses are always JSON: a client asking for binary outputs reads JSON ones.
- Bad input is 400 (the protocol's status), not the 422 of ``/predict``; an
  unknown model or version is 404. Error bodies are ``{"error": "..."}`` alone.
- A tabular model (named fields, models/schema.py) takes one input per field, or
  one BYTES input of JSON records, in JSON (router/protocol/tabular.py).
- Outputs follow the model's kind (models/kinds.py): ``probabilities`` [n, k] and
  ``label`` [n] (multiclass); ``score`` [n, 1] and ``label`` (binary);
  ``predictions`` [n, len(outputs)] (regression).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.kinds import BINARY, MULTICLASS, OutputSpec
from models.registry import Manifest
from models.schema import Schema
from router.protocol.request import parse_json
from router.protocol.tabular import records_from_oip
from serve.errors import AbserveError, BadRequest, InvalidInput, NotFound

__all__ = [
    "DATATYPES",
    "INPUT_NAME",
    "LABEL_OUTPUT",
    "NOT_READY_STATUS",
    "OUTPUT_NAMES",
    "PLATFORM",
    "PREDICTIONS_OUTPUT",
    "PROBABILITIES_OUTPUT",
    "SCORE_OUTPUT",
    "InferRequest",
    "OIPError",
    "check_model",
    "decode_body",
    "error_body",
    "infer_response",
    "output_names",
    "model_metadata",
    "parse_infer_request",
    "server_metadata",
    "version_metadata",
]

INPUT_NAME = "input"
PROBABILITIES_OUTPUT = "probabilities"
LABEL_OUTPUT = "label"
SCORE_OUTPUT = "score"  # binary: the positive label's score, [n, 1]
PREDICTIONS_OUTPUT = "predictions"  # regression: the values, [n, len(outputs)]
OUTPUT_NAMES: tuple[str, ...] = (PROBABILITIES_OUTPUT, LABEL_OUTPUT)


def output_names(spec: OutputSpec | None) -> tuple[str, ...]:
    """The output tensors of a model of this kind, in the order they are answered."""
    if spec is None or spec.kind == MULTICLASS:
        return OUTPUT_NAMES
    if spec.kind == BINARY:
        return (SCORE_OUTPUT, LABEL_OUTPUT)
    return (PREDICTIONS_OUTPUT,)
PLATFORM = "abserve"  # the unversioned model is the experiment, not one framework
# The protocol says "4xx" for not ready (Triton answers 400); probes only need non-2xx.
NOT_READY_STATUS = 400
HEADER_LENGTH = "Inference-Header-Content-Length"

# Protocol datatype -> numpy dtype, little-endian as the binary extension sends it.
DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(np_name).newbyteorder("<")
    for name, np_name in (
        ("FP16", "float16"),
        ("FP32", "float32"),
        ("FP64", "float64"),
        ("INT8", "int8"),
        ("INT16", "int16"),
        ("INT32", "int32"),
        ("INT64", "int64"),
        ("UINT8", "uint8"),
        ("UINT16", "uint16"),
        ("UINT32", "uint32"),
        ("UINT64", "uint64"),
    )
}
_REFUSED_DATATYPES = ("BOOL", "BYTES", "BF16")
_PLATFORMS = {"sklearn": "sklearn", "torch": "pytorch", "tensorflow": "tensorflow"}
_REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
_SHARED_MEMORY = "shared_memory_region"


class OIPError(BadRequest):
    """Bad input to an Open Inference Protocol route: 400, as the protocol wants."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, field=field)


@dataclass(frozen=True)
class InferRequest:
    """A checked infer request: the batch the router core takes, and what to echo."""

    batch: np.ndarray  # float32, (n, *input_shape)
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    requested_outputs: tuple[str, ...] | None = None  # None: every output


# ---------------------------------------------------------------- requests


def decode_body(raw: bytes, header_length: str | None = None) -> tuple[Any, bytes]:
    """Split a request body into its JSON header and the binary tensor data after it.

    ``header_length`` is the ``Inference-Header-Content-Length`` header; without it
    the whole body is JSON (the plain protocol).
    """
    if header_length is None:
        return parse_json(raw), b""
    text = header_length.strip()
    if not text.isdigit() or not 0 < int(text) <= len(raw):
        raise OIPError(
            f"{HEADER_LENGTH}: expected the JSON header's length in bytes, "
            f"at most the body's {len(raw)}; got {header_length!r}",
            field=HEADER_LENGTH,
        )
    n = int(text)
    return parse_json(raw[:n]), raw[n:]


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OIPError(f"{where}: expected a JSON object", field=where)
    return value


def _only(obj: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise OIPError(f"{where}: unknown key(s) {extra}; allowed: {sorted(allowed)}", field=where)


def _params(value: Any, where: str) -> dict[str, Any]:
    """Optional parameters; null counts as absent (KServe's client sends it)."""
    return {} if value is None else _object(value, where)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_infer_request(
    body: Any, input_shape: tuple[int, ...], max_instances: int, binary: bytes = b"",
    *, outputs: tuple[str, ...] = OUTPUT_NAMES, schema: Schema | None = None,
) -> InferRequest:
    """Check an infer request body and turn its one input into a float32 batch.

    ``binary`` is what followed the JSON header (see ``decode_body``). Raises
    ``OIPError`` (400) with the offending field first in the message. ``outputs``: the
    model kind's output names (``output_names``). A tabular model (``schema``) takes
    one input per field, or one BYTES input of JSON records (router/protocol/tabular.py),
    in JSON only: the binary extension carries tensors.
    """
    req = _object(body, "body")
    _only(req, _REQUEST_KEYS, "body")
    request_id = req.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise OIPError("id: expected a string", field="id")
    parameters = _params(req.get("parameters"), "parameters")
    if "inputs" not in req:
        raise OIPError("inputs: missing; send exactly one input tensor", field="inputs")
    inputs = req["inputs"]
    if schema is not None:
        if binary:
            raise OIPError("a tabular model's inputs are read from JSON only, not the binary "
                           "extension", field="inputs")
        return InferRequest(
            batch=_tabular_batch(inputs, schema, max_instances),
            id=request_id,
            parameters=dict(parameters),
            requested_outputs=_parse_outputs(req.get("outputs"), outputs),
        )
    if not isinstance(inputs, list) or len(inputs) != 1:
        got = f"{len(inputs)} inputs" if isinstance(inputs, list) else "not a list"
        raise OIPError(
            f"inputs: expected a list of exactly one input tensor ({got}); "
            f"the model takes one input of shape {[-1, *input_shape]}",
            field="inputs",
        )
    batch = _parse_input(inputs[0], tuple(input_shape), max_instances, binary, "inputs[0]")
    return InferRequest(
        batch=batch,
        id=request_id,
        parameters=dict(parameters),
        requested_outputs=_parse_outputs(req.get("outputs"), outputs),
    )


def _tabular_batch(inputs: Any, schema: Schema, max_instances: int) -> np.ndarray:
    """The records of a tabular infer request, encoded; a 422 of the schema becomes a 400
    of the protocol, naming the same field."""
    try:
        batch = records_from_oip(inputs, schema)
    except InvalidInput as exc:
        raise OIPError(exc.message, field=exc.field or "inputs") from None
    if len(batch) > max_instances:
        raise OIPError(f"inputs: {len(batch)} records, the most per request is {max_instances}",
                       field="inputs")
    return batch


def _parse_outputs(value: Any, known: tuple[str, ...] = OUTPUT_NAMES) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise OIPError('outputs: expected a list of {"name": ...} objects', field="outputs")
    if not value:
        return None  # as if left out: every output
    names: list[str] = []
    for i, item in enumerate(value):
        where = f"outputs[{i}]"
        out = _object(item, where)
        _only(out, _OUTPUT_KEYS, where)
        name = out.get("name")
        if name not in known:
            raise OIPError(
                f"{where}.name: unknown output {name!r}; outputs are {list(known)}",
                field=f"{where}.name",
            )
        if name in names:
            raise OIPError(f"{where}.name: {name!r} requested twice", field=f"{where}.name")
        params = _params(out.get("parameters"), f"{where}.parameters")
        for unsupported in ("classification", _SHARED_MEMORY):
            if unsupported in params:
                raise OIPError(
                    f"{where}.parameters.{unsupported}: not supported by this server",
                    field=f"{where}.parameters",
                )
        names.append(name)
    return tuple(names)


def _parse_shape(value: Any, input_shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    """The request's shape as (n, *input_shape); ``input_shape`` alone means n = 1."""
    if not isinstance(value, list) or not all(_int(d) and d >= 0 for d in value):
        raise OIPError(
            f"{where}.shape: expected a list of non-negative integers", field=f"{where}.shape"
        )
    shape = tuple(value)
    if shape == input_shape:
        return (1, *input_shape)
    if len(shape) == len(input_shape) + 1 and shape[1:] == input_shape:
        return shape
    raise OIPError(
        f"{where}.shape: expected {[-1, *input_shape]} (or {list(input_shape)} for one "
        f"instance), got {list(shape)}",
        field=f"{where}.shape",
    )


def _parse_input(
    value: Any, input_shape: tuple[int, ...], max_instances: int, binary: bytes, where: str
) -> np.ndarray:
    tensor = _object(value, where)
    _only(tensor, _INPUT_KEYS, where)
    for key in ("name", "shape", "datatype"):
        if key not in tensor:
            raise OIPError(f"{where}.{key}: missing", field=f"{where}.{key}")
    if not isinstance(tensor["name"], str) or not tensor["name"]:
        raise OIPError(f"{where}.name: expected a non-empty string", field=f"{where}.name")
    datatype = tensor["datatype"]
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        why = "not a number type" if datatype in _REFUSED_DATATYPES else "unknown"
        raise OIPError(
            f"{where}.datatype: {datatype!r} is {why}; use one of {list(DATATYPES)}",
            field=f"{where}.datatype",
        )
    shape = _parse_shape(tensor["shape"], input_shape, where)
    declared = tuple(tensor["shape"])
    n = shape[0]
    if n == 0:
        raise OIPError(f"{where}.shape: the batch is empty", field=f"{where}.shape")
    if n > max_instances:
        raise OIPError(
            f"{where}.shape: {n} instances, the most per request is {max_instances}",
            field=f"{where}.shape",
        )
    count = math.prod(shape)
    params = _params(tensor.get("parameters"), f"{where}.parameters")
    if _SHARED_MEMORY in params:
        raise OIPError(
            f"{where}.parameters.{_SHARED_MEMORY}: shared memory is not supported; send data",
            field=f"{where}.parameters",
        )
    if "binary_data_size" in params:
        if tensor.get("data") is not None:
            raise OIPError(
                f"{where}: give either data or parameters.binary_data_size, not both",
                field=f"{where}.data",
            )
        arr = _from_binary(params["binary_data_size"], binary, datatype, count, where)
    else:
        if binary:
            raise OIPError(
                f"{where}.parameters.binary_data_size: missing, yet {len(binary)} bytes of "
                "binary data follow the JSON header",
                field=f"{where}.parameters",
            )
        if tensor.get("data") is None:
            raise OIPError(f"{where}.data: missing", field=f"{where}.data")
        arr = _from_json(tensor["data"], declared, datatype, count, where)
    return _to_float32(arr, datatype, where).reshape(shape)


def _from_binary(size: Any, binary: bytes, datatype: str, count: int, where: str) -> np.ndarray:
    dtype = DATATYPES[datatype]
    field_ = f"{where}.parameters.binary_data_size"
    if not _int(size) or size != len(binary):
        raise OIPError(
            f"{field_}: {size!r}, but {len(binary)} bytes follow the JSON header", field=field_
        )
    if size != count * dtype.itemsize:
        raise OIPError(
            f"{field_}: {size} bytes; the shape needs {count} {datatype} elements "
            f"({count * dtype.itemsize} bytes)",
            field=field_,
        )
    return np.frombuffer(binary, dtype=dtype)


def _from_json(
    data: Any, declared: tuple[int, ...], datatype: str, count: int, where: str
) -> np.ndarray:
    field_ = f"{where}.data"
    if not isinstance(data, list):
        raise OIPError(f"{field_}: expected a list of numbers", field=field_)
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise OIPError(
            f"{field_}: ragged nesting; nest as the shape {list(declared)} or send a flat list",
            field=field_,
        ) from None
    if arr.ndim > 1 and arr.shape != declared:
        raise OIPError(
            f"{field_}: nested as {list(arr.shape)} but the shape is {list(declared)}; "
            "nest exactly as the shape or send a flat row-major list",
            field=field_,
        )
    if arr.size != count:
        raise OIPError(
            f"{field_}: {arr.size} elements, the shape {list(declared)} needs {count}",
            field=field_,
        )
    if arr.dtype.kind not in "iuf" or _has_bool(data, arr.ndim):
        raise OIPError(
            f"{field_}: values must be numbers (no booleans, strings or null), integers "
            "within 64 bits",
            field=field_,
        )
    if datatype.startswith(("INT", "UINT")):
        info = np.iinfo(DATATYPES[datatype])
        if arr.dtype.kind == "f":
            raise OIPError(f"{field_}: {datatype} data must be integers", field=field_)
        if arr.size and (int(arr.min()) < info.min or int(arr.max()) > info.max):
            raise OIPError(
                f"{field_}: {datatype} values must lie in [{info.min}, {info.max}]",
                field=field_,
            )
    return arr


def _has_bool(data: list[Any], depth: int) -> bool:
    """JSON true/false mixed with numbers; numpy would quietly make them 1 and 0."""
    flat: Any = data
    for _ in range(depth - 1):
        flat = itertools.chain.from_iterable(flat)
    return bool in set(map(type, flat))


def _to_float32(arr: np.ndarray, datatype: str, where: str) -> np.ndarray:
    field_ = f"{where}.data"
    if arr.dtype.kind == "f" or datatype.startswith("FP"):
        with np.errstate(over="ignore", invalid="ignore"):
            typed = arr.astype(DATATYPES[datatype])
        if not np.isfinite(typed).all():
            raise OIPError(
                f"{field_}: values must be finite {datatype} numbers (no NaN, Infinity "
                "or overflow)",
                field=field_,
            )
        arr = typed
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise OIPError(f"{field_}: values overflow float32, which the model takes", field=field_)
    return out


# ---------------------------------------------------------------- responses


def infer_response(
    model_name: str,
    version: str,
    request_id: str | None,
    values: np.ndarray,
    spec: OutputSpec | Sequence[str],
    requested_outputs: Sequence[str] | None,
    parameters: Mapping[str, Any],
) -> dict[str, Any]:
    """The protocol's infer response: the outputs asked for, in the order asked.

    ``values``: the model's ``(n, width)`` outputs; ``spec`` says what they are (class
    labels alone mean multiclass). ``parameters`` carries what the experiment did (arm,
    cached, fallback, ...), as protocol parameters: strings, numbers and booleans.
    """
    if not isinstance(spec, OutputSpec):
        spec = OutputSpec.of(MULTICLASS, tuple(spec))
    out = np.asarray(values, dtype=np.float32)
    if out.ndim != 2 or out.shape[1] != spec.width:
        raise ValueError(f"outputs of shape {out.shape} do not fit a {spec.kind} model of "
                         f"width {spec.width}")
    n = out.shape[0]
    main = {MULTICLASS: PROBABILITIES_OUTPUT, BINARY: SCORE_OUTPUT}.get(
        spec.kind, PREDICTIONS_OUTPUT)
    tensors: dict[str, dict[str, Any]] = {
        main: {"name": main, "datatype": "FP32", "shape": [n, out.shape[1]],
               "data": out.ravel().tolist()},
    }
    if spec.classifies:
        tensors[LABEL_OUTPUT] = {
            "name": LABEL_OUTPUT,
            "datatype": "BYTES",
            "shape": [n],
            "data": [spec.class_labels[int(i)] for i in spec.labels_of(out)],
        }
    names = output_names(spec) if requested_outputs is None else tuple(requested_outputs)
    body: dict[str, Any] = {"model_name": model_name, "model_version": version}
    if request_id is not None:
        body["id"] = request_id
    body["parameters"] = dict(parameters)
    body["outputs"] = [tensors[name] for name in names]
    return body


_FIELD_DATATYPES = {"float": "FP64", "int": "INT64", "bool": "BOOL", "category": "BYTES"}


def _tensors(manifest: Manifest) -> dict[str, Any]:
    spec = manifest.spec
    if manifest.input_schema is None:
        inputs = [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *manifest.input_shape]}]
    else:  # one input per field (or one BYTES input of JSON records)
        inputs = [{"name": f["name"], "datatype": _FIELD_DATATYPES.get(f["dtype"], "BYTES"),
                   "shape": [-1]} for f in manifest.input_schema]
    outputs = []
    for name in output_names(spec):
        if name == LABEL_OUTPUT:
            outputs.append({"name": name, "datatype": "BYTES", "shape": [-1]})
        else:
            outputs.append({"name": name, "datatype": "FP32", "shape": [-1, spec.width]})
    return {"inputs": inputs, "outputs": outputs}


def model_metadata(name: str, manifests: Mapping[str, Manifest]) -> dict[str, Any]:
    """Metadata of the unversioned model: the experiment over every deployed version.

    Its platform is ``abserve``: which framework answers depends on the split.
    Input datatype is FP32 whatever the client may send, since the router feeds
    every model float32.
    """
    if not manifests:
        raise ValueError("no deployed version to describe")
    first = next(iter(manifests.values()))
    return {
        "name": name,
        "versions": list(manifests),
        "platform": PLATFORM,
        **_tensors(first),
    }


def version_metadata(name: str, manifest: Manifest) -> dict[str, Any]:
    """Metadata of one version; its platform is its framework (sklearn, pytorch, tensorflow)."""
    return {
        "name": name,
        "versions": [manifest.version],
        "platform": _PLATFORMS.get(manifest.framework, manifest.framework),
        **_tensors(manifest),
    }


def server_metadata(version: str) -> dict[str, Any]:
    """GET /v2. No extensions are claimed: binary data is read but never written."""
    return {"name": "abserve", "version": version, "extensions": []}


def check_model(name: str, version: str | None, model: str, versions: Collection[str]) -> None:
    """Raise NotFound (404) unless ``name`` is the served model and ``version`` is deployed."""
    if name != model:
        raise NotFound(f"unknown model {name!r}; this server serves {model!r}", field="model")
    if version is not None and version not in versions:
        raise NotFound(
            f"model {model!r} has no deployed version {version!r}; deployed: {sorted(versions)}",
            field="version",
        )


def error_body(exc: BaseException) -> dict[str, str]:
    """The protocol's error object: ``{"error": message}``, nothing else.

    Unknown exceptions keep their details to the logs, as ``to_http`` does.
    """
    if isinstance(exc, AbserveError):
        return {"error": exc.message}
    return {"error": "internal server error"}
