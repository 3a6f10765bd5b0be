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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DTYPES", "Field", "Schema", "infer_schema"]

DTYPES: tuple[str, ...] = ("float", "int", "bool", "category")


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str
    required: bool = True
    default: Any = None  # for optional fields: the value a missing (or null) field takes
    categories: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Schema:
    fields: tuple[Field, ...]

    @classmethod
    def parse(cls, data: Sequence[Mapping[str, Any]]) -> Schema:
        """A schema from the manifest's ``input_schema`` list; ArtifactError (or InvalidInput
        at registration) naming the field and the problem when it is not valid."""
        raise NotImplementedError

    def to_json(self) -> list[dict[str, Any]]:
        """The manifest's ``input_schema`` list (``parse`` reads it back unchanged)."""
        raise NotImplementedError

    @property
    def width(self) -> int:
        return len(self.fields)

    def encode(self, records: Sequence[Any], where: str = "records") -> np.ndarray:
        """Validate records and encode them as an ``(n, width)`` float64 matrix.

        Raises InvalidInput (422) whose message and ``field`` name the record and the field
        (``records[3].price``) and say what is allowed (the type, the categories, that the
        field is required, that a key is unknown).
        """
        raise NotImplementedError

    def to_frame(self, matrix: np.ndarray) -> Any:
        """The encoded rows as a pandas DataFrame in schema order with the original dtypes."""
        raise NotImplementedError

    def decode(self, row: np.ndarray) -> dict[str, Any]:
        """One encoded row back as a record (for logs and the batch job)."""
        raise NotImplementedError


def infer_schema(frame: Any, *, max_categories: int = 1000) -> Schema:
    """A schema from a reference DataFrame: float, int, bool, and category for object,
    string and categorical columns (their sorted distinct values); every field required."""
    raise NotImplementedError
