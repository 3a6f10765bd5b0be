"""`abserve report` and the HTML report show the statistics: per candidate the sequential
test, the z-test with its validity, the latency test and the verdict; the SRM check."""

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
