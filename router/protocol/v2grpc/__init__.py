"""The Open Inference Protocol's gRPC service (KServe V2, ``inference.GRPCInferenceService``):
the proto and its generated modules (``generate.py`` rewrites them)."""

SERVICER_FUNCTION = (
    "router.protocol.v2grpc.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
)

__all__ = ["SERVICER_FUNCTION"]
