"""Wire parsing for tabular models (models/schema.py): pure, no Ray, microseconds.

A tabular model takes named records, not tensors. ``/predict`` takes ``{"record": {...}}``
and ``/predict/batch`` ``{"records": [...]}``; the Open Inference Protocol takes either one
input per field (columns) or one BYTES input of JSON records. Every form ends as the same
``(n, width)`` float64 matrix of the schema's encoding, so the cache key, batching and the
models see one thing whatever the client sent.

Errors are InvalidInput (422) naming the key, record, input or field; the OIP ingress
turns them into its 400 (router/protocol/oip.py), so nothing here imports it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from models.schema import Schema
from router.protocol.request import batch_items, only_key
from serve.errors import InvalidInput

__all__ = [
    "OIP_DATATYPES",
    "RECORDS_INPUT",
    "parse_record_batch",
    "parse_record_single",
    "records_from_oip",
]

RECORDS_INPUT = "records"  # the BYTES input whose elements are JSON records
OIP_DATATYPES: tuple[str, ...] = ("FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES")
# Which datatypes each field type reads; the values are then checked as JSON ones are.
_ACCEPTS: dict[str, tuple[str, ...]] = {
    "float": ("FP32", "FP64", "INT32", "INT64"),
    "int": ("INT32", "INT64", "FP32", "FP64"),
    "bool": ("BOOL",),
    "category": ("BYTES",),
}
_INT_LIMITS = {"INT32": 2**31, "INT64": 2**63}
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_NOT_SUPPORTED = ("binary_data_size", "shared_memory_region")


# ---------------------------------------------------------------- REST bodies


def parse_record_single(data: Any, schema: Schema) -> np.ndarray:
    """Body of POST /predict, ``{"record": {...}}`` -> a batch of one, shape (1, width)."""
    return schema.encode([only_key(data, "record")], where="record", single=True)


def parse_record_batch(data: Any, schema: Schema, max_instances: int) -> np.ndarray:
    """Body of POST /predict/batch, ``{"records": [{...}, ...]}`` -> shape (n, width)."""
    records = batch_items(data, "records", max_instances, noun="records",
                          expected="a list of records (JSON objects)")
    return schema.encode(records, where="records")


# ---------------------------------------------------------------- Open Inference Protocol


def _forms(schema: Schema) -> str:
    return (
        f"send one input per field ({', '.join(schema.names)}) of shape [n], or one BYTES "
        f"input {RECORDS_INPUT!r} of shape [n] whose elements are JSON records"
    )


def _tensor(value: Any, where: str) -> tuple[str, str, list[Any]]:
    """An input's name, datatype and its n elements (shape [n] or [n, 1])."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected a JSON object (an input tensor)", field=where)
    extra = sorted(set(value) - _INPUT_KEYS)
    if extra:
        raise InvalidInput(
            f"{where}: unknown key(s) {extra}; allowed: {sorted(_INPUT_KEYS)}", field=where
        )
    for key in ("name", "shape", "datatype", "data"):
        if key not in value:
            raise InvalidInput(f"{where}: {key} is missing", field=f"{where}.{key}")
    name = value["name"]
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}: name must be a non-empty string", field=f"{where}.name")
    at = f"{where} ({name!r})"
    datatype = value["datatype"]
    if datatype not in OIP_DATATYPES:
        raise InvalidInput(
            f"{at}: datatype {datatype!r} is not read for tabular inputs; use one of "
            f"{list(OIP_DATATYPES)}",
            field=f"{where}.datatype",
        )
    params = value.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidInput(f"{at}: parameters must be a JSON object", field=f"{where}.parameters")
    for key in _NOT_SUPPORTED:
        if params and key in params:
            raise InvalidInput(
                f"{at}: parameters.{key} is not supported; tabular inputs are read from JSON "
                "data only",
                field=f"{where}.parameters",
            )
    shape = value["shape"]
    ok = isinstance(shape, list) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    )
    if not ok or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInput(
            f"{at}: shape must be [n] or [n, 1], one value per record; got {shape!r}",
            field=f"{where}.shape",
        )
    n = shape[0]
    if n < 1:
        raise InvalidInput(f"{at}: the batch is empty (shape {shape})", field=f"{where}.shape")
    data = value["data"]
    if not isinstance(data, list):
        raise InvalidInput(f"{at}: data must be a list of {n} values", field=f"{where}.data")
    if len(shape) == 2 and data and all(isinstance(v, list) for v in data):
        if not all(len(v) == 1 for v in data):
            raise InvalidInput(
                f"{at}: nested data must be [[value], ...] as shape {shape} says",
                field=f"{where}.data",
            )
        data = [v[0] for v in data]
    if len(data) != n:
        raise InvalidInput(
            f"{at}: data holds {len(data)} values, but shape {shape} says {n}",
            field=f"{where}.data",
        )
    return name, datatype, data


def _check_datatype(values: list[Any], datatype: str, at: str, where: str) -> None:
    """The values are what the datatype says (null aside: a missing value, the field's
    default), before the field's own rules check them."""
    if datatype == "BYTES":
        kind, ok = "strings", [isinstance(v, str) for v in values]
    elif datatype == "BOOL":
        kind, ok = "true or false", [isinstance(v, bool) for v in values]
    elif datatype in _INT_LIMITS:
        limit = _INT_LIMITS[datatype]
        kind = f"integers in [-{limit}, {limit - 1}]"
        ok = [
            isinstance(v, int) and not isinstance(v, bool) and -limit <= v < limit
            for v in values
        ]
    else:
        kind = "numbers"
        ok = [isinstance(v, int | float) and not isinstance(v, bool) for v in values]
    for i, (value, good) in enumerate(zip(values, ok, strict=True)):
        if not good and value is not None:
            raise InvalidInput(
                f"{at}: data[{i}]: {datatype} values must be {kind}", field=f"{where}.data"
            )


def _columns(inputs: list[Any], schema: Schema) -> np.ndarray:
    """One input per field: each a column of the records, checked by the field's rules."""
    fields = {f.name: f for f in schema.fields}
    given: dict[str, tuple[str, str, list[Any]]] = {}
    n = -1
    for k, value in enumerate(inputs):
        where = f"inputs[{k}]"
        name, datatype, data = _tensor(value, where)
        at = f"{where} ({name!r})"
        if name not in fields:
            raise InvalidInput(
                f"{at}: unknown input; {_forms(schema)}", field=f"{where}.name"
            )
        if name in given:
            raise InvalidInput(f"{at}: the input is given twice", field=f"{where}.name")
        f = fields[name]
        if datatype not in _ACCEPTS[f.dtype]:
            raise InvalidInput(
                f"{at}: datatype {datatype} does not hold a {f.dtype} field; use "
                f"{' or '.join(_ACCEPTS[f.dtype])}",
                field=f"{where}.datatype",
            )
        if n >= 0 and len(data) != n:
            raise InvalidInput(
                f"{at}: {len(data)} values, but the inputs before it have {n}; every input "
                "holds one value per record",
                field=f"{where}.shape",
            )
        n = len(data)
        _check_datatype(data, datatype, at, where)
        given[name] = (at, where, data)
    missing = [f for f in schema.fields if f.required and f.name not in given]
    if missing:
        names = ", ".join(f"{f.name!r} ({f.dtype})" for f in missing)
        raise InvalidInput(
            f"inputs: no input for the required field(s) {names}; {_forms(schema)}",
            field="inputs",
        )
    out = np.empty((n, schema.width), dtype=np.float64)
    for j, f in enumerate(schema.fields):
        if f.name not in given:
            out[:, j] = f.encode_value(None)  # an optional field left out: its default
            continue
        at, where, data = given[f.name]
        for i, value in enumerate(data):
            try:
                out[i, j] = f.encode_value(value)
            except ValueError as exc:
                raise InvalidInput(f"{at}: data[{i}] {exc}", field=f"{where}.data") from None
    return out


def _records(value: dict[str, Any], schema: Schema) -> np.ndarray:
    """One BYTES input of JSON records: each element the text of one record object."""
    where = "inputs[0]"
    name, _, data = _tensor(value, where)
    records: list[Any] = []
    for i, text in enumerate(data):
        try:
            record = orjson.loads(text) if isinstance(text, str) else None
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            why = "" if name == RECORDS_INPUT else (
                f"; {name!r} is not a field, so it is read as records ({_forms(schema)})"
            )
            raise InvalidInput(
                f"{where} ({name!r}): data[{i}] must be the JSON text of one record "
                f"object{why}",
                field=f"{where}.data",
            )
        records.append(record)
    return schema.encode(records, where=f"{where}.data")


def records_from_oip(inputs: Any, schema: Schema) -> np.ndarray:
    """An infer request's ``inputs`` -> the ``(n, width)`` float64 matrix of its records.

    One input per field (shape [n] or [n, 1], one value per record; optional fields may
    be left out) or a single BYTES input of JSON records, named ``records`` or any name
    that is not a field. The caller limits n (the protocol's 400 and its own limit).
    """
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput(f"inputs: expected a non-empty list; {_forms(schema)}", field="inputs")
    first = inputs[0]
    if (
        len(inputs) == 1
        and isinstance(first, dict)
        and first.get("datatype") == "BYTES"
        and first.get("name") not in schema.names
    ):
        return _records(first, schema)
    return _columns(inputs, schema)
