"""Tabular inputs: a model's named, typed input fields, held in its manifest.

A record (a JSON object of named features) is validated against the schema and encoded
as one row of a float64 matrix in schema order, so that everything after parsing
(batching, the cache key, the hop to the model replica, OIP tensors) keeps handling one
numeric batch. The encoding is the canonical form: key order, ``1`` versus ``1.0`` and a
missing optional field (its default) give the same row, hence the same cache key.

- ``float``: the number; ``int``: an integral number (``|x| <= 2**53``); ``bool``: 0 or 1;
  ``category``: the value's index in the field's ``categories``.

The backends turn rows back into what the model was trained on: scikit-learn gets a
pandas DataFrame in schema order with the original dtypes and category strings (a
ColumnTransformer with one-hot and scaling works unchanged); torch and Keras get the
encoded matrix (categories as their index).

Pure: numpy, and pandas only inside ``to_frame`` and ``infer_schema``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from serve.errors import ArtifactError, InvalidInput

__all__ = ["DTYPES", "MAX_INT", "NAME_PATTERN", "Field", "Schema", "infer_schema"]

DTYPES: tuple[str, ...] = ("float", "int", "bool", "category")
MAX_INT = 2**53  # the largest integers a float64 holds exactly
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_KEYS = ("name", "dtype", "required", "default", "categories", "description")
_LISTED = 20  # categories (or field names) spelled out in a message before "... more"


def _listing(values: Sequence[str]) -> str:
    """Allowed values for a message, the first 20 and a count when there are more."""
    shown = ", ".join(repr(v) for v in values[:_LISTED])
    more = len(values) - _LISTED
    return f"[{shown}, ... {more} more ({len(values)} in all)]" if more > 0 else f"[{shown}]"


def _show(value: Any) -> str:
    """A client's value as it sent it (JSON), cut short: the message must stay small."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 40 else f"{text[:37]}..."


def _number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


@dataclass(frozen=True)
class Field:
    """One named input; ``encode_value`` is the one place a value's rules are checked, so
    every wire (records, OIP columns) refuses the same values with the same words."""

    name: str
    dtype: str
    required: bool = True
    default: Any = None  # for optional fields: the value a missing (or null) field takes
    categories: tuple[str, ...] = ()
    description: str = ""

    @cached_property
    def _codes(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.categories)}

    @cached_property
    def _default_code(self) -> float:
        return self._code(self.default)

    def encode_value(self, value: Any) -> float:
        """One value's code; a missing one (None) is the default of an optional field.

        Raises ValueError whose text follows the value's path in a message: ``is required
        (float)``, ``must be ...`` (what is allowed), so that every wire says it alike.
        """
        if value is None:
            if self.required:
                raise ValueError(f"is required ({self.dtype})")
            return self._default_code
        return self._code(value)

    def _code(self, value: Any) -> float:
        if self.dtype == "float":
            if _number(value):
                try:
                    x = float(value)
                except OverflowError:
                    x = math.inf
                if math.isfinite(x):
                    return x + 0.0  # -0.0 -> 0.0
            raise ValueError(f"must be a finite number (float), got {_show(value)}")
        if self.dtype == "int":
            if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
                if abs(int(value)) <= MAX_INT:
                    return float(value)
            elif (
                isinstance(value, float | np.floating)
                and math.isfinite(value)
                and float(value).is_integer()
                and abs(float(value)) <= MAX_INT
            ):
                return float(value) + 0.0
            raise ValueError(
                f"must be an integer (int) with |x| <= 2**53, got {_show(value)}"
            )
        if self.dtype == "bool":
            if isinstance(value, bool | np.bool_):
                return 1.0 if value else 0.0
            raise ValueError(f"must be true or false (bool), got {_show(value)}")
        code = self._codes.get(value) if isinstance(value, str) else None
        if code is None:
            raise ValueError(
                f"must be one of the categories {_listing(self.categories)}, got {_show(value)}"
            )
        return float(code)

    def _column(self, codes: np.ndarray, where: str) -> np.ndarray:
        """Codes (float64) back to this field's values: float64, int64, bool or object str."""
        if self.dtype == "float":
            return codes
        integral = np.isfinite(codes) & (codes == np.round(codes))
        if self.dtype == "int":
            if not (integral & (np.abs(codes) <= MAX_INT)).all():
                raise InvalidInput(
                    f"{where} ({self.name}): int codes must be integers of at most 2**53",
                    field=self.name,
                )
            return codes.astype(np.int64)
        if self.dtype == "bool":
            if not ((codes == 0.0) | (codes == 1.0)).all():
                raise InvalidInput(
                    f"{where} ({self.name}): bool codes must be 0 or 1", field=self.name
                )
            return codes == 1.0
        k = len(self.categories)
        if not (integral & (codes >= 0) & (codes < k)).all():
            raise InvalidInput(
                f"{where} ({self.name}): category codes must be indices 0..{k - 1} of "
                f"{_listing(self.categories)}",
                field=self.name,
            )
        return np.asarray(self.categories, dtype=object)[codes.astype(np.intp)]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "required": self.required}
        if not self.required:
            out["default"] = self.default
        if self.dtype == "category":
            out["categories"] = list(self.categories)
        if self.description:
            out["description"] = self.description
        return out


def _parse_field(item: Any, i: int) -> Field:
    """One entry of ``input_schema``; ArtifactError naming it and what to write instead.

    A null ``default`` on a required field and empty ``categories`` on a non-category one
    read as absent: manifests written with every key present stay valid.
    """
    if not isinstance(item, Mapping):
        raise ArtifactError(
            f"input_schema[{i}]: expected an object with name and dtype, got {_show(item)}",
            field=f"input_schema[{i}]",
        )
    name = item.get("name")
    at = f"input_schema[{i}] ({name!r})" if isinstance(name, str) else f"input_schema[{i}]"

    def fail(key: str, what: str) -> ArtifactError:
        return ArtifactError(f"{at}: {what}", field=f"input_schema[{i}].{key}")

    extra = sorted(str(k) for k in set(item) - set(_KEYS))
    if extra:
        raise fail(extra[0], f"unknown key(s) {extra}; the keys are {list(_KEYS)}")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise fail(
            "name",
            "name must be a string of 1 to 64 letters, digits, '_', '.' or '-' that starts "
            f"with a letter or '_', got {_show(name)}",
        )
    dtype = item.get("dtype")
    if dtype not in DTYPES:
        raise fail("dtype", f"dtype must be one of {list(DTYPES)}, got {_show(dtype)}")
    required = item.get("required", True)
    if not isinstance(required, bool):
        raise fail("required", f"required must be true or false, got {_show(required)}")
    description = item.get("description", "")
    if not isinstance(description, str):
        raise fail("description", f"description must be a string, got {_show(description)}")
    raw = item.get("categories")
    categories: tuple[str, ...] = ()
    if dtype == "category":
        if (
            not isinstance(raw, list | tuple)
            or not raw
            or not all(isinstance(c, str) for c in raw)
        ):
            raise fail(
                "categories",
                "a category field needs categories: a non-empty list of strings, "
                f"got {_show(raw)}",
            )
        categories = tuple(raw)
        twice = sorted(c for c, k in Counter(categories).items() if k > 1)
        if twice:
            raise fail("categories", f"categories must be distinct; repeated: {twice}")
    elif raw is not None and raw != [] and raw != ():
        raise fail("categories", f"categories are for category fields only; remove them "
                                 f"or make dtype 'category' (dtype is {dtype!r})")
    field = Field(name, dtype, True, None, categories, description)
    default = item.get("default")
    if required:
        if default is not None:
            raise fail("default", "a required field has no default; remove it, or set "
                                  "required to false")
        return field
    if default is None:
        raise fail("default", f"an optional field needs a default ({dtype}), the value a "
                              "missing field takes")
    try:
        code = field.encode_value(default)
    except ValueError as exc:
        raise fail("default", f"the default {exc}") from None
    value = field._column(np.array([code]), at)[0].item()
    return Field(name, dtype, False, value, categories, description)


@dataclass(frozen=True)
class Schema:
    """A model's input fields in order: the order of the encoded matrix's columns."""

    fields: tuple[Field, ...]

    @classmethod
    def parse(cls, data: Sequence[Mapping[str, Any]]) -> Schema:
        """A schema from the manifest's ``input_schema`` list; ArtifactError (or InvalidInput
        at registration) naming the field and the problem when it is not valid."""
        if not isinstance(data, Sequence) or isinstance(data, str | bytes) or not data:
            raise ArtifactError(
                "input_schema: expected a non-empty list of fields "
                '({"name": ..., "dtype": ...})',
                field="input_schema",
            )
        fields = tuple(_parse_field(item, i) for i, item in enumerate(data))
        seen: dict[str, int] = {}
        for i, f in enumerate(fields):
            if f.name in seen:
                raise ArtifactError(
                    f"input_schema[{i}] ({f.name!r}): the name is already input_schema"
                    f"[{seen[f.name]}]'s; every field needs its own name",
                    field=f"input_schema[{i}].name",
                )
            seen[f.name] = i
        return cls(fields)

    def to_json(self) -> list[dict[str, Any]]:
        """The manifest's ``input_schema`` list (``parse`` reads it back unchanged)."""
        return [f.to_json() for f in self.fields]

    @property
    def width(self) -> int:
        return len(self.fields)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @cached_property
    def _known(self) -> frozenset[str]:
        return frozenset(self.names)

    def encode(
        self, records: Sequence[Any], where: str = "records", *, single: bool = False
    ) -> np.ndarray:
        """Validate records and encode them as an ``(n, width)`` float64 matrix.

        Raises InvalidInput (422) whose message and ``field`` name the record and the field
        (``records[3].price``) and say what is allowed (the type, the categories, that the
        field is required, that a key is unknown). ``single``: ``where`` names the one
        record itself (``record.price``), as a body of one record does.
        """
        if not isinstance(records, Sequence) or isinstance(records, str | bytes | Mapping):
            raise InvalidInput(f"{where}: expected a list of records (JSON objects)", field=where)
        if not records:
            raise InvalidInput(f"{where}: the batch is empty", field=where)
        if single and len(records) != 1:
            raise ValueError(f"single: expected one record, got {len(records)}")
        out = np.empty((len(records), self.width), dtype=np.float64)
        for i, record in enumerate(records):
            path = where if single else f"{where}[{i}]"
            if not isinstance(record, Mapping):
                raise InvalidInput(
                    f"{path}: expected a JSON object of named fields, got {_show(record)}",
                    field=path,
                )
            unknown = sorted(str(k) for k in record if k not in self._known)
            if unknown:
                raise InvalidInput(
                    f"{path}: unknown field(s) {unknown}; the fields are "
                    f"{_listing(self.names)}",
                    field=f"{path}.{unknown[0]}",
                )
            for j, f in enumerate(self.fields):
                try:
                    out[i, j] = f.encode_value(record.get(f.name))
                except ValueError as exc:
                    raise InvalidInput(f"{path}.{f.name} {exc}", field=f"{path}.{f.name}") from None
        return out

    def _codes(self, matrix: np.ndarray, ndim: int, what: str) -> np.ndarray:
        arr = np.asarray(matrix)
        want = (self.width,) if ndim == 1 else ("n", self.width)
        if arr.ndim != ndim or arr.shape[-1] != self.width:
            raise InvalidInput(f"{what}: expected shape {want}, got {arr.shape}", field=what)
        if arr.dtype.kind not in "fiu":
            raise InvalidInput(f"{what}: expected numbers, got {arr.dtype} data", field=what)
        return arr.astype(np.float64, copy=False)

    def to_frame(self, matrix: np.ndarray) -> Any:
        """The encoded rows as a pandas DataFrame in schema order with the original dtypes."""
        import pandas as pd

        codes = self._codes(matrix, 2, "matrix")
        return pd.DataFrame(
            {
                f.name: pd.Series(
                    f._column(codes[:, j], f"matrix column {j}"),
                    dtype=object if f.dtype == "category" else None,
                )
                for j, f in enumerate(self.fields)
            },
            columns=list(self.names),
        )

    def decode(self, row: np.ndarray) -> dict[str, Any]:
        """One encoded row back as a record (for logs and the batch job)."""
        codes = self._codes(row, 1, "row")
        out: dict[str, Any] = {}
        for j, f in enumerate(self.fields):
            value = f._column(codes[j : j + 1], f"row[{j}]")[0]
            out[f.name] = value.item() if isinstance(value, np.generic) else value
        return out


def infer_schema(frame: Any, *, max_categories: int = 1000) -> Schema:
    """A schema from a reference DataFrame: float, int, bool, and category for object,
    string and categorical columns (their sorted distinct values); every field required."""
    from pandas.api import types

    fields: list[Field] = []
    for k, name in enumerate(frame.columns):
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ArtifactError(
                f"column {name!r}: a field name must be 1 to 64 letters, digits, '_', '.' or "
                "'-' that starts with a letter or '_'; rename the column",
                field=str(name),
            )
        if list(frame.columns).count(name) > 1:
            raise ArtifactError(f"column {name!r} appears twice; rename one", field=name)
        column = frame.iloc[:, k]
        dtype = column.dtype
        if isinstance(dtype, types.CategoricalDtype) or types.is_object_dtype(dtype) or (
            types.is_string_dtype(dtype)
        ):
            values = column.dropna().unique()
            odd = sorted({type(v).__name__ for v in values if not isinstance(v, str)})
            if odd:
                raise ArtifactError(
                    f"column {name!r} ({dtype}) holds non-string values ({', '.join(odd)}); "
                    "a category column takes strings only",
                    field=name,
                )
            if not len(values):
                raise ArtifactError(
                    f"column {name!r} has no values to take its categories from", field=name
                )
            if len(values) > max_categories:
                raise ArtifactError(
                    f"column {name!r} has {len(values)} distinct values, more than "
                    f"max_categories={max_categories}; drop it or raise the limit",
                    field=name,
                )
            fields.append(Field(name, "category", categories=tuple(sorted(map(str, values)))))
        elif types.is_bool_dtype(dtype):
            fields.append(Field(name, "bool"))
        elif types.is_float_dtype(dtype):
            fields.append(Field(name, "float"))
        elif types.is_integer_dtype(dtype):
            fields.append(Field(name, "int"))
        else:
            raise ArtifactError(
                f"column {name!r} has dtype {dtype}, which no field type holds; use float, "
                "int, bool or a string/categorical column",
                field=name,
            )
    if not fields:
        raise ArtifactError("the frame has no columns to take a schema from", field="frame")
    return Schema(tuple(fields))
