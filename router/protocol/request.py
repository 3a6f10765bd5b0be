"""Parsing and validation of request bodies: pure, no Ray, microseconds.

Everything a client can get wrong is caught here and raised as a typed error
with its status (400 bad JSON, 413 too large, 415 wrong type, 422 wrong
values), so nothing malformed ever reaches a model replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from serve.errors import BadRequest, InvalidInput, UnsupportedMediaType

__all__ = [
    "batch_items", "check_content_type", "only_key", "parse_batch", "parse_json", "parse_single",
    "to_instance",
]


def check_content_type(content_type: str | None) -> None:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"content type {media or '(none)'!r} is not supported; send application/json"
        )


def parse_json(body: bytes) -> Any:
    if not body:
        raise BadRequest("empty body; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson also refuses NaN/Infinity literals and nesting deeper than 1024.
        raise BadRequest(f"body is not valid JSON: {exc}") from None


def to_instance(value: Any, shape: Sequence[int], where: str) -> np.ndarray:
    """One model input as float32 of exactly ``shape``, finite, numeric."""
    if not isinstance(value, list):
        raise InvalidInput(
            f"{where}: expected a nested list of numbers of shape {tuple(shape)}", field=where
        )
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"{where}: ragged nesting; expected shape {tuple(shape)}", field=where
        ) from None
    if raw.dtype.kind not in "iuf" or raw.dtype == np.bool_:
        raise InvalidInput(
            f"{where}: values must be numbers (got {raw.dtype.kind!r} data)", field=where
        )
    if raw.shape != tuple(shape):
        raise InvalidInput(
            f"{where}: expected shape {tuple(shape)}, got {raw.shape}", field=where
        )
    with np.errstate(over="ignore", invalid="ignore"):
        arr = raw.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InvalidInput(
            f"{where}: values must be finite float32 numbers (no NaN, Infinity or overflow)",
            field=where,
        )
    return arr


def only_key(data: Any, key: str) -> Any:
    """The value of a body that must be a JSON object with exactly the key ``key``."""
    if not isinstance(data, dict):
        raise InvalidInput(f"body must be a JSON object with key {key!r}", field=key)
    if key not in data:
        raise InvalidInput(f"missing required key {key!r}", field=key)
    extra = sorted(set(data) - {key})
    if extra:
        raise InvalidInput(f"unknown key(s) {extra}; only {key!r} is accepted", field=extra[0])
    return data[key]


def parse_single(data: Any, shape: Sequence[int]) -> np.ndarray:
    """Body of POST /predict -> a batch of one, shape (1, *shape)."""
    return to_instance(only_key(data, "features"), shape, "features")[None]


def batch_items(
    data: Any, key: str, max_instances: int, *, noun: str = "inputs",
    expected: str = "a list of inputs",
) -> list[Any]:
    """The list under ``key`` of a /predict/batch body: a non-empty list of at most
    ``max_instances`` items (tensors' ``instances``, records' ``records``)."""
    items = only_key(data, key)
    if not isinstance(items, list):
        raise InvalidInput(f"{key}: expected {expected}", field=key)
    if not items:
        raise InvalidInput(f"{key}: the batch is empty", field=key)
    if len(items) > max_instances:
        raise InvalidInput(
            f"{key}: {len(items)} {noun}, the most per request is {max_instances}", field=key
        )
    return items


def parse_batch(data: Any, shape: Sequence[int], max_instances: int) -> np.ndarray:
    """Body of POST /predict/batch -> shape (n, *shape)."""
    instances = batch_items(data, "instances", max_instances)
    return np.stack(
        [to_instance(item, shape, f"instances[{i}]") for i, item in enumerate(instances)]
    )
