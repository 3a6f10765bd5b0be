"""Wire codecs: abserve's JSON /predict bodies, the Open Inference Protocol
(KServe V2) and the OpenAPI schema fragments. Pure: bytes and dicts in, arrays out.
"""

__all__ = []
