"""router/protocol/tabular.py: REST record bodies and the two OIP forms, all ending as the
schema's float64 matrix, and every refusal naming the key, input or field."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from models.schema import Schema
from router.protocol.tabular import (
    OIP_DATATYPES,
    parse_record_batch,
    parse_record_single,
    records_from_oip,
)
from serve.errors import InvalidInput, to_http

SCHEMA = Schema.parse([
    {"name": "store", "dtype": "category", "categories": ["north", "south", "east"]},
    {"name": "units", "dtype": "int"},
    {"name": "promo", "dtype": "bool"},
    {"name": "price", "dtype": "float"},
    {"name": "distance", "dtype": "float", "required": False, "default": 5.0},
])
RECORDS: list[dict[str, Any]] = [
    {"store": "south", "units": 3, "promo": True, "price": 9.5},
    {"store": "east", "units": 0, "promo": False, "price": 12.25, "distance": 0.5},
    {"store": "north", "units": 11, "promo": False, "price": 7.0},
]
EXPECTED = SCHEMA.encode(RECORDS)
DATATYPE = {"store": "BYTES", "units": "INT64", "promo": "BOOL", "price": "FP64",
            "distance": "FP32"}


def refusal(fn: Any, *args: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        fn(*args)
    assert to_http(info.value)[0] == 422
    return info.value


def column(name: str, data: list[Any], datatype: str | None = None,
           shape: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype or DATATYPE[name],
            "shape": [len(data)] if shape is None else shape, "data": data, **extra}


def columns(records: list[dict[str, Any]] = RECORDS) -> list[dict[str, Any]]:
    return [column(name, [r.get(name) for r in records]) for name in SCHEMA.names]


def records_input(records: list[Any], name: str = "records") -> list[dict[str, Any]]:
    data = [r if isinstance(r, str) else orjson.dumps(r).decode() for r in records]
    return [{"name": name, "datatype": "BYTES", "shape": [len(data)], "data": data}]


# ---------------------------------------------------------------- REST


def test_single_record() -> None:
    x = parse_record_single({"record": RECORDS[1]}, SCHEMA)
    assert x.shape == (1, 5) and x.dtype == np.float64
    assert x[0].tobytes() == EXPECTED[1].tobytes()


def test_batch_of_records() -> None:
    x = parse_record_batch({"records": RECORDS}, SCHEMA, 8)
    assert x.shape == (3, 5) and x.tobytes() == EXPECTED.tobytes()


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        ([RECORDS[0]], "record", "body must be a JSON object with key 'record'"),
        ({"records": RECORDS[0]}, "record", "missing required key 'record'"),
        ({"record": RECORDS[0], "x": 1}, "x", "unknown key(s) ['x']; only 'record'"),
        ({"record": [1]}, "record", "record: expected a JSON object"),
        ({"record": {**RECORDS[0], "price": None}}, "record.price",
         "record.price is required (float)"),
        ({"record": {**RECORDS[0], "units": 2.5}}, "record.units", "must be an integer (int)"),
        ({"record": {**RECORDS[0], "colour": "red"}}, "record.colour", "unknown field(s)"),
    ],
)
def test_single_refusals(body: Any, field: str, needle: str) -> None:
    err = refusal(parse_record_single, body, SCHEMA)
    assert err.field == field and needle in err.message, err.message


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        ({"record": RECORDS[0]}, "records", "missing required key 'records'"),
        ({"records": RECORDS, "id": 1}, "id", "unknown key(s) ['id']"),
        ({"records": RECORDS[0]}, "records", "expected a list of records"),
        ({"records": []}, "records", "the batch is empty"),
        ({"records": RECORDS * 3}, "records", "9 records, the most per request is 8"),
        ({"records": [RECORDS[0], {**RECORDS[1], "store": "west"}]}, "records[1].store",
         "['north', 'south', 'east']"),
        ({"records": [RECORDS[0], "x"]}, "records[1]", "expected a JSON object"),
    ],
)
def test_batch_refusals(body: Any, field: str, needle: str) -> None:
    err = refusal(parse_record_batch, body, SCHEMA, 8)
    assert err.field == field and needle in err.message, err.message


# ---------------------------------------------------------------- OIP: one input per field


def test_one_input_per_field() -> None:
    assert records_from_oip(columns(), SCHEMA).tobytes() == EXPECTED.tobytes()


def test_inputs_in_any_order_and_shape_n_by_1() -> None:
    inputs = columns()[::-1]
    inputs[0] = column("distance", [[None], [0.5], [None]], shape=[3, 1])
    inputs[1] = column("price", [9.5, 12.25, 7.0], shape=[3, 1])
    assert records_from_oip(inputs, SCHEMA).tobytes() == EXPECTED.tobytes()


def test_an_optional_field_may_be_left_out() -> None:
    inputs = [c for c in columns() if c["name"] != "distance"]
    out = records_from_oip(inputs, SCHEMA)
    assert out[:, 4].tolist() == [5.0, 5.0, 5.0]
    assert out[:, :4].tobytes() == EXPECTED[:, :4].tobytes()


def test_numeric_datatypes_cross_over() -> None:
    inputs = columns()
    inputs[1] = column("units", [3.0, 0.0, 11.0], "FP32")
    inputs[3] = column("price", [9.5, 12.25, 7], "FP32")
    assert records_from_oip(inputs, SCHEMA).tobytes() == EXPECTED.tobytes()
    inputs[3] = column("price", [9, 12, 7], "INT32")
    assert records_from_oip(inputs, SCHEMA)[:, 3].tolist() == [9.0, 12.0, 7.0]


def test_a_field_named_records_stays_a_column() -> None:
    schema = Schema.parse([{"name": "records", "dtype": "category", "categories": ["a", "b"]}])
    inputs = [{"name": "records", "datatype": "BYTES", "shape": [2], "data": ["b", "a"]}]
    assert records_from_oip(inputs, schema).tolist() == [[1.0], [0.0]]


def _with(k: int, **changes: Any) -> list[dict[str, Any]]:
    inputs = columns()
    inputs[k] = {**inputs[k], **changes}
    return inputs


@pytest.mark.parametrize(
    ("inputs", "field", "needles"),
    [
        (None, "inputs", ["non-empty list", "one input per field", "'records'"]),
        ([], "inputs", ["non-empty list"]),
        ([*columns(), column("colour", ["red"] * 3, "BYTES")], "inputs[5].name",
         ["inputs[5] ('colour'): unknown input", "store, units, promo, price, distance"]),
        ([*columns(), columns()[1]], "inputs[5].name", ["('units')", "given twice"]),
        (columns()[1:], "inputs", ["required field(s) 'store' (category)"]),
        ([columns()[0]], "inputs", ["'units' (int), 'promo' (bool), 'price' (float)"]),
        (_with(1, extra=1), "inputs[1]", ["unknown key(s) ['extra']"]),
        (_with(1, name=""), "inputs[1].name", ["non-empty string"]),
        ([{k: v for k, v in columns()[1].items() if k != "data"}], "inputs[0].data",
         ["data is missing"]),
        (_with(1, datatype="UINT8"), "inputs[1].datatype",
         ["('units')", "'UINT8' is not read", "'FP32', 'FP64', 'INT32', 'INT64', 'BOOL'"]),
        (_with(2, datatype="INT64"), "inputs[2].datatype",
         ["('promo')", "INT64 does not hold a bool field; use BOOL"]),
        (_with(0, datatype="FP32"), "inputs[0].datatype", ["use BYTES"]),
        (_with(3, datatype="BYTES"), "inputs[3].datatype", ["use FP32 or FP64"]),
        (_with(1, shape=[3, 2]), "inputs[1].shape", ["[n] or [n, 1]"]),
        (_with(1, shape=[1, 3]), "inputs[1].shape", ["[n] or [n, 1]"]),
        (_with(1, shape=[3.0]), "inputs[1].shape", ["[n] or [n, 1]"]),
        (_with(1, shape=[0], data=[]), "inputs[1].shape", ["the batch is empty"]),
        (_with(1, shape=[4]), "inputs[1].data", ["data holds 3 values, but shape [4] says 4"]),
        (_with(1, data="123"), "inputs[1].data", ["data must be a list"]),
        (_with(1, shape=[3, 1], data=[[1, 2], [3], [4]]), "inputs[1].data",
         ["[[value], ...]"]),
        (_with(4, shape=[2], data=[1.0, 2.0]), "inputs[4].shape",
         ["('distance')", "2 values, but the inputs before it have 3"]),
        (_with(1, parameters={"binary_data_size": 24}), "inputs[1].parameters",
         ["binary_data_size is not supported"]),
        (_with(1, parameters=[1]), "inputs[1].parameters", ["must be a JSON object"]),
        (_with(1, data=[3, 0.5, 11]), "inputs[1].data",
         ["('units')", "data[1]: INT64 values must be integers"]),
        (_with(1, datatype="INT32", data=[3, 2**31, 11]), "inputs[1].data",
         ["data[1]: INT32 values must be integers in [-2147483648, 2147483647]"]),
        (_with(1, data=[3, True, 11]), "inputs[1].data", ["INT64 values must be integers"]),
        (_with(1, data=[3, 2**53 + 1, 11]), "inputs[1].data",
         ["('units'): data[1] must be an integer (int) with |x| <= 2**53"]),
        (_with(1, datatype="FP64", data=[3, 2.5, 11]), "inputs[1].data",
         ["data[1] must be an integer (int)"]),
        (_with(2, data=[True, 1, False]), "inputs[2].data", ["BOOL values must be true or false"]),
        (_with(3, data=[1.0, "2", 3.0]), "inputs[3].data", ["FP64 values must be numbers"]),
        (_with(0, data=["south", 1, "east"]), "inputs[0].data", ["BYTES values must be strings"]),
        (_with(0, data=["south", "west", "east"]), "inputs[0].data",
         ["('store'): data[1] must be one of the categories ['north', 'south', 'east']"]),
        (_with(3, data=[1.0, None, 3.0]), "inputs[3].data",
         ["('price'): data[1] is required (float)"]),
        (["x"], "inputs[0]", ["expected a JSON object"]),
    ],
)
def test_column_refusals(inputs: Any, field: str, needles: list[str]) -> None:
    err = refusal(records_from_oip, inputs, SCHEMA)
    assert err.field == field, (err.field, err.message)
    for needle in needles:
        assert needle in err.message, err.message


# ---------------------------------------------------------------- OIP: a BYTES input of records


def test_bytes_input_of_json_records() -> None:
    assert records_from_oip(records_input(RECORDS), SCHEMA).tobytes() == EXPECTED.tobytes()


def test_records_under_any_name_that_is_not_a_field() -> None:
    inputs = records_input(RECORDS, name="input")
    assert records_from_oip(inputs, SCHEMA).tobytes() == EXPECTED.tobytes()


def test_records_in_shape_n_by_1() -> None:
    data = [[orjson.dumps(r).decode()] for r in RECORDS]
    inputs = [{"name": "records", "datatype": "BYTES", "shape": [3, 1], "data": data}]
    assert records_from_oip(inputs, SCHEMA).tobytes() == EXPECTED.tobytes()


def test_the_same_records_give_the_same_rows_on_every_wire() -> None:
    shuffled = [{k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                 for k, v in reversed(list(r.items()))} for r in RECORDS]
    rows = [
        parse_record_batch({"records": shuffled}, SCHEMA, 8),
        np.concatenate([parse_record_single({"record": r}, SCHEMA) for r in RECORDS]),
        records_from_oip(columns(), SCHEMA),
        records_from_oip(records_input(shuffled), SCHEMA),
    ]
    assert all(r.tobytes() == EXPECTED.tobytes() for r in rows)


@pytest.mark.parametrize(
    ("inputs", "field", "needles"),
    [
        (records_input([RECORDS[0], {**RECORDS[1], "units": "3"}]), "inputs[0].data[1].units",
         ["inputs[0].data[1].units must be an integer (int)"]),
        (records_input([{**RECORDS[0], "age": 3}]), "inputs[0].data[0].age",
         ["unknown field(s) ['age']"]),
        (records_input([{"store": "south"}]), "inputs[0].data[0].units",
         ["inputs[0].data[0].units is required (int)"]),
        (records_input([RECORDS[0], "{not json"]), "inputs[0].data",
         ["('records'): data[1] must be the JSON text of one record object"]),
        (records_input([RECORDS[0], "[1, 2]"]), "inputs[0].data", ["one record object"]),
        (records_input(["south"], name="shop"), "inputs[0].data",
         ["'shop' is not a field, so it is read as records", "one input per field"]),
        ([{**records_input(RECORDS)[0], "shape": [2]}], "inputs[0].data",
         ["data holds 3 values"]),
        ([{**records_input(RECORDS)[0], "data": [1, 2, 3]}], "inputs[0].data",
         ["JSON text of one record"]),
    ],
)
def test_records_refusals(inputs: Any, field: str, needles: list[str]) -> None:
    err = refusal(records_from_oip, inputs, SCHEMA)
    assert err.field == field, (err.field, err.message)
    for needle in needles:
        assert needle in err.message, err.message


def test_the_datatypes_read() -> None:
    assert OIP_DATATYPES == ("FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES")
