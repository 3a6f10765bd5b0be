"""to_outputs by kind (models/outputs.py), the input check's dtype and shape, the fast
paths' comparison by kind and the tabular probe rows. Pure numpy: no framework."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from deployments.backends.base import check_batch, to_outputs, to_probabilities
from models.kinds import OutputSpec
from models.registry import Manifest
from models.verify import REGRESSION_RTOL, output_diff, probe_rows
from serve.errors import ArtifactError, InvalidInput

MULTI = OutputSpec.of("multiclass", ("a", "b", "c"))
BINARY = OutputSpec.of("binary", ("neg", "pos"))
ONE = OutputSpec.of("regression", ())
THREE = OutputSpec.of("regression", (), outputs=("d1", "d2", "d3"))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------- multiclass


def test_multiclass_probabilities_and_logits_sum_to_one() -> None:
    probs = np.array([[0.2, 0.3, 0.5], [2.0, 1.0, 1.0]])
    out = to_outputs(probs, 2, MULTI, "probabilities")
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out, [[0.2, 0.3, 0.5], [0.5, 0.25, 0.25]], atol=1e-7)
    logits = np.array([[1000.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(to_outputs(logits, 2, MULTI, "logits"),
                               [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-6)


def test_multiclass_shape_and_form_refused() -> None:
    with pytest.raises(ArtifactError, match=r"shape \(2, 2\), expected \(2, 3\).*class_labels"):
        to_outputs(np.ones((2, 2)), 2, MULTI, "probabilities")
    with pytest.raises(ArtifactError, match="'probabilities' or 'logits', not 'values'"):
        to_outputs(np.ones((2, 3)), 2, MULTI, "values")
    with pytest.raises(ArtifactError, match="all-zero"):
        to_outputs(np.zeros((1, 3)), 1, MULTI, "probabilities")


def test_to_probabilities_is_multiclass_by_count() -> None:
    raw = np.array([[1.0, 3.0]])
    np.testing.assert_allclose(to_probabilities(raw, 1, 2, "probabilities"), [[0.25, 0.75]])
    with pytest.raises(ArtifactError, match="unknown output kind 'values'"):
        to_probabilities(raw, 1, 2, "values")


# --------------------------------------------------------------------------- binary


@pytest.mark.parametrize("shape", [(4,), (4, 1)])
def test_binary_score_shapes(shape: tuple[int, ...]) -> None:
    score = np.array([0.0, 0.25, 0.9, 1.0]).reshape(shape)
    out = to_outputs(score, 4, BINARY, "probabilities")
    assert out.shape == (4, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], [0.0, 0.25, 0.9, 1.0], atol=1e-7)


def test_binary_logit_is_a_sigmoid_without_overflow() -> None:
    logit = np.array([-800.0, -2.0, 0.0, 3.0, 800.0])
    out = to_outputs(logit, 5, BINARY, "logits")
    assert np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))
    np.testing.assert_allclose(out[1:4, 0], _sigmoid(logit[1:4]), atol=1e-7)
    assert out[0, 0] == 0.0 and out[4, 0] == 1.0


def test_binary_two_columns_give_the_positive() -> None:
    probs = np.array([[0.7, 0.3], [2.0, 2.0]])  # the second row unnormalized
    np.testing.assert_allclose(to_outputs(probs, 2, BINARY, "probabilities")[:, 0], [0.3, 0.5])
    logits = np.array([[0.0, 2.0], [5.0, 5.0]])
    np.testing.assert_allclose(to_outputs(logits, 2, BINARY, "logits")[:, 0],
                               [_sigmoid(np.array(2.0)), 0.5], atol=1e-7)


def test_binary_refusals_name_the_fix() -> None:
    with pytest.raises(ArtifactError, match=r"\(2, 3\).*kind \(a wider output is multiclass\)"):
        to_outputs(np.ones((2, 3)), 2, BINARY, "probabilities")
    with pytest.raises(ArtifactError, match=r"outside \[0, 1\].*'logits'"):
        to_outputs(np.array([0.5, 1.7]), 2, BINARY, "probabilities")
    with pytest.raises(ArtifactError, match="non-finite"):
        to_outputs(np.array([np.nan]), 1, BINARY, "logits")
    with pytest.raises(ArtifactError, match="not 'values'"):
        to_outputs(np.array([0.5]), 1, BINARY, "values")
    # Rounding just past 1 is a probability still, clipped.
    assert to_outputs(np.array([1.0 + 1e-9]), 1, BINARY, "probabilities")[0, 0] == 1.0


# --------------------------------------------------------------------------- regression


def test_regression_values_as_they_are() -> None:
    flat = np.array([-3.5e6, 0.0, 42.125])
    out = to_outputs(flat, 3, ONE, "values")
    assert out.shape == (3, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], flat.astype(np.float32))
    np.testing.assert_array_equal(to_outputs(flat.reshape(3, 1), 3, ONE, "values"), out)
    wide = np.arange(6.0).reshape(2, 3) - 10
    np.testing.assert_array_equal(to_outputs(wide, 2, THREE, "values"), wide)


@pytest.mark.parametrize("form", ["logits", "probabilities"])
def test_regression_refuses_classifier_forms(form: str) -> None:
    with pytest.raises(ArtifactError, match=f"output is 'values', not '{form}'"):
        to_outputs(np.zeros(2), 2, ONE, form)


def test_regression_shape_and_finiteness_refused() -> None:
    with pytest.raises(ArtifactError, match=r"expected \(2, 3\).*outputs \(3 named\)"):
        to_outputs(np.zeros(2), 2, THREE, "values")
    with pytest.raises(ArtifactError, match=r"expected \(2,\) or \(2, 1\).*outputs \(1 named\)"):
        to_outputs(np.zeros((2, 2)), 2, ONE, "values")
    with pytest.raises(ArtifactError, match="non-finite"):
        to_outputs(np.array([1.0, np.inf]), 2, ONE, "values")
    with pytest.raises(ArtifactError, match="float32's range"):
        to_outputs(np.array([1e39]), 1, ONE, "values")


def test_not_numeric_output_refused() -> None:
    with pytest.raises(ArtifactError, match="not a numeric array"):
        to_outputs(["x", "y"], 2, ONE, "values")


# --------------------------------------------------------------------------- comparison


def test_output_diff_regression_is_relative_to_each_column() -> None:
    ref = np.array([[1000.0, 0.001], [-2000.0, 0.002]])
    got = ref * (1 + np.array([[1e-7, 5e-7]]))
    assert output_diff(got, ref, "regression") == pytest.approx(5e-7, rel=1e-3)
    assert output_diff(got, ref, "regression") <= REGRESSION_RTOL
    # The same absolute error on the small column is far off its scale.
    worse = ref + np.array([[0.0, 1e-4]])
    assert output_diff(worse, ref, "regression") > 0.04
    # Probabilities and scores stay absolute; shapes or non-finite values never pass.
    assert output_diff(np.array([[0.5]]), np.array([[0.5 + 2e-6]]), "binary") == pytest.approx(2e-6)
    assert output_diff(np.zeros((2, 1)), np.zeros((3, 1)), "regression") == float("inf")
    assert output_diff(np.array([[np.nan]]), np.zeros((1, 1)), "regression") == float("inf")
    assert output_diff(np.zeros((2, 1)), np.zeros((2, 1)), "regression") == 0.0


# --------------------------------------------------------------------------- inputs


def _manifest(**kw: Any) -> Manifest:
    base = Manifest(name="m", version="v1", framework="sklearn", input_shape=(3,),
                    input_dtype="float32", class_labels=("a", "b"), accuracy=None,
                    training_time_s=None, created_at="", artifact="model.joblib",
                    sha256="0" * 64)
    return dataclasses.replace(base, **kw)


SCHEMA = ({"name": "store", "dtype": "category", "categories": ["n", "s"]},
          {"name": "promo", "dtype": "bool"}, {"name": "items", "dtype": "int"},
          {"name": "price", "dtype": "float"})


def test_check_batch_keeps_tabular_rows_float64() -> None:
    m = _manifest(input_shape=(4,), input_dtype="float64", kind="regression",
                  class_labels=(), outputs=("y",), input_schema=SCHEMA)
    big = 2.0**53 - 1  # an int float32 would round
    out = check_batch([[1, 0, big, 0.1]], m)
    assert out.dtype == np.float64 and out[0, 2] == big and out[0, 3] == 0.1
    with pytest.raises(InvalidInput, match=r"expected shape \(n, 4\), got \(1, 3\)"):
        check_batch([[1, 0, 2]], m)


def test_check_batch_width_is_the_schema_s() -> None:
    m = _manifest(input_shape=(9,), input_dtype="float64", input_schema=SCHEMA)
    assert check_batch(np.zeros((2, 4)), m).shape == (2, 4)


def test_check_batch_tensors_stay_float32() -> None:
    out = check_batch(np.ones((2, 3), dtype=np.float64), _manifest())
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]


def test_probe_rows_hold_a_valid_value_per_field() -> None:
    fields = [SimpleNamespace(dtype="category", categories=("a", "b", "c")),
              SimpleNamespace(dtype="bool", categories=()),
              SimpleNamespace(dtype="int", categories=()),
              SimpleNamespace(dtype="float", categories=())]
    rows = probe_rows(fields)
    assert rows.dtype == np.float64 and rows.shape == (64, 4)
    assert set(rows[:, 0]) == {0.0, 1.0, 2.0}
    assert set(rows[:, 1]) <= {0.0, 1.0} and len(set(rows[:, 1])) == 2
    assert np.all(rows[:, 2] == np.rint(rows[:, 2])) and rows[:, 2].std() > 1
    assert rows[:, 3].std() > 0.1 and not np.all(rows[:, 3] == np.rint(rows[:, 3]))
    np.testing.assert_array_equal(rows, probe_rows(fields))  # seeded
