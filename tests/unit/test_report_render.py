"""`abserve report` and the HTML report show the statistics: per candidate the sequential
test, the z-test with its validity, the latency test, the quality without labels
(disagreement, label shift) and the verdict; the SRM check; each arm's predicted labels."""

from __future__ import annotations

import argparse
import json

import pytest

from router.controlplane.analysis import build_report
from router.controlplane.report_html import render_report_html
from router.controlplane.split import SplitTally
from router.dataplane.measures import ArmMetrics
from serve.cli import admin


def _arm(requests: int, correct: int, total: int, ms: float) -> ArmMetrics:
    m = ArmMetrics(requests=requests, answered=requests, feedback_correct=correct,
                   feedback_total=total)
    m.latency.record(ms, n=requests)
    return m


def report(flag: bool = False) -> dict:
    split = SplitTally()
    split.add({"v1": 10_400 if flag else 10_010, "v2": 9_600 if flag else 9_990},
              {"v1": 50, "v2": 50})
    arms = {"v1": _arm(10_000, 9_000, 10_000, 4.0), "v2": _arm(10_000, 9_300, 10_000, 4.0),
            "v3": _arm(100, 9, 10, 9.0)}
    arms["v1"].labels = {0: 6_000, 1: 4_000}
    arms["v2"].labels = {0: 2_000, 1: 8_000}  # predicts other classes
    arms["v2"].compared, arms["v2"].disagreed = 240, 170
    out = build_report(arms, "v1", weights={"v1": 50, "v2": 50, "v3": 0}, split=split.test())
    return json.loads(json.dumps({**out, "experiment": "e", "revision": 3, "shadows": {}}))


def test_cli_report_prints_the_statistics(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(admin, "admin_call", lambda *a, **k: report())
    assert admin.cmd_report(argparse.Namespace(json=False)) == 0
    out = capsys.readouterr().out
    assert "v2 vs v1:" in out
    assert "sequential (mSPRT, always valid): delta +3.0 pp, 95% interval [" in out
    assert "significant" in out and "fixed-horizon z-test: p " in out
    assert "(valid: planned n reached)" in out
    assert "latency (Mann-Whitney): typically x1.00" in out
    assert "verdict: v2 is better than v1 in accuracy by 3.0 pp (always-valid 95 % interval" in out
    assert "sequential (mSPRT, always valid): not enough labels yet" in out  # v3: 10 labels
    assert "sample ratio: no sample-ratio mismatch" in out


def test_html_report_shows_statistics_and_a_flagged_split() -> None:
    html = render_report_html(report(flag=True))
    assert "<h2>Statistics</h2>" in html and "always-valid 95 % interval" in html
    assert "SAMPLE-RATIO MISMATCH" in html and "color:#b00" in html
    assert "v2 is better than v1 in accuracy by 3.0 pp" in html
    assert "Johari" in html and "Lindon" in html  # the methods, with their references
    plain = render_report_html(report())
    assert "no sample-ratio mismatch" in plain and "color:#b00" not in plain
    older = report()
    for row in older["arms"].values():  # a report from before the statistics: still renders
        for key in [k for k in row if k.startswith("seq_")]:
            del row[key]
    del older["srm"], older["methods"]
    assert "<h2>Statistics</h2>" not in render_report_html(older)


def test_cli_report_prints_the_quality_without_labels(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(admin, "admin_call", lambda *a, **k: report())
    assert admin.cmd_report(argparse.Namespace(json=False)) == 0
    out = capsys.readouterr().out
    assert "  disagreement with v1: 70.8% of 240 compared rows, 95% Wilson [" in out
    assert "  label shift: total variation 0.400, chi-square p <0.0001" in out
    assert "  disagreement with v1: none compared yet (experiment.compare_percent)" in out  # v3
    assert "  label shift: not enough answers yet (50 on each side)" in out
    assert "v2 disagrees with v1 on 71 % of 240 compared answers" in out  # the verdict
    assert "predicted labels (class index: share of the arm's own answers):" in out
    assert "  v1*: 0 60.0%, 1 40.0%" in out and "  v2: 0 20.0%, 1 80.0%" in out
    older = report()
    for row in older["arms"].values():  # a report from before these keys: no such lines
        for key in ("disagreement", "disagreement_ci95", "compared", "label_distribution"):
            del row[key]
    monkeypatch.setattr(admin, "admin_call", lambda *a, **k: older)
    assert admin.cmd_report(argparse.Namespace(json=False)) == 0
    out = capsys.readouterr().out
    assert "disagreement with" not in out and "predicted labels" not in out


def test_html_report_shows_the_quality_without_labels() -> None:
    html = render_report_html(report())
    assert "<th>disagreement with the baseline (95 % CI)</th>" in html
    assert "70.8 % of 240 [" in html and "0.4, p &lt; 0.0001" not in html
    assert "<td>0.400, p &lt; 0.0001</td>" in html
    assert "Predicted labels (share of each arm's own answers, by class index)" in html
    assert "<tr><th>v2</th><td>20.0 %</td><td>80.0 %</td></tr>" in html
    assert "v2 predicts other classes than v1 (total variation 0.40" in html
    older = report()
    for row in older["arms"].values():  # a report from before these keys: still renders
        for key in ("disagreement", "disagreement_ci95", "compared", "label_distribution",
                    "label_shift", "label_shift_p_value"):
            row.pop(key, None)
    plain = render_report_html(older)
    assert "Predicted labels" not in plain and "<h2>Statistics</h2>" in plain
