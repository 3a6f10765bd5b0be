"""models/schema.py: parsing the manifest's input_schema, encoding records canonically,
and handing scikit-learn back the frame it was trained on."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models.schema import MAX_INT, Field, Schema, infer_schema
from serve.errors import ArtifactError, InvalidInput, to_http

SPEC: list[dict[str, Any]] = [
    {"name": "store", "dtype": "category", "categories": ["north", "south", "east"]},
    {"name": "units", "dtype": "int"},
    {"name": "promo", "dtype": "bool"},
    {"name": "price", "dtype": "float", "description": "shelf price, EUR"},
    {"name": "distance", "dtype": "float", "required": False, "default": 5.0},
    {"name": "size", "dtype": "int", "required": False, "default": 2},
]
SCHEMA = Schema.parse(SPEC)
GOOD: dict[str, Any] = {"store": "south", "units": 3, "promo": True, "price": 9.5}


def rec(**changes: Any) -> dict[str, Any]:
    out = {**GOOD, **changes}
    return {k: v for k, v in out.items() if v is not ...}


def refused(record: Any, where: str = "records", **kwargs: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        SCHEMA.encode([GOOD, record], where, **kwargs)
    assert to_http(info.value)[0] == 422
    return info.value


# ---------------------------------------------------------------- parse / to_json


def test_parse_reads_fields_in_order() -> None:
    assert SCHEMA.width == 6
    assert SCHEMA.names == ("store", "units", "promo", "price", "distance", "size")
    assert SCHEMA.fields[0] == Field("store", "category", categories=("north", "south", "east"))
    assert SCHEMA.fields[3].description == "shelf price, EUR"
    assert SCHEMA.fields[4] == Field("distance", "float", required=False, default=5.0)


def test_to_json_round_trips() -> None:
    data = SCHEMA.to_json()
    assert Schema.parse(data) == SCHEMA
    assert Schema.parse(data).to_json() == data
    assert data[0] == {"name": "store", "dtype": "category", "required": True,
                       "categories": ["north", "south", "east"]}
    assert data[4] == {"name": "distance", "dtype": "float", "required": False, "default": 5.0}
    assert "default" not in data[1] and "categories" not in data[1]
    assert data[3]["description"] == "shelf price, EUR"


def test_defaults_are_stored_canonical() -> None:
    s = Schema.parse([
        {"name": "a", "dtype": "float", "required": False, "default": 1},
        {"name": "b", "dtype": "int", "required": False, "default": 4.0},
        {"name": "c", "dtype": "float", "required": False, "default": -0.0},
    ])
    assert [f.default for f in s.fields] == [1.0, 4, 0.0]
    assert isinstance(s.fields[0].default, float) and isinstance(s.fields[1].default, int)
    assert math.copysign(1.0, s.fields[2].default) == 1.0


def test_parse_reads_manifests_that_write_every_key() -> None:
    """A null default on a required field and [] categories on a numeric one are absent."""
    s = Schema.parse([
        {"name": "x", "dtype": "float", "required": True, "default": None, "categories": []},
        {"name": "y", "dtype": "category", "required": True, "default": None,
         "categories": ["a"]},
    ])
    assert s.fields == (Field("x", "float"), Field("y", "category", categories=("a",)))


def test_the_sales_manifest_parses_and_encodes_as_its_trainer_does() -> None:
    from models.sales.data import INPUT_SCHEMA, encode_frame, frame, records

    s = Schema.parse(INPUT_SCHEMA)
    df, _ = frame(50, seed=3)
    assert np.array_equal(s.encode(records(50, seed=3)), encode_frame(df))


@pytest.mark.parametrize(
    ("data", "field", "needles"),
    [
        ([], "input_schema", ["non-empty list"]),
        ("abc", "input_schema", ["non-empty list"]),
        ([3], "input_schema[0]", ["expected an object"]),
        ([{"name": "a", "dtype": "float", "kind": 1}], "input_schema[0].kind",
         ["input_schema[0] ('a')", "unknown key(s) ['kind']", "'description'"]),
        ([{"dtype": "float"}], "input_schema[0].name", ["name must be", "got null"]),
        ([{"name": "", "dtype": "float"}], "input_schema[0].name", ["1 to 64"]),
        ([{"name": "9a", "dtype": "float"}], "input_schema[0].name", ["starts with a letter"]),
        ([{"name": "a b", "dtype": "float"}], "input_schema[0].name", ["letters, digits"]),
        ([{"name": "a" * 65, "dtype": "float"}], "input_schema[0].name", ["1 to 64"]),
        ([{"name": "a\n", "dtype": "float"}], "input_schema[0].name", ["name must be"]),
        ([{"name": "a", "dtype": "float"}, {"name": "b", "dtype": "str"}],
         "input_schema[1].dtype", ["input_schema[1] ('b')", "'float', 'int', 'bool', 'category'"]),
        ([{"name": "a", "dtype": "float"}, {"name": "a", "dtype": "int"}],
         "input_schema[1].name", ["input_schema[1] ('a')", "input_schema[0]", "its own name"]),
        ([{"name": "a", "dtype": "float", "required": "yes"}], "input_schema[0].required",
         ["true or false"]),
        ([{"name": "a", "dtype": "float", "description": 3}], "input_schema[0].description",
         ["must be a string"]),
        ([{"name": "c", "dtype": "category"}], "input_schema[0].categories",
         ["('c')", "needs categories", "non-empty list of strings"]),
        ([{"name": "c", "dtype": "category", "categories": []}], "input_schema[0].categories",
         ["needs categories"]),
        ([{"name": "c", "dtype": "category", "categories": ["a", 1]}],
         "input_schema[0].categories", ["list of strings"]),
        ([{"name": "c", "dtype": "category", "categories": ["a", "b", "a"]}],
         "input_schema[0].categories", ["distinct", "['a']"]),
        ([{"name": "x", "dtype": "int", "categories": ["a"]}], "input_schema[0].categories",
         ["('x')", "category fields only", "remove them"]),
        ([{"name": "x", "dtype": "int", "default": 3}], "input_schema[0].default",
         ["('x')", "required field has no default", "required to false"]),
        ([{"name": "x", "dtype": "int", "required": False}], "input_schema[0].default",
         ["optional field needs a default (int)"]),
        ([{"name": "x", "dtype": "int", "required": False, "default": 2.5}],
         "input_schema[0].default", ["('x')", "the default must be an integer (int)"]),
        ([{"name": "x", "dtype": "bool", "required": False, "default": 1}],
         "input_schema[0].default", ["true or false"]),
        ([{"name": "x", "dtype": "category", "categories": ["a"], "required": False,
           "default": "b"}], "input_schema[0].default", ["one of the categories ['a']"]),
    ],
)
def test_parse_errors_name_the_field_and_say_what_to_do(
    data: Any, field: str, needles: list[str]
) -> None:
    with pytest.raises(ArtifactError) as info:
        Schema.parse(data)
    assert info.value.field == field
    for needle in needles:
        assert needle in info.value.message, info.value.message


def test_names_may_hold_dots_and_dashes() -> None:
    s = Schema.parse([{"name": "_a.b-c9", "dtype": "float"}, {"name": "a" * 64, "dtype": "int"}])
    assert s.names == ("_a.b-c9", "a" * 64)


# ---------------------------------------------------------------- encode


def test_encode_gives_float64_rows_in_schema_order() -> None:
    m = SCHEMA.encode([GOOD, rec(store="east", units=-2, promo=False, price=0, distance=1.5,
                                 size=7)])
    assert m.dtype == np.float64 and m.shape == (2, 6) and m.flags.c_contiguous
    assert m.tolist() == [[1.0, 3.0, 1.0, 9.5, 5.0, 2.0], [2.0, -2.0, 0.0, 0.0, 1.5, 7.0]]


def test_key_order_and_int_versus_float_do_not_change_the_row() -> None:
    s = Schema.parse([{"name": "a", "dtype": "float"}, {"name": "b", "dtype": "int"}])
    one = s.encode([{"a": 1, "b": 2}])
    two = s.encode([{"b": 2.0, "a": 1.0}])
    assert one[0].tobytes() == two[0].tobytes()


def test_a_missing_optional_field_is_its_default() -> None:
    left_out = SCHEMA.encode([GOOD])
    nulled = SCHEMA.encode([rec(distance=None, size=None)])
    given = SCHEMA.encode([rec(distance=5, size=2.0)])
    assert left_out[0].tobytes() == nulled[0].tobytes() == given[0].tobytes()
    assert SCHEMA.encode([rec(distance=0.5)])[0, 4] == 0.5


def test_negative_zero_is_zero() -> None:
    m = SCHEMA.encode([rec(price=-0.0, units=-0.0), rec(price=0, units=0)])
    assert m[0].tobytes() == m[1].tobytes()
    assert math.copysign(1.0, m[0, 3]) == 1.0 and math.copysign(1.0, m[0, 1]) == 1.0


def test_int_edge_cases() -> None:
    assert SCHEMA.encode([rec(units=MAX_INT)])[0, 1] == 2.0**53
    assert SCHEMA.encode([rec(units=-MAX_INT)])[0, 1] == -(2.0**53)
    assert SCHEMA.encode([rec(units=3.0)])[0, 1] == 3.0
    assert SCHEMA.encode([rec(units=np.int64(4))])[0, 1] == 4.0
    for bad in (3.5, MAX_INT + 1, -MAX_INT - 1, 2.0**60, True, False, "3", [3]):
        err = refused(rec(units=bad))
        assert err.field == "records[1].units"
        assert "records[1].units must be an integer (int)" in err.message
        assert "2**53" in err.message


def test_float_rules() -> None:
    assert SCHEMA.encode([rec(price=2**60)])[0, 3] == 2.0**60
    assert SCHEMA.encode([rec(price=np.float32(0.5))])[0, 3] == 0.5
    for bad in (math.nan, math.inf, -math.inf, 10**400, True, "9.5", {"v": 1}):
        err = refused(rec(price=bad))
        assert err.field == "records[1].price"
        assert "records[1].price must be a finite number (float)" in err.message


def test_bool_is_only_true_or_false() -> None:
    assert SCHEMA.encode([rec(promo=False), rec(promo=np.bool_(True))])[:, 2].tolist() == [0, 1]
    for bad in (0, 1, 1.0, "true"):
        err = refused(rec(promo=bad))
        assert err.field == "records[1].promo"
        assert "must be true or false (bool)" in err.message


def test_category_lists_what_is_allowed() -> None:
    err = refused(rec(store="west"))
    assert err.field == "records[1].store"
    assert "['north', 'south', 'east']" in err.message and 'got "west"' in err.message
    for bad in (1, True, ["south"]):
        assert refused(rec(store=bad)).field == "records[1].store"


def test_many_categories_are_cut_to_twenty_with_a_count() -> None:
    cats = [f"c{i:02d}" for i in range(30)]
    s = Schema.parse([{"name": "c", "dtype": "category", "categories": cats}])
    assert s.encode([{"c": "c29"}]).tolist() == [[29.0]]
    with pytest.raises(InvalidInput) as info:
        s.encode([{"c": "zz"}])
    msg = info.value.message
    assert "'c19'" in msg and "'c20'" not in msg and "10 more (30 in all)" in msg


def test_required_fields_missing_or_null() -> None:
    for record in (rec(price=...), rec(price=None)):
        err = refused(record)
        assert err.message == "records[1].price is required (float)"
        assert err.field == "records[1].price"
    assert refused(rec(store=None)).message == "records[1].store is required (category)"


def test_unknown_keys_are_named_and_the_fields_listed() -> None:
    err = refused(rec(colour="red", age=3))
    assert err.field == "records[1].age"
    assert "unknown field(s) ['age', 'colour']" in err.message
    assert "'store', 'units', 'promo', 'price', 'distance', 'size'" in err.message


def test_a_record_that_is_not_an_object() -> None:
    err = refused([1, 2])
    assert err.field == "records[1]" and "JSON object" in err.message


def test_single_names_the_record_without_an_index() -> None:
    with pytest.raises(InvalidInput) as info:
        SCHEMA.encode([rec(price="x")], "record", single=True)
    assert info.value.field == "record.price"
    assert info.value.message.startswith("record.price must be a finite number")
    with pytest.raises(InvalidInput) as info:
        SCHEMA.encode([rec(x=1)], "record", single=True)
    assert info.value.field == "record.x"
    with pytest.raises(ValueError):
        SCHEMA.encode([GOOD, GOOD], "record", single=True)


def test_where_prefixes_the_path() -> None:
    with pytest.raises(InvalidInput) as info:
        SCHEMA.encode([rec(units=0.5)], "inputs[0].data")
    assert info.value.field == "inputs[0].data[0].units"


@pytest.mark.parametrize("records", [[], {}, "abc", {"store": "north"}])
def test_empty_or_not_a_list(records: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        SCHEMA.encode(records)
    assert info.value.field == "records"


def test_the_error_value_is_cut_short() -> None:
    err = refused(rec(store="w" * 500))
    assert len(err.message) < 200 and "..." in err.message


# ---------------------------------------------------------------- to_frame / decode


def test_to_frame_dtypes_and_values() -> None:
    m = SCHEMA.encode([GOOD, rec(store="east", units=-2, promo=False, price=1.25)])
    for matrix in (m, m.astype(np.float32)):
        df = SCHEMA.to_frame(matrix)
        assert list(df.columns) == list(SCHEMA.names)
        assert [str(t) for t in df.dtypes] == ["object", "int64", "bool", "float64",
                                              "float64", "int64"]
        assert df["store"].tolist() == ["south", "east"]
        assert df["units"].tolist() == [3, -2] and df["promo"].tolist() == [True, False]
        assert df["price"].tolist() == [9.5, 1.25] and df["distance"].tolist() == [5.0, 5.0]
        assert all(type(v) is str for v in df["store"])


@pytest.mark.parametrize(
    ("matrix", "needle"),
    [
        (np.zeros((2, 5)), "expected shape ('n', 6), got (2, 5)"),
        (np.zeros(6), "got (6,)"),
        (np.zeros((1, 2, 6)), "got (1, 2, 6)"),
        (np.array([[3.0, 1, 1, 1, 1, 1]]), "category codes must be indices 0..2"),
        (np.array([[-1.0, 1, 1, 1, 1, 1]]), "category codes"),
        (np.array([[0.5, 1, 1, 1, 1, 1]]), "category codes"),
        (np.array([[0.0, 1.5, 1, 1, 1, 1]]), "int codes"),
        (np.array([[0.0, 1, 2, 1, 1, 1]]), "bool codes must be 0 or 1"),
        (np.array([["a"] * 6]), "expected numbers"),
    ],
)
def test_to_frame_refuses_what_encode_cannot_make(matrix: np.ndarray, needle: str) -> None:
    with pytest.raises(InvalidInput) as info:
        SCHEMA.to_frame(matrix)
    assert needle in info.value.message


def test_decode_gives_python_values() -> None:
    record = rec(store="east", units=7.0, distance=0.25)
    out = SCHEMA.decode(SCHEMA.encode([record])[0])
    assert out == {"store": "east", "units": 7, "promo": True, "price": 9.5,
                   "distance": 0.25, "size": 2}
    assert [type(out[k]) for k in SCHEMA.names] == [str, int, bool, float, float, int]
    with pytest.raises(InvalidInput):
        SCHEMA.decode(np.zeros((1, 6)))
    with pytest.raises(InvalidInput, match="category codes"):
        SCHEMA.decode(np.array([9.0, 0, 0, 0, 0, 0]))


# ---------------------------------------------------------------- infer_schema


def test_infer_schema_from_a_frame() -> None:
    df = pd.DataFrame({
        "f": np.array([1.5, 2.0], dtype=np.float32),
        "i": np.array([1, 2], dtype=np.int32),
        "u": np.array([1, 2], dtype=np.uint8),
        "b": [True, False],
        "o": pd.Series(["y", "x"], dtype=object),
        "s": pd.Series(["b", None], dtype="string"),
        "c": pd.Categorical(["q", "p"], categories=["q", "p", "unused"]),
    })
    s = infer_schema(df)
    assert s.names == tuple(df.columns)
    assert [f.dtype for f in s.fields] == ["float", "int", "int", "bool", "category",
                                          "category", "category"]
    assert all(f.required for f in s.fields)
    assert s.fields[4].categories == ("x", "y")
    assert s.fields[5].categories == ("b",)
    assert s.fields[6].categories == ("p", "q")  # the values seen, as one-hot would learn
    assert Schema.parse(s.to_json()) == s


@pytest.mark.parametrize(
    ("frame", "needles"),
    [
        (pd.DataFrame({"when": pd.to_datetime(["2024-01-01"])}), ["'when'", "datetime64"]),
        (pd.DataFrame({"z": np.array([1j])}), ["'z'", "complex"]),
        (pd.DataFrame({"o": pd.Series(["a", 3], dtype=object)}), ["'o'", "non-string", "int"]),
        (pd.DataFrame({"o": pd.Series([None, None], dtype=object)}), ["'o'", "no values"]),
        (pd.DataFrame({"bad name": [1.0]}), ["'bad name'", "rename"]),
        (pd.DataFrame({3: [1.0]}), ["3", "rename"]),
        (pd.DataFrame([[1.0, 2.0]], columns=["a", "a"]), ["'a'", "twice"]),
        (pd.DataFrame(), ["no columns"]),
    ],
)
def test_infer_schema_refusals_name_the_column(frame: Any, needles: list[str]) -> None:
    with pytest.raises(ArtifactError) as info:
        infer_schema(frame)
    for needle in needles:
        assert needle in info.value.message, info.value.message


def test_infer_schema_limits_categories() -> None:
    df = pd.DataFrame({"id": [f"u{i}" for i in range(11)]})
    assert len(infer_schema(df).fields[0].categories) == 11
    with pytest.raises(ArtifactError, match=r"'id' has 11 distinct values.*max_categories=10"):
        infer_schema(df, max_categories=10)


# ---------------------------------------------------------------- scikit-learn


def test_a_sklearn_pipeline_predicts_the_same_on_the_schema_frame() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    n = 200
    stores = np.array(["north", "south", "east"])
    records = [
        {
            "store": str(stores[rng.integers(3)]),
            "units": int(rng.integers(0, 20)),
            "promo": bool(rng.random() < 0.3),
            "price": float(np.round(rng.uniform(5, 15), 2)),
        }
        for _ in range(n)
    ]
    train = pd.DataFrame.from_records(records)
    y = (train["price"] * 2 + train["units"] + train["promo"] * 3
         + train["store"].map({"north": 0, "south": 5, "east": -5}) + rng.normal(size=n))
    model = Pipeline([
        ("prep", ColumnTransformer([
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["store"]),
            ("num", StandardScaler(), ["units", "promo", "price"]),
        ])),
        ("ridge", Ridge(alpha=1.0)),
    ]).fit(train, y)

    schema = infer_schema(train)
    assert [f.dtype for f in schema.fields] == ["category", "int", "bool", "float"]
    assert schema.fields[0].categories == ("east", "north", "south")
    assert Schema.parse(schema.to_json()) == schema

    batch = records[:50]
    direct = model.predict(pd.DataFrame.from_records(batch))
    frame = schema.to_frame(schema.encode(batch))
    assert np.array_equal(model.predict(frame), direct)
    assert np.array_equal(model.predict(schema.to_frame(schema.encode(batch)[:1])), direct[:1])
    assert [schema.decode(row) for row in schema.encode(batch)] == batch
