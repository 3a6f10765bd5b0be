"""The OIP gRPC service in-process, without Ray or a server: the codec
(router/protocol/oip_grpc.py) and ``GrpcService`` over the same replica parts as
tests/unit/test_http_app.py (fake handles behind the real ``Arms``), so each RPC is
checked against what the REST routes answer. tests/integration/test_oip_grpc.py sends
the same calls through Serve's gRPC ingress with tritonclient.grpc.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import pytest

from router.http.app import grpc_service
from router.protocol.oip import OIPError, parse_infer_request
from router.protocol.oip_grpc import (
    grpc_status,
    infer_body,
    infer_response_message,
    parameter_value,
    user_key,
)
from router.protocol.v2grpc import grpc_predict_v2_pb2 as pb
from serve.errors import AbserveError, InvalidInput, NotFound, Overloaded, UpstreamError
from tests.unit.test_http_app import FEATURES, Replica, replica

Code = grpc.StatusCode


class Context:
    """What Serve's RayServegRPCContext gives the service: metadata in, a status out."""

    def __init__(self, metadata: tuple[tuple[str, Any], ...] = ()) -> None:
        self.metadata = metadata
        self.code: Code | None = None
        self.details = ""

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self.metadata

    def set_code(self, code: Any) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


def _infer(n: int = 1, *, raw: bool = True, name: str = "activity",
           version: str = "") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=name, model_version=version, id="g1")
    tensor = req.inputs.add(name="input", datatype="FP32", shape=[n, 4])
    values = np.asarray(FEATURES * n, dtype=np.float32)
    if raw:
        req.raw_input_contents.append(values.tobytes())
    else:
        tensor.contents.fp32_contents.extend(values.tolist())
    return req


def _outputs(msg: pb.ModelInferResponse) -> dict[str, Any]:
    """Each output decoded from raw_output_contents (FP32, or BYTES with 4-byte lengths)."""
    out: dict[str, Any] = {}
    for tensor, raw in zip(msg.outputs, msg.raw_output_contents, strict=True):
        if tensor.datatype == "BYTES":
            items, i = [], 0
            while i < len(raw):
                (n,) = struct.unpack_from("<I", raw, i)
                items.append(raw[i + 4:i + 4 + n].decode())
                i += 4 + n
            out[tensor.name] = items
        else:
            out[tensor.name] = np.frombuffer(raw, dtype=np.float32).reshape(tuple(tensor.shape))
    return out


def run(r: Replica, scenario: Callable[[Any], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario(grpc_service(r.parts))
        await r.parts.follower.close()
        assert r.parts.admission.inflight == 0

    asyncio.run(main())


# ------------------------------------------------------------------ the codec


def test_raw_and_typed_contents_read_as_the_same_rest_body() -> None:
    raw_body, binary = infer_body(_infer(2))
    typed_body, none = infer_body(_infer(2, raw=False))
    assert none == b"" and len(binary) == 2 * 4 * 4
    assert raw_body["inputs"][0]["parameters"] == {"binary_data_size": 32}
    a = parse_infer_request(raw_body, (4,), 64, binary)
    b = parse_infer_request(typed_body, (4,), 64, b"")
    np.testing.assert_array_equal(a.batch, b.batch)
    assert a.batch.shape == (2, 4) and a.id == "g1"


def test_bad_inputs_are_refused_with_the_rest_messages() -> None:
    req = _infer()
    req.raw_input_contents.append(b"\0" * 16)  # two raw entries for one input
    with pytest.raises(OIPError, match="raw_input_contents: 2 entries for 1 inputs"):
        infer_body(req)
    mixed = _infer(raw=False)
    mixed.inputs[0].contents.int_contents.append(1)
    with pytest.raises(OIPError, match="int_contents given; FP32 data go in contents.fp32"):
        infer_body(mixed)
    short = _infer()
    short.raw_input_contents[0] = b"\0" * 12  # 3 floats for shape [1, 4]
    body, binary = infer_body(short)
    with pytest.raises(OIPError):
        parse_infer_request(body, (4,), 64, binary)


def test_error_classes_map_to_grpc_codes_most_specific_first() -> None:
    assert grpc_status(InvalidInput("x"))[0] is Code.INVALID_ARGUMENT
    assert grpc_status(OIPError("x"))[0] is Code.INVALID_ARGUMENT
    assert grpc_status(NotFound("no such model")) == (Code.NOT_FOUND, "no such model")
    assert grpc_status(Overloaded("full"))[0] is Code.RESOURCE_EXHAUSTED
    assert grpc_status(UpstreamError("down"))[0] is Code.UNAVAILABLE
    assert grpc_status(AbserveError("?"))[0] is Code.INTERNAL
    # An unknown exception's text stays in the logs, as with REST.
    assert grpc_status(KeyError("secret")) == (Code.INTERNAL, "internal server error")


def test_the_user_key_comes_from_lower_case_metadata() -> None:
    assert user_key((("x-user-id", "u7"),), "X-User-Id") == "u7"
    assert user_key((("x-user-id-bin", b"u7"),), "X-User-Id") is None
    assert user_key((("other", "u7"),), "X-User-Id") is None


def test_a_response_message_carries_outputs_and_parameters() -> None:
    msg = infer_response_message({
        "model_name": "m", "model_version": "v1", "id": "r",
        "parameters": {"arm": "v1", "cached": True, "n": 3, "p": 0.5},
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 2],
                     "data": [0.25, 0.75]},
                    {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["walk"]}],
    })
    assert {k: parameter_value(v) for k, v in msg.parameters.items()} == {
        "arm": "v1", "cached": True, "n": 3, "p": 0.5}
    out = _outputs(msg)
    np.testing.assert_array_equal(out["probabilities"], [[0.25, 0.75]])
    assert out["label"] == ["walk"]


# ------------------------------------------------------------------ the service


def test_health_and_metadata_rpcs() -> None:
    r = replica()

    async def scenario(svc: Any) -> None:
        ctx = Context()
        assert (await svc.ServerLive(pb.ServerLiveRequest(), ctx)).live
        assert (await svc.ServerReady(pb.ServerReadyRequest(), ctx)).ready
        meta = await svc.ServerMetadata(pb.ServerMetadataRequest(), ctx)
        assert meta.name == "abserve" and meta.version
        model = await svc.ModelMetadata(pb.ModelMetadataRequest(name="activity"), ctx)
        assert model.name == "activity" and set(model.versions) == {"v1", "v2", "v3"}
        assert [t.name for t in model.inputs] == ["input"]
        assert ctx.code is None
        assert (await svc.ModelReady(pb.ModelReadyRequest(name="activity", version="v1"),
                                     ctx)).ready
        r.handles["v3"].ready_now = False
        assert not (await svc.ServerReady(pb.ServerReadyRequest(), ctx)).ready
        assert not (await svc.ModelReady(pb.ModelReadyRequest(name="activity"), ctx)).ready
        assert (await svc.ModelReady(pb.ModelReadyRequest(name="activity", version="v1"),
                                     ctx)).ready
        for req in (pb.ModelReadyRequest(name="other"),
                    pb.ModelReadyRequest(name="activity", version="v9")):
            missing = Context()
            assert not (await svc.ModelReady(req, missing)).ready
            assert missing.code is Code.NOT_FOUND, req
        missing = Context()
        await svc.ModelMetadata(pb.ModelMetadataRequest(name="other"), missing)
        assert missing.code is Code.NOT_FOUND and "other" in missing.details

    run(r, scenario)


def test_model_infer_splits_caches_and_falls_back_like_rest() -> None:
    r = replica()

    async def scenario(svc: Any) -> None:
        ctx = Context((("x-user-id", "u1"),))
        first = await svc.ModelInfer(_infer(2), ctx)
        assert ctx.code is None, ctx.details
        assert (first.model_name, first.model_version, first.id) == ("activity", "v1", "g1")
        params = {k: parameter_value(v) for k, v in first.parameters.items()}
        assert params["arm"] == "v1" and params["fallback"] is False
        assert params["cached"] is False and params["request_id"]
        out = _outputs(first)
        assert out["probabilities"].shape == (2, 2)
        # The same input again: the cache answers.
        again = await svc.ModelInfer(_infer(2), Context())
        assert parameter_value(again.parameters["cached"]) is True
        # v2 raises: pinned to it, the baseline answers and says why.
        pinned = await svc.ModelInfer(_infer(version="v2"), ctx := Context())
        assert ctx.code is None
        assert parameter_value(pinned.parameters["fallback"]) is True
        assert parameter_value(pinned.parameters["fallback_reason"]) == "error"
        assert pinned.model_version == "v1"
        assert r.parts.follower.pending_served == 5  # every row, remembered for feedback

    run(r, scenario)


@pytest.mark.parametrize("request_, code, words", [
    (_infer(name="other"), Code.NOT_FOUND, "other"),
    (_infer(version="v9"), Code.NOT_FOUND, "v9"),
    (pb.ModelInferRequest(model_name="activity"), Code.INVALID_ARGUMENT, "inputs"),
    (_infer(257), Code.INVALID_ARGUMENT, "256"),  # over http.max_batch_instances
])
def test_model_infer_refusals_carry_status_codes(request_: pb.ModelInferRequest, code: Code,
                                                 words: str) -> None:
    r = replica()

    async def scenario(svc: Any) -> None:
        ctx = Context()
        answer = await svc.ModelInfer(request_, ctx)
        assert ctx.code is code, ctx.details
        assert words in ctx.details
        assert answer == pb.ModelInferResponse()

    run(r, scenario)


def test_model_infer_sheds_above_the_in_flight_limit() -> None:
    r = replica()  # router.max_inflight 4, max_inflight_per_key 2

    async def scenario(svc: Any) -> None:
        admission = r.parts.admission
        for _ in range(4):
            admission.try_enter(None)
        ctx = Context()
        await svc.ModelInfer(_infer(), ctx)
        assert ctx.code is Code.RESOURCE_EXHAUSTED and "capacity" in ctx.details
        for _ in range(4):
            admission.leave(None)
        for _ in range(2):
            admission.try_enter("u1")
        keyed = Context((("x-user-id", "u1"),))
        await svc.ModelInfer(_infer(), keyed)
        assert keyed.code is Code.RESOURCE_EXHAUSTED and "user key" in keyed.details
        for _ in range(2):
            admission.leave("u1")

    run(r, scenario)
