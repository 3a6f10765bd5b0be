"""The Open Inference Protocol over gRPC (KServe V2 ``inference.GRPCInferenceService``) as
plain functions: protobuf messages in, protobuf messages out. No Ray, no server.

The REST codec (router/protocol/oip.py) holds every check of the protocol; this module
only moves between the two wire forms, so a bad input is refused with the same message
over both:

- ``infer_body(request)``: a ``ModelInferRequest`` as the REST body and the binary data
  after it, for ``parse_infer_request``. ``raw_input_contents`` (what tritonclient.grpc
  sends) becomes the binary extension (``binary_data_size`` per input); typed
  ``contents`` become ``data`` lists. A tabular model's inputs are read as data lists
  either way (its checks are on values, not bytes).
- ``infer_response_message(body)``: the REST infer response as a ``ModelInferResponse``,
  outputs in ``raw_output_contents`` (as Triton answers): FP32 little-endian, BYTES
  each a 4-byte little-endian length and the UTF-8 text. The experiment's parameters
  (arm, cached, cache, fallback, request_id) become protocol parameters.
- ``GRPC_STATUS`` / ``grpc_status(exc)``: our typed errors (serve/errors.py) -> a gRPC
  status code, one table, the most specific class winning.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import grpc
import numpy as np

from router.protocol.oip import DATATYPES, OIPError
from router.protocol.v2grpc import grpc_predict_v2_pb2 as pb
from serve.errors import (
    AbserveError,
    ArmBusy,
    ArtifactError,
    BadRequest,
    ConfigError,
    Forbidden,
    InvalidInput,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamError,
)

__all__ = [
    "CONTENTS_FIELDS",
    "GRPC_STATUS",
    "grpc_status",
    "infer_body",
    "infer_response_message",
    "metadata_message",
    "parameter_value",
    "user_key",
]

Code: TypeAlias = grpc.StatusCode

# Our typed errors -> gRPC status codes. Bad input (400 and 422 alike) is
# INVALID_ARGUMENT; an unknown model or version NOT_FOUND; "nothing can answer" (the
# baseline failed too, the controller is down) UNAVAILABLE, which clients may retry
# elsewhere; a shed request (the replica's or one key's in-flight limit) and a
# too-large message RESOURCE_EXHAUSTED, as gRPC itself answers an over-size message.
GRPC_STATUS: dict[type[AbserveError], Code] = {
    AbserveError: Code.INTERNAL,
    BadRequest: Code.INVALID_ARGUMENT,
    InvalidInput: Code.INVALID_ARGUMENT,
    UnsupportedMediaType: Code.INVALID_ARGUMENT,
    Unauthorized: Code.UNAUTHENTICATED,
    Forbidden: Code.PERMISSION_DENIED,
    NotFound: Code.NOT_FOUND,
    PayloadTooLarge: Code.RESOURCE_EXHAUSTED,
    Overloaded: Code.RESOURCE_EXHAUSTED,
    TooManyRequests: Code.RESOURCE_EXHAUSTED,
    ServiceUnavailable: Code.UNAVAILABLE,
    UpstreamError: Code.UNAVAILABLE,
    ArmBusy: Code.UNAVAILABLE,
    ConfigError: Code.INTERNAL,
    ArtifactError: Code.INTERNAL,
}


def grpc_status(exc: BaseException) -> tuple[Code, str]:
    """The status code and details for ``exc``; unknown exceptions keep their details to
    the logs (INTERNAL, "internal server error"), as ``to_http`` does."""
    if isinstance(exc, AbserveError):
        for cls in type(exc).__mro__:
            code = GRPC_STATUS.get(cls)
            if code is not None:
                return code, exc.message
    return Code.INTERNAL, "internal server error"


# Datatype -> the typed-contents field that holds it (FP16 and BF16 travel raw only).
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_CONTENTS = tuple(dict.fromkeys(CONTENTS_FIELDS.values()))


def parameter_value(param: pb.InferParameter) -> Any:
    """One protocol parameter as a plain value (None when no choice is set)."""
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def _parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {k: parameter_value(v) for k, v in params.items()}


def _set_parameter(param: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


def _text(value: bytes, where: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise OIPError(f"{where}: BYTES elements must be UTF-8 text", field=where) from None


def _contents_data(tensor: pb.ModelInferRequest.InferInputTensor,
                   where: str) -> list[Any] | None:
    """The typed contents of one input as a data list (None: none given); only the
    datatype's own field."""
    contents = tensor.contents
    present = [f for f in _ALL_CONTENTS if len(getattr(contents, f))]
    if not present:
        return None
    own = CONTENTS_FIELDS.get(tensor.datatype)
    others = [f for f in present if f != own]
    if others:
        want = f"{tensor.datatype} data go in contents.{own}" if own else (
            f"{tensor.datatype!r} has no typed contents; send raw_input_contents")
        raise OIPError(f"{where}.contents: {', '.join(others)} given; {want}",
                       field=f"{where}.contents")
    values = list(getattr(contents, own)) if own else []
    if tensor.datatype == "BYTES":
        return [_text(v, f"{where}.contents.bytes_contents") for v in values]
    return values


def _raw_data(raw: bytes, datatype: str, where: str) -> list[Any]:
    """Raw bytes as a data list, for the value checks of a tabular model's inputs."""
    field_ = f"raw_input_contents ({where})"
    if datatype == "BYTES":
        out, i = [], 0
        while i < len(raw):
            if i + 4 > len(raw):
                raise OIPError(f"{field_}: a BYTES element's 4-byte length is cut off",
                               field=where)
            (n,) = struct.unpack_from("<I", raw, i)
            if i + 4 + n > len(raw):
                raise OIPError(f"{field_}: a BYTES element runs past the data", field=where)
            out.append(_text(raw[i + 4:i + 4 + n], field_))
            i += 4 + n
        return out
    if datatype == "BOOL":
        return [bool(b) for b in raw]
    dtype = DATATYPES.get(datatype)
    if dtype is None or len(raw) % dtype.itemsize:
        raise OIPError(f"{field_}: {len(raw)} bytes are not a whole number of {datatype} "
                       "elements", field=where)
    return list(np.frombuffer(raw, dtype=dtype).tolist())


def infer_body(request: pb.ModelInferRequest, *, tabular: bool = False) -> tuple[dict[str, Any],
                                                                                  bytes]:
    """The REST body (router/protocol/oip.py ``parse_infer_request``) and binary data that
    say what ``request`` says. ``tabular``: the model takes named fields (data lists
    only)."""
    raw = list(request.raw_input_contents)
    inputs = list(request.inputs)
    if raw and len(raw) != len(inputs):
        raise OIPError(
            f"raw_input_contents: {len(raw)} entries for {len(inputs)} inputs; give one per "
            "input, in the order of inputs", field="raw_input_contents")
    body: dict[str, Any] = {"inputs": []}
    if request.id:
        body["id"] = request.id
    if request.parameters:
        body["parameters"] = _parameters(request.parameters)
    binary = bytearray()
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        item: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape),
                                "datatype": tensor.datatype}
        params = _parameters(tensor.parameters)
        if raw:
            if tensor.HasField("contents"):
                raise OIPError(f"{where}.contents: give contents or raw_input_contents, "
                               "not both", field=f"{where}.contents")
            if tabular:
                item["data"] = _raw_data(raw[i], tensor.datatype, where)
            else:
                params["binary_data_size"] = len(raw[i])
                binary += raw[i]
        else:
            data = _contents_data(tensor, where)
            if data is not None:
                item["data"] = data
        if params:
            item["parameters"] = params
        body["inputs"].append(item)
    if request.outputs:
        body["outputs"] = [
            {"name": o.name, **({"parameters": _parameters(o.parameters)} if o.parameters
                                else {})}
            for o in request.outputs
        ]
    return body, bytes(binary)


def _raw_output(output: Mapping[str, Any]) -> bytes:
    if output["datatype"] == "BYTES":
        parts = []
        for value in output["data"]:
            text = value.encode() if isinstance(value, str) else bytes(value)
            parts.append(struct.pack("<I", len(text)) + text)
        return b"".join(parts)
    dtype = DATATYPES[output["datatype"]]
    return np.asarray(output["data"], dtype=dtype).tobytes()


def infer_response_message(body: Mapping[str, Any]) -> pb.ModelInferResponse:
    """A REST infer response (router/protocol/oip.py ``infer_response``) as the message."""
    msg = pb.ModelInferResponse(model_name=body["model_name"],
                                model_version=body["model_version"], id=body.get("id", ""))
    for key, value in body.get("parameters", {}).items():
        _set_parameter(msg.parameters[key], value)
    for output in body["outputs"]:
        msg.outputs.add(name=output["name"], datatype=output["datatype"],
                        shape=list(output["shape"]))
        msg.raw_output_contents.append(_raw_output(output))
    return msg


def _tensor_metadata(items: Sequence[Mapping[str, Any]],
                     into: Any) -> None:
    for t in items:
        into.add(name=t["name"], datatype=t["datatype"], shape=list(t["shape"]))


def metadata_message(meta: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    """``model_metadata`` / ``version_metadata``'s dict as the message."""
    msg = pb.ModelMetadataResponse(name=meta["name"], versions=list(meta["versions"]),
                                   platform=meta["platform"])
    _tensor_metadata(meta["inputs"], msg.inputs)
    _tensor_metadata(meta["outputs"], msg.outputs)
    return msg


def user_key(metadata: Sequence[tuple[str, Any]], header: str) -> str | None:
    """The sticky user key from the call's metadata (gRPC keys are lower-case), or None."""
    name = header.lower()
    for key, value in metadata:
        if key == name:
            return value if isinstance(value, str) else bytes(value).decode("latin-1")
    return None
