"""Regenerate the Python modules of grpc_predict_v2.proto (the committed ones).

    .venv/bin/python -m router.protocol.v2grpc.generate          # write them
    .venv/bin/python -m router.protocol.v2grpc.generate --check  # exit 1 if they differ

The modules are committed, not built at install time: Serve's gRPC proxy and every
router replica import the servicer function by its path, on every node, so a plain
``pip install`` (or the image) must already hold them; grpcio-tools stays a dev
dependency. tests/unit/test_grpc_codec.py fails when the committed files differ from
what this writes.

One edit to protoc's output: the messages live in a private descriptor pool, not
protobuf's default one. tritonclient.grpc (and any other KServe V2 client) registers the
same ``inference.*`` names in the default pool, and a process that imports both (the
test suite; a user's app that calls itself) would fail with "duplicate symbol". On the
wire only the method paths (``/inference.GRPCInferenceService/ModelInfer``) and the
field numbers count, and those are the protocol's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

__all__ = ["generated", "main"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
PROTO = "router/protocol/v2grpc/grpc_predict_v2.proto"
FILES = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")
_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = (
    "# abserve: a private pool, so that a client's own copy of these names (tritonclient)\n"
    "# can live in the same process (router/protocol/v2grpc/generate.py).\n"
    "POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = POOL.AddSerializedFile("
)


def generated() -> dict[str, str]:
    """What protoc (grpcio-tools) writes for the proto, with the private pool."""
    from grpc_tools import protoc  # a dev dependency: only regeneration needs it

    with tempfile.TemporaryDirectory() as out:
        rc = protoc.main([
            "grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", str(ROOT / PROTO),
        ])
        if rc != 0:
            raise RuntimeError(f"protoc failed ({rc}) on {PROTO}")
        texts = {name: (Path(out) / PROTO).with_name(name).read_text() for name in FILES}
    pb2 = texts["grpc_predict_v2_pb2.py"]
    if pb2.count(_DEFAULT_POOL) != 1:
        raise RuntimeError("protoc's output changed shape: no single default-pool line to swap")
    texts["grpc_predict_v2_pb2.py"] = pb2.replace(_DEFAULT_POOL, _PRIVATE_POOL)
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generated().items():
        path = HERE / name
        if not path.exists() or path.read_text() != text:
            stale.append(name)
            if not args.check:
                path.write_text(text)
    if args.check and stale:
        print(f"stale: {stale}; run python -m router.protocol.v2grpc.generate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
