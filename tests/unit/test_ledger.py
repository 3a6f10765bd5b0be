"""The controller's ledger: metrics summed over router replicas, feedback joined once."""

from __future__ import annotations

import pytest

from router.controlplane.ledger import Ledger
from router.controlplane.report_html import render_report_html
from router.dataplane.measures import ArmMetrics
from router.dataplane.shadow import ShadowStats
from serve.errors import NotFound


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def metrics(requests: int, fallbacks: int = 0, latency: float = 5.0) -> dict:
    m = ArmMetrics()
    for i in range(requests):
        m.record(latency, fallback=i < fallbacks)
    return m.to_dict()


def test_replicas_add_up_and_repeated_reports_do_not_double_count() -> None:
    ledger = Ledger(["v1", "v2"])
    ledger.update("r1", {"metrics": {"v1": metrics(10), "v2": metrics(2, fallbacks=1)}})
    ledger.update("r2", {"metrics": {"v1": metrics(5)}})
    ledger.update("r1", {"metrics": {"v1": metrics(10), "v2": metrics(2, fallbacks=1)}})
    merged = ledger.merged_metrics()
    assert merged["v1"].requests == 15 and merged["v2"].requests == 2
    assert merged["v2"].fallbacks == 1


def test_feedback_joins_once_and_unknown_is_404() -> None:
    ledger = Ledger(["v1", "v2"])
    ledger.update("r1", {"served": [("a", "v1", 3), ("b", "v2", 1), ("c", "v2", 0)]})
    assert ledger.record_feedback("a", 3)["correct"] is True
    assert ledger.record_feedback("b", 2)["correct"] is False
    assert ledger.record_feedback("a", 3)["status"] == "duplicate"
    with pytest.raises(NotFound):
        ledger.record_feedback("nope", 1)
    merged = ledger.merged_metrics()
    assert (merged["v1"].feedback_correct, merged["v1"].feedback_total) == (1, 1)
    assert (merged["v2"].feedback_correct, merged["v2"].feedback_total) == (0, 1)
    assert ledger.bandit_counts() == {"successes": {"v1": 1, "v2": 0},
                                      "failures": {"v1": 0, "v2": 1}}


def test_served_predictions_expire_by_ttl_and_size() -> None:
    clock = Clock()
    ledger = Ledger(["v1"], ttl_s=60, max_entries=2, clock=clock)
    ledger.update("r", {"served": [("a", "v1", 0), ("b", "v1", 0), ("c", "v1", 0)]})
    with pytest.raises(NotFound):
        ledger.record_feedback("a", 0)  # dropped: only the 2 newest are kept
    clock.t += 61
    with pytest.raises(NotFound, match="expired"):
        ledger.record_feedback("c", 0)


def test_report_with_shadows_history_and_html() -> None:
    clock = Clock()
    ledger = Ledger(["v1", "v2"], clock=clock)
    shadow = ShadowStats()
    shadow.record([[0.9, 0.1]], [[0.2, 0.8]])
    for step in range(3):
        clock.t += 10
        ledger.update("r1", {"metrics": {"v1": metrics(90 * (step + 1)),
                                         "v2": metrics(10 * (step + 1))},
                             "shadows": {"v3": shadow.to_dict()},
                             "served": [(f"id{step}", "v2", 1)]})
        ledger.record_feedback(f"id{step}", 1)
    report = ledger.report("v1", {"v1": 90, "v2": 10})
    assert report["arms"]["v1"]["requests"] == 270 and report["arms"]["v2"]["requests"] == 30
    assert report["arms"]["v2"]["traffic_share"] == pytest.approx(0.1)
    assert report["arms"]["v2"]["accuracy"] == 1.0
    assert report["shadows"]["v3"]["agreement_rate"] == 0.0
    assert len(report["history"]) == 3
    html = render_report_html({**report, "experiment": "e", "revision": 4})
    assert html.startswith("<!doctype html>") and "<svg" in html and "polyline" in html
    assert "v2" in html and "Shadow versions" in html
