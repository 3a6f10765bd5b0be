"""OpenAPI descriptions of the JSON API.

The handlers parse bodies themselves (orjson + numpy, see router/protocol/request.py),
which is faster than a pydantic model per request; these schemas exist so
that /docs and /openapi.json still describe every body, answer and error.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "BATCH_RESPONSES",
    "OPENAPI_BATCH",
    "OPENAPI_SINGLE",
    "SINGLE_RESPONSES",
    "ErrorBody",
    "PredictAnswer",
]

_NUMBER_MATRIX: dict[str, Any] = {
    "type": "array",
    "description": "One model input: time steps x channels (50 x 9 for the demo model).",
    "items": {"type": "array", "items": {"type": "number"}},
}


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong and what to do.")
    code: str = Field(description="Machine-readable error code.")
    field: str | None = Field(None, description="The offending field, when there is one.")


class PredictAnswer(BaseModel):
    label: str
    probabilities: dict[str, float]
    model: str
    version: str = Field(description="The version that answered.")
    arm: str = Field(description="The version the experiment chose.")
    cached: bool
    fallback: bool = Field(description="True when the baseline answered for a failed arm.")
    request_id: str


class BatchAnswer(BaseModel):
    predictions: list[PredictAnswer]
    model: str
    version: str
    arm: str
    fallback: bool
    request_id: str


def _body(schema: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema, "example": example}},
        }
    }


_ROW = [0.0] * 9
OPENAPI_SINGLE = _body(
    {
        "type": "object",
        "required": ["features"],
        "additionalProperties": False,
        "properties": {"features": _NUMBER_MATRIX},
    },
    {"features": [_ROW] * 50},
)
OPENAPI_BATCH = _body(
    {
        "type": "object",
        "required": ["instances"],
        "additionalProperties": False,
        "properties": {"instances": {"type": "array", "minItems": 1, "items": _NUMBER_MATRIX}},
    },
    {"instances": [[_ROW] * 50]},
)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Body is not valid JSON"},
    404: {"model": ErrorBody, "description": "X-Model-Version names no deployed version"},
    413: {"model": ErrorBody, "description": "Body over the size limit"},
    415: {"model": ErrorBody, "description": "Content type is not application/json"},
    422: {"model": ErrorBody, "description": "Input has the wrong shape or values"},
    503: {"model": ErrorBody, "description": "No arm could answer, the baseline included"},
}

SINGLE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": PredictAnswer, "description": "The prediction; see the headers X-Model-Version,"
          " X-Cache (HIT, MISS, BYPASS) and X-Fallback"},
    **ERROR_RESPONSES,
}
BATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": BatchAnswer, "description": "One prediction per instance, in order"},
    **ERROR_RESPONSES,
}
