"""The pure part of batch-predict and replay (serve/offline/core.py), without Ray: error
rows with their reasons, input decoding for Parquet, CSV and .npy, the experiment's arm
of each user key (the router's own RouterCore on 20,000 keys), replay statistics."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.kinds import OutputSpec
from models.registry import Manifest
from models.sales.data import INPUT_SCHEMA, encode_frame
from models.sales.data import frame as sales_frame
from router.controlplane.stats import wilson_interval
from router.dataplane.cache import PredictionCache
from router.dataplane.core import RouterCore
from serve.config import parse_config
from serve.errors import ConfigError
from serve.offline.core import (
    ROW,
    assign_arms,
    check_sticky,
    decode_frame,
    decode_tensor,
    experiment_arms,
    join_feedback,
    output_columns,
    replay_rows,
    replay_summary,
    summary_lines,
)
from serve.offline.scoring import output_schema, read_input

SHAPE = (4, 3)
LABELS = ("a", "b", "c")


def _manifest(**extra: object) -> Manifest:
    data = {
        "name": "m", "version": "v1", "framework": "sklearn", "input_shape": list(SHAPE),
        "input_dtype": "float32", "class_labels": list(LABELS), "accuracy": None,
        "training_time_s": None, "created_at": "now", "artifact": "model.joblib",
        "sha256": "0" * 64, **extra,
    }
    return Manifest.from_dict(data)


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(np.float32)


# --- error rows ------------------------------------------------------------------------


def test_bad_rows_become_errors_with_their_row_index_and_reason() -> None:
    good = _rows(3)
    values = [
        good[0].ravel().tolist(),
        [1.0] * 11,  # wrong shape
        [*good[1].ravel()[:-1].tolist(), float("nan")],  # NaN
        None,  # an empty cell
        "[1, 2,",  # a CSV cell that is not JSON
        ["x"] * 12,  # not numbers
        json.dumps(good[2].ravel().tolist()),  # a CSV cell that is
        [*good[1].ravel()[:-1].tolist(), float("inf")],
    ]
    rows = [10, 11, 12, 13, 14, 15, 16, 17]
    d = decode_tensor(values, rows, SHAPE)
    assert d.rows.tolist() == [10, 16]
    assert d.positions.tolist() == [0, 6]
    np.testing.assert_array_equal(d.batch, np.stack([good[0], good[2]]))
    reasons = {e.row: e.reason for e in d.errors}
    assert sorted(reasons) == [11, 12, 13, 14, 15, 17]
    assert reasons[11].startswith("wrong shape: expected 12 values (4, 3), got 11")
    assert reasons[12].startswith("NaN or infinite value (1 of 12; first at (3, 2))")
    assert reasons[13] == "no input (the cell is empty)"
    assert reasons[14].startswith("cannot decode the cell as a JSON list of numbers")
    assert reasons[15].startswith("cannot decode the values as numbers")
    assert reasons[17].startswith("NaN or infinite value")


def test_a_missing_input_column_is_an_error_on_every_row_not_a_crash() -> None:
    frame = pd.DataFrame({"features": [[0.0] * 12] * 3, ROW: [4, 5, 6]})
    d = decode_frame(frame, _manifest())
    assert len(d.batch) == 0
    assert [e.row for e in d.errors] == [4, 5, 6]
    assert "missing column 'input'" in d.errors[0].reason
    assert "['features', 'row']" in d.errors[0].reason


def test_tabular_rows_are_refused_by_the_schemas_own_rules() -> None:
    df, _ = sales_frame(6, seed=1)
    df = df.reset_index(drop=True)
    expected = encode_frame(df)
    df.loc[1, "price"] = np.nan  # required float: NaN is not allowed
    df.loc[2, "store"] = "s99"  # not a category
    df.loc[3, "competitor_distance_km"] = np.nan  # optional: the default
    df[ROW] = range(100, 106)
    manifest = _manifest(input_schema=INPUT_SCHEMA, input_shape=[len(INPUT_SCHEMA)],
                         input_dtype="float64", kind="regression", class_labels=[],
                         outputs=["units_sold"])
    d = decode_frame(df, manifest)
    reasons = {e.row: e.reason for e in d.errors}
    assert sorted(reasons) == [101, 102]
    assert reasons[101] == "row.price is required (float)"
    assert reasons[102].startswith("row.store must be one of the categories")
    assert d.rows.tolist() == [100, 103, 104, 105]
    np.testing.assert_array_equal(d.batch[[0, 2, 3]], expected[[0, 4, 5]])
    default = {f["name"]: f for f in INPUT_SCHEMA}["competitor_distance_km"]["default"]
    assert d.batch[1, -1] == default

    missing = decode_frame(df.drop(columns=["price"]), manifest)
    assert len(missing.batch) == 0 and len(missing.errors) == 6
    assert missing.errors[0].reason.startswith("missing column(s) ['price']")


# --- each input format -----------------------------------------------------------------


def test_parquet_csv_and_npy_inputs_decode_to_the_same_rows(tmp_path: Path) -> None:
    x = _rows(20, seed=3)
    flat = [r.ravel().tolist() for r in x]
    pq.write_table(pa.table({"input": flat, "user": [f"u{i}" for i in range(20)]}),
                   tmp_path / "in.parquet")
    pd.DataFrame({"input": [json.dumps(f) for f in flat]}).to_csv(tmp_path / "in.csv",
                                                                  index=False)
    np.save(tmp_path / "in.npy", x)
    manifest = _manifest()
    for name in ("in.parquet", "in.csv", "in.npy"):
        table = read_input(str(tmp_path / name))
        assert table[ROW].to_pylist() == list(range(20)), name
        d = decode_frame(table.to_pandas(), manifest)
        assert not d.errors, (name, d.errors[:1])
        np.testing.assert_array_equal(d.batch, x, err_msg=name)
    assert read_input(str(tmp_path / "in.parquet"))["user"].to_pylist()[3] == "u3"


def test_an_unknown_format_or_a_flat_npy_is_refused_with_what_to_give(tmp_path: Path) -> None:
    from serve.errors import AbserveError

    (tmp_path / "in.json").write_text("[]")
    with pytest.raises(AbserveError, match=r"give a \.parquet, \.csv or \.npy"):
        read_input(str(tmp_path / "in.json"))
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(AbserveError, match=r"shaped \[n, \*input_shape\]"):
        read_input(str(tmp_path / "flat.npy"))


# --- arms: the router's own assignment -------------------------------------------------


CONFIG = parse_config({
    "model": "activity",
    "models": [{"version": v} for v in ("v1", "v2", "v3", "v4")],
    "experiment": {"name": "offline-ab", "baseline": "v2", "arms": [  # not sorted: order counts
        {"version": "v4", "weight": 35}, {"version": "v2", "weight": 25},
        {"version": "v3", "weight": 0}, {"version": "v1", "weight": 40}]},
})


def _router(weights: dict[str, float] | None = None) -> RouterCore:
    core = RouterCore(CONFIG, lambda *a: None, PredictionCache(None, width=3),  # type: ignore[arg-type]
                      lambda: 0.0, random.Random(0))
    core.set_experiment(CONFIG.experiment, weights)
    return core


@pytest.mark.parametrize("weights", [None, {"v1": 10, "v2": 30, "v3": 25, "v4": 35},
                                     {"v1": 0, "v2": 100, "v3": 0, "v4": 0}])
def test_assigned_arms_equal_the_online_routers_on_20000_keys(
    weights: dict[str, float] | None,
) -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    exp = CONFIG.experiment
    ours, missing = assign_arms(keys, experiment_arms(exp, weights), exp.name)
    router = _router(weights)
    theirs = [router.choose(k, None) for k in keys]
    assert not missing
    assert ours == theirs
    want = weights or {a.version: a.weight for a in exp.arms}
    for v, w in want.items():  # and the split is the weights
        assert abs(ours.count(v) / len(keys) * 100 - w) < 1.5, (v, ours.count(v))


def test_keys_that_are_missing_or_not_strings() -> None:
    arms = experiment_arms(CONFIG.experiment)
    out, missing = assign_arms(["a", None, float("nan"), "", 17, np.int64(17)], arms, "s")
    assert missing == [1, 2, 3]
    assert out[4] == out[5] == assign_arms(["17"], arms, "s")[0][0]


def test_the_bandit_cannot_be_reproduced_offline() -> None:
    exp = CONFIG.experiment.model_copy(update={"policy": "bandit"})
    with pytest.raises(ConfigError, match="use --version V"):
        check_sticky(exp)


# --- outputs ---------------------------------------------------------------------------


def test_output_columns_by_kind() -> None:
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    cols = output_columns(OutputSpec.of("multiclass", LABELS), probs)
    assert cols["label"] == ["b", "a"]
    assert cols["probabilities"][0] == pytest.approx([0.1, 0.7, 0.2])
    binary = output_columns(OutputSpec.of("binary", ("no", "yes"), 0.6),
                            np.array([[0.55], [0.61]]))
    assert binary["label"] == ["no", "yes"] and binary["score"] == pytest.approx([0.55, 0.61])
    reg = output_columns(OutputSpec.of("regression", ()), np.array([[3.5], [1.0]]))
    assert reg["label"] == [None, None] and reg["values"] == [[3.5], [1.0]]
    assert output_schema(OutputSpec.of("binary", ("no", "yes")), "user").names == [
        "row", "user", "arm", "version", "label", "score", "node_id", "error"]


# --- replay statistics on hand-made frames ---------------------------------------------


def _replay_frame() -> pd.DataFrame:
    spec = OutputSpec.of("multiclass", LABELS)
    served = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6],
                       [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    replayed = served.copy()
    replayed[3] = [0.3, 0.6, 0.1]  # another version served row 3: the label differs
    replayed[4] = [0.1, 0.15, 0.75]  # same label, |dp| 0.05
    cols = replay_rows(spec, served, replayed)
    frame = pd.DataFrame({"request_id": [f"r{i}" for i in range(5)],
                          "version": ["v2", "v2", "v2", "v1", "v1"], **cols})
    return frame


def test_replay_rows_and_summary() -> None:
    spec = OutputSpec.of("multiclass", LABELS)
    frame = _replay_frame()
    assert frame["agree"].tolist() == [True, True, True, False, True]
    assert frame["max_abs_diff"].tolist() == pytest.approx([0, 0, 0, 0.3, 0.05])
    feedback = pd.DataFrame({"time": [1, 2, 3, 4], "request_id": ["r0", "r3", "r3", "r9"],
                             "label": ["c", "a", "b", "a"]})  # r3's latest: b
    joined = join_feedback(frame, feedback)
    assert joined["feedback_label"].tolist() == ["c", None, None, "b", None]
    s = replay_summary(joined, spec, "v2", skipped=2)
    assert s["rows"] == 5 and s["skipped"] == 2
    assert s["agreement"]["hits"] == 4 and s["agreement"]["rate"] == pytest.approx(0.8)
    assert s["agreement"]["ci95"] == pytest.approx(list(wilson_interval(4, 5)))
    assert s["agreement_own"] == {"n": 3, "hits": 3, "rate": 1.0,
                                  "ci95": list(wilson_interval(3, 3))}
    assert s["agreement_others"]["n"] == 2 and s["agreement_others"]["hits"] == 1
    assert s["abs_diff"]["max"] == pytest.approx(0.3)
    assert s["abs_diff"]["mean"] == pytest.approx(0.07)
    assert s["abs_diff"]["max_own"] == 0.0
    assert s["served_by"] == {"v2": 3, "v1": 2}
    fb = s["feedback"]
    assert fb["rows"] == 2
    # r0: replayed a, truth c (miss); r3: replayed b, truth b (hit); served r3 was a (miss)
    assert fb["accuracy_replayed"]["hits"] == 1 and fb["accuracy_served"]["hits"] == 0
    assert fb["confusion"]["c"]["a"] == 1 and fb["confusion"]["b"]["b"] == 1
    assert sum(sum(r.values()) for r in fb["confusion"].values()) == 2
    served_x = s["confusion_served_vs_replayed"]
    assert served_x["a"]["b"] == 1 and served_x["a"]["a"] == 1 and served_x["c"]["c"] == 2
    text = "\n".join(summary_lines(s))
    assert "agreement with what was served: 80.00% of 5" in text
    assert "rows v2 answered itself:        100.00% of 3" in text


def test_replay_without_feedback_reports_the_served_confusion() -> None:
    spec = OutputSpec.of("multiclass", LABELS)
    s = replay_summary(join_feedback(_replay_frame(), None), spec, "v9")
    assert s["agreement_own"]["n"] == 0 and s["agreement_own"]["rate"] is None
    assert s["feedback"]["rows"] == 0
    assert "served label (rows) x replayed label" in "\n".join(summary_lines(s))


def test_regression_agreement_is_the_tolerance_of_the_experiment() -> None:
    spec = OutputSpec.of("regression", ())
    cols = replay_rows(spec, np.array([[10.0], [10.0]]), np.array([[10.4], [11.0]]),
                       rtol=0.05)
    assert cols["agree"].tolist() == [True, False]
    assert "served_label" not in cols


def test_blocks_are_whole_batches_and_leave_every_actor_work() -> None:
    from serve.offline.scoring import MAX_BATCHES_PER_BLOCK, block_rows

    assert block_rows(100_000, 256, 2) == MAX_BATCHES_PER_BLOCK * 256  # big jobs: 16 batches
    assert block_rows(240, 20, 2) == 20  # 12 blocks: both actors of a two-node job get some
    assert block_rows(10, 256, 2) == 256  # never under one batch
    for n, batch, actors in ((5_000, 64, 3), (100_000, 100, 8), (1_000, 7, 1)):
        block = block_rows(n, batch, actors)
        assert block % batch == 0 and -(-n // block) >= min(4 * actors, -(-n // batch))
