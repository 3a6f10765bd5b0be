"""Output kinds through the router, without Ray: answers, OIP outputs, agreement, feedback,
the ledger's errors and scores (journalled), and the report's MAE, RMSE and AUC.

References: scikit-learn's metrics for MAE, RMSE, R² and AUC on the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score, roc_auc_score

from models.kinds import OutputSpec, kind_problems
from models.registry import Manifest
from router.controlplane.canary import CanaryPlan, GateConfig, check_gates
from router.controlplane.kind_stats import ErrorMoments
from router.controlplane.ledger import Ledger
from router.controlplane.report_html import render_report_html
from router.controlplane.rollout import Rollout
from router.controlplane.store import Journal
from router.dataplane.cache import cache_key
from router.dataplane.core import Prediction
from router.dataplane.measures import ArmMetrics
from router.http.follower import served_answers
from router.http.ops import feedback_label
from router.http.serving import ModelInfo
from router.protocol.oip import infer_response, output_names, version_metadata
from serve.errors import InvalidInput

BINARY = OutputSpec.of("binary", ("negative", "sepsis"), threshold=0.3)
REGRESSION = OutputSpec.of("regression", (), outputs=("units_sold",))
HORIZON = OutputSpec.of("regression", (), outputs=("h1", "h2", "h3"))
MULTI = OutputSpec.of("multiclass", ("a", "b", "c"))


def manifest(spec: OutputSpec, version: str = "v1", schema: list | None = None) -> Manifest:
    return Manifest(
        name="m", version=version, framework="sklearn", input_shape=(2,), input_dtype="float32",
        class_labels=spec.class_labels, accuracy=None, training_time_s=None,
        created_at="2026-12-02T00:00:00Z", artifact="model.joblib", sha256="0" * 64,
        kind=spec.kind, threshold=spec.threshold if spec.kind == "binary" else None,
        outputs=spec.outputs, input_schema=None if schema is None else tuple(schema),
    )


# ---------------------------------------------------------------- the kinds themselves


def test_kind_problems_name_what_is_wrong() -> None:
    assert kind_problems("regression", ("a",), None, ("y",))[0].startswith("a regression")
    assert "exactly two" in kind_problems("binary", ("a", "b", "c"), None, ())[0]
    assert "threshold must be strictly between" in kind_problems("binary", ("a", "b"), 1.0, ())[0]
    assert "threshold applies to binary" in kind_problems("multiclass", ("a", "b"), 0.4, ())[0]
    assert kind_problems("ranking", (), None, ()) == ["kind 'ranking' is not one of "
                                                      "['multiclass', 'binary', 'regression']"]
    assert kind_problems("regression", (), None, ("y",)) == []


def test_manifest_round_trip_keeps_the_kind_and_old_manifests_are_multiclass() -> None:
    m = manifest(BINARY)
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again.spec == BINARY and again.width == 1
    old = m.to_dict()
    for key in ("kind", "threshold", "outputs", "input_schema"):
        del old[key]
    old["class_labels"] = ["a", "b", "c"]
    assert Manifest.from_dict(old).spec == MULTI


def test_answers_by_kind() -> None:
    assert BINARY.answer(np.array([0.31], dtype=np.float32)) == {
        "label": "sepsis", "score": 0.31, "threshold": 0.3}
    assert BINARY.answer(np.array([0.29]))["label"] == "negative"
    assert REGRESSION.answer(np.array([12.5])) == {"value": 12.5}
    assert HORIZON.answer(np.array([1.0, 2.0, 3.0])) == {
        "values": [1.0, 2.0, 3.0], "outputs": ["h1", "h2", "h3"]}
    assert MULTI.answer(np.array([0.2, 0.7, 0.1]))["label"] == "b"
    with pytest.raises(TypeError):
        REGRESSION.labels_of(np.ones((2, 1)))


def test_regression_agreement_is_every_output_within_the_tolerance() -> None:
    ours = np.array([[10.4, 20.0, 30.0], [10.0, 20.0, 40.0]])
    theirs = np.array([[10.0, 20.0, 30.0], [10.0, 20.0, 30.0]])
    # 0.4 <= 0.05 * 10 agrees; one step 10 off out of 30 does not, though the mean is close.
    assert HORIZON.agreement(ours, theirs, rtol=0.05).tolist() == [True, False]
    assert HORIZON.agreement(ours, theirs, rtol=0.0, atol=11.0).tolist() == [True, True]
    a = np.array([[0.31], [0.9]])
    assert BINARY.agreement(a, np.array([[0.29], [0.95]])).tolist() == [False, True]


# ---------------------------------------------------------------- wire formats


def test_oip_outputs_and_metadata_follow_the_kind() -> None:
    values = np.array([[0.8], [0.1]], dtype=np.float32)
    body = infer_response("m", "v1", "x", values, BINARY, None, {})
    assert [o["name"] for o in body["outputs"]] == ["score", "label"] == list(output_names(BINARY))
    assert body["outputs"][0]["shape"] == [2, 1] and body["outputs"][1]["data"] == [
        "sepsis", "negative"]
    reg = infer_response("m", "v1", None, np.array([[3.5, 4.0, 4.5]]), HORIZON, None, {})
    assert reg["outputs"] == [{"name": "predictions", "datatype": "FP32", "shape": [1, 3],
                               "data": [3.5, 4.0, 4.5]}]
    with pytest.raises(ValueError, match="width 3"):
        infer_response("m", "v1", None, np.ones((1, 1)), HORIZON, None, {})
    schema = [{"name": "store", "dtype": "category", "categories": ["s1", "s2"]},
              {"name": "price", "dtype": "float"}]
    meta = version_metadata("m", manifest(REGRESSION, schema=schema))
    assert meta["inputs"] == [{"name": "store", "datatype": "BYTES", "shape": [-1]},
                              {"name": "price", "datatype": "FP64", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "predictions", "datatype": "FP32", "shape": [-1, 1]}]


def test_float64_records_key_on_their_float64_bytes() -> None:
    a = np.array([1.0, 0.1], dtype=np.float64)
    b = np.array([1.0, 0.1 + 1e-12], dtype=np.float64)  # equal in float32
    assert cache_key("m", "v1", a) != cache_key("m", "v1", b)
    assert cache_key("m", "v1", a) == cache_key("m", "v1", np.array([1.0, 0.1]))
    assert cache_key("m", "v1", np.array([-0.0, 0.1])) == cache_key("m", "v1", a * [0, 1] + [0, 0])
    # float32 tensors keep the keys they always had.
    f = np.array([1.0, 2.0], dtype=np.float32)
    assert cache_key("m", "v1", f) == cache_key("m", "v1", [1, 2])


def test_feedback_is_a_label_or_the_true_values() -> None:
    reg = ModelInfo.from_manifests("m", {"v1": manifest(REGRESSION)})
    assert feedback_label(reg, {"request_id": "r", "value": 4}) == ("r", [4.0])
    assert feedback_label(reg, {"request_id": "r", "label": 4.5}) == ("r", [4.5])
    with pytest.raises(InvalidInput, match="a number"):
        feedback_label(reg, {"request_id": "r", "value": "high"})
    hor = ModelInfo.from_manifests("m", {"v1": manifest(HORIZON)})
    assert feedback_label(hor, {"request_id": "r", "value": [1, 2, 3]})[1] == [1.0, 2.0, 3.0]
    with pytest.raises(InvalidInput, match="a list of 3 numbers"):
        feedback_label(hor, {"request_id": "r", "value": [1, 2]})
    binary = ModelInfo.from_manifests("m", {"v1": manifest(BINARY)})
    assert feedback_label(binary, {"request_id": "r", "label": "sepsis"}) == ("r", 1)
    with pytest.raises(InvalidInput, match="label"):
        feedback_label(binary, {"request_id": "r", "value": 1})


def test_versions_of_one_model_must_share_the_kind() -> None:
    with pytest.raises(ValueError, match="output kind"):
        ModelInfo.from_manifests("m", {"v1": manifest(REGRESSION), "v2": manifest(HORIZON)})


def test_served_answers_by_kind() -> None:
    pred = Prediction(np.array([[0.9], [0.2]], dtype=np.float32), "v1", "v1", (False, False),
                      "MISS", False, spec=BINARY)
    assert served_answers(pred) == [[1, 0.9], [0, 0.2]]
    reg = Prediction(np.array([[1.5, 2.0, 2.5]], dtype=np.float32), "v1", "v1", (False,),
                     "MISS", False, spec=HORIZON)
    assert served_answers(reg) == [[1.5, 2.0, 2.5]]
    assert reg.classifies is False
    multi = Prediction(np.array([[0.1, 0.8, 0.1]]), "v1", "v1", (False,), "MISS", False)
    assert served_answers(multi) == [1]


# ---------------------------------------------------------------- the ledger and the report


def _regression_ledger(tmp_path: Path) -> tuple[Ledger, dict[str, tuple[list, list]]]:
    rng = np.random.default_rng(7)
    ledger = Ledger(["v1", "v2"], journal=Journal(tmp_path / "app.served.jsonl"))
    truth: dict[str, tuple[list, list]] = {"v1": ([], []), "v2": ([], [])}
    served = []
    for i in range(200):
        version = "v1" if i % 2 else "v2"
        y = float(rng.normal(100, 20))
        noise = 5.0 if version == "v1" else 12.0  # v2 errs more
        pred = round(y + float(rng.normal(0, noise)), 3)
        served.append((f"r{i}", version, [pred]))
        truth[version][0].append(pred)
        truth[version][1].append(y)
    ledger.update("router-1", {"served": served, "kind": "regression"})
    for i, (rid, _, _) in enumerate(served):
        version = "v1" if i % 2 else "v2"
        y = truth[version][1][i // 2]
        assert ledger.record_feedback(rid, [y])["counted"] is True
    return ledger, truth


def test_regression_feedback_gives_mae_rmse_r2_and_a_sequential_comparison(
    tmp_path: Path,
) -> None:
    ledger, truth = _regression_ledger(tmp_path)
    report = ledger.report("v1", {"v1": 50.0, "v2": 50.0})
    assert report["kind"] == "regression"
    for version in ("v1", "v2"):
        pred, y = truth[version]
        row = report["arms"][version]["regression"]
        assert row["n"] == 100
        assert row["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-9)
        assert row["rmse"] == pytest.approx(mean_squared_error(y, pred) ** 0.5, rel=1e-9)
        assert row["r2"] == pytest.approx(r2_score(y, pred), rel=1e-9)
        lo, hi = row["mae_ci95"]
        assert lo < row["mae"] < hi
    v2 = report["arms"]["v2"]
    assert v2["mae_delta"] == pytest.approx(
        report["arms"]["v2"]["regression"]["mae"] - report["arms"]["v1"]["regression"]["mae"])
    assert v2["mae_seq_p_value"] < 0.05 and v2["mae_seq_significant"] is True
    assert v2["mae_seq_ci"][0] > 0  # v2's errors are larger, shown
    assert "v2 is worse than v1: mean absolute error" in v2["verdict"]
    assert "accuracy" not in v2["verdict"]
    html = render_report_html(report)
    assert "MAE" in html and "RMSE" in html


def test_regression_errors_survive_a_replay_and_a_compaction(tmp_path: Path) -> None:
    ledger, _ = _regression_ledger(tmp_path)
    before = ledger.report("v1", {"v1": 50.0, "v2": 50.0})["arms"]["v2"]["regression"]
    replayed = Ledger(["v1", "v2"], journal=Journal(tmp_path / "app.served.jsonl"))
    assert replayed.errors["v2"].to_dict() == ledger.errors["v2"].to_dict()
    assert replayed.record_feedback("r0", [1.0])["status"] == "duplicate"
    # Compacted: one "c" record holds the errors; a replay of it gives the same numbers.
    journal = Journal(tmp_path / "app.served.jsonl")
    journal.rewrite([["c", ledger.feedback,
                      {"errors": {v: m.to_dict() for v, m in ledger.errors.items()},
                       "scores": {}}]])
    again = Ledger(["v1", "v2"], journal=Journal(tmp_path / "app.served.jsonl"))
    again.kind = "regression"
    assert again.report("v1", {"v1": 50.0, "v2": 50.0})["arms"]["v2"]["regression"] == before


def test_binary_feedback_counts_accuracy_and_the_auc(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    journal = tmp_path / "b.served.jsonl"
    ledger = Ledger(["v1"], journal=Journal(journal))
    scores, truths = [], []
    served = []
    for i in range(300):
        truth = int(rng.random() < 0.3)
        score = round(float(np.clip(rng.normal(0.35 + 0.3 * truth, 0.15), 0, 1)), 6)
        label = int(score >= 0.5)
        served.append((f"r{i}", "v1", [label, score]))
        scores.append(score)
        truths.append(truth)
    ledger.update("router-1", {"served": served, "kind": "binary"})
    correct = 0
    for (rid, _, _), truth in zip(served, truths, strict=True):
        out = ledger.record_feedback(rid, truth)
        correct += int(out["correct"])
    row = ledger.report("v1", {"v1": 100.0})["arms"]["v1"]
    assert row["accuracy"] == pytest.approx(correct / 300)
    reference = roc_auc_score(truths, scores)
    # Scores are binned in 100 bins: within half the tied pairs' share of the exact AUC.
    assert row["auc"] == pytest.approx(reference, abs=0.02)
    assert row["auc_ci95"][0] < row["auc"] < row["auc_ci95"][1]
    replayed = Ledger(["v1"], journal=Journal(journal))
    assert replayed.scores["v1"].to_dict() == ledger.scores["v1"].to_dict()


def test_a_value_for_a_classifier_and_a_label_for_values_are_refused() -> None:
    ledger = Ledger(["v1"])
    ledger.update("r", {"served": [("a", "v1", 2), ("b", "v1", [3.5])]})
    with pytest.raises(InvalidInput, match="a value of that shape"):
        ledger.record_feedback("a", [1.0])
    with pytest.raises(InvalidInput, match="send its true value"):
        ledger.record_feedback("b", 1)


# ---------------------------------------------------------------- the canary's error gate


def _errors(rng: np.random.Generator, n: int, noise: float) -> ErrorMoments:
    m = ErrorMoments()
    y = rng.normal(100, 20, n)
    m.add_batch((y + rng.normal(0, noise, n))[:, None], y[:, None])
    return m


def test_a_regression_canary_judges_the_error_not_the_labels() -> None:
    rng = np.random.default_rng(11)
    gates = GateConfig(min_feedback=200)
    cand, base = ArmMetrics(), ArmMetrics()
    for _ in range(300):
        cand.record(5.0)
        base.record(5.0)
    worse = (_errors(rng, 400, 12.0), _errors(rng, 400, 5.0))
    results, metrics = check_gates(gates, cand, base, kind="regression", errors=worse)
    by = {r.name: r for r in results}
    assert "accuracy_noninferiority" not in by and "label_shift" not in by
    assert by["error_noninferiority"].status == "fail", by["error_noninferiority"].message
    assert metrics["mae_ci_lo"] > metrics["mae_margin_abs"]  # above the 5 % margin
    same = (_errors(rng, 2000, 5.0), _errors(rng, 2000, 5.0))
    results, _ = check_gates(gates, cand, base, kind="regression", errors=same)
    gate = {r.name: r for r in results}["error_noninferiority"]
    # Not worse by the margin, or not yet shown either way (inconclusive is judged as skip).
    assert gate.status == "pass" or "inconclusive" in gate.message, gate.message
    few = (_errors(rng, 50, 5.0), _errors(rng, 50, 5.0))
    results, _ = check_gates(gates, cand, base, kind="regression", errors=few)
    gate = {r.name: r for r in results}["error_noninferiority"]
    assert gate.status == "skip" and "50 candidate and 50 baseline true values" in gate.message
    # A classifier's canary has no error gate.
    results, _ = check_gates(gates, cand, base)
    assert "error_noninferiority" not in {r.name for r in results}


def test_the_rollout_counts_errors_since_its_first_tick_and_keeps_the_base() -> None:
    rng = np.random.default_rng(5)
    plan = CanaryPlan("v2", "v1", steps=(50.0, 100.0), interval_s=0, min_requests=0,
                      gates=GateConfig(min_feedback=100, max_p99_ratio=None,
                                       max_disagreement=None, srm_alpha=None))
    rollout = Rollout.create(plan)
    rollout.start({"v1": 100.0, "v2": 0.0}, 0.0)
    before = {"v1": _errors(rng, 500, 5.0), "v2": _errors(rng, 500, 5.0)}
    merged = {"v1": ArmMetrics(), "v2": ArmMetrics()}
    rollout.tick(merged, {"v1": 50.0, "v2": 50.0}, 1.0, kind="regression", errors=before)
    saved = Rollout.from_dict(json.loads(json.dumps(rollout.to_dict())))
    assert saved.errors_base is not None
    assert saved.errors_base["v2"].to_dict() == before["v2"].to_dict()
    # Afterwards v2 errs far more: only what came after the base is judged.
    later = {"v1": before["v1"].merged(_errors(rng, 400, 5.0)),
             "v2": before["v2"].merged(_errors(rng, 400, 15.0))}
    for m in merged.values():
        for _ in range(10):
            m.record(5.0)
    decision, op = saved.tick(merged, {"v1": 50.0, "v2": 50.0}, 2.0, kind="regression",
                              errors=later)
    assert "error_noninferiority: fail" in " ".join(decision.reasons), decision.reasons


def test_the_cli_report_prints_the_errors(tmp_path: Path) -> None:
    from serve.cli.admin import _kind_lines

    ledger, _ = _regression_ledger(tmp_path)
    report = ledger.report("v1", {"v1": 50.0, "v2": 50.0})
    lines = _kind_lines(report)
    assert lines[0].split()[:4] == ["arm", "n", "MAE", "95%"]
    v2 = report["arms"]["v2"]["regression"]
    assert any(line.startswith("v2 ") and f"{v2['mae']:.4g}" in line for line in lines)
    assert any(line.startswith("v2 MAE - v1 MAE:") and "significant" in line for line in lines)


def test_a_regression_model_refuses_the_bandit() -> None:
    from router.dataplane.cache import PredictionCache
    from router.dataplane.core import RouterCore
    from serve.config import parse_config
    from serve.errors import ConfigError

    config = parse_config({
        "model": "sales", "models": [{"version": "v1"}, {"version": "v2"}],
        "experiment": {"name": "e", "baseline": "v1", "policy": "bandit",
                       "arms": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}]},
    })

    async def call(version: str, batch: np.ndarray, timeout_s: float) -> np.ndarray:
        return np.zeros((len(batch), 1), dtype=np.float32)

    with pytest.raises(ConfigError, match="bandit learns from labels"):
        RouterCore(config, call, PredictionCache(None, width=1), lambda: 0.0, spec=REGRESSION)
    RouterCore(config, call, PredictionCache(None, width=1), lambda: 0.0, spec=BINARY)
