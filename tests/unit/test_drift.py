"""Drift statistics (router/controlplane/drift.py) against scipy and hand formulas, the
reference statistics (models/reference.py), and the windows on an injected clock."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from models.reference import Reference, bin_counts, build_reference
from router.controlplane.drift import (
    DriftMonitor,
    js_distance,
    kolmogorov_sf,
    ks_binned,
    ks_p_value,
    psi,
)
from router.controlplane.stats import chi2_sf, label_shift
from serve.config import DriftConfig

RNG = np.random.default_rng(7)
REF = RNG.normal(0.0, 1.0, 20_000)
CASES = {
    "same": RNG.normal(0.0, 1.0, 20_000),
    "shifted mean": RNG.normal(0.5, 1.0, 20_000),
    "scaled variance": RNG.normal(0.0, 2.0, 20_000),
}


def _binned(live: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref = build_reference(REF.reshape(-1, 1), (1,))
    ch = ref.channels[0]
    return np.asarray(ch.edges), np.asarray(ch.counts), bin_counts(live, ch.edges)


def _psi_by_hand(ref_counts: np.ndarray, live_counts: np.ndarray) -> float:
    total = 0.0
    for r, lv in zip(ref_counts, live_counts, strict=True):
        q = max(r / ref_counts.sum(), 1e-4)
        p = max(lv / live_counts.sum(), 1e-4)
        total += (p - q) * np.log(p / q)
    return float(total)


@pytest.mark.parametrize("case", list(CASES))
def test_psi_is_the_hand_formula(case: str) -> None:
    _, ref_counts, live_counts = _binned(CASES[case])
    assert psi(ref_counts, live_counts) == pytest.approx(_psi_by_hand(ref_counts, live_counts),
                                                          rel=1e-12)


def test_psi_orders_the_cases() -> None:
    values = {c: psi(*_binned(x)[1:]) for c, x in CASES.items()}
    assert values["same"] < 0.01
    assert values["shifted mean"] > 0.2  # a half-sigma shift: "shifted" by the usual rule
    assert values["scaled variance"] > 0.25


@pytest.mark.parametrize("case", list(CASES))
def test_binned_ks_is_scipys_statistic_short_by_at_most_one_bin(case: str) -> None:
    live = CASES[case]
    edges, ref_counts, live_counts = _binned(live)
    exact = sps.ks_2samp(REF, live).statistic
    binned = ks_binned(ref_counts, live_counts)
    widest = max(ref_counts.max() / ref_counts.sum(), live_counts.max() / live_counts.sum())
    assert binned <= exact + 1e-12
    assert exact - binned <= widest + 1e-12
    # Evaluated at the edges, it is exactly the gap of the two empirical CDFs there.
    gaps = [abs((e > REF).mean() - (live < e).mean()) for e in edges]
    assert binned == pytest.approx(max(gaps), abs=1e-12)


def test_ks_p_value_is_kolmogorovs_asymptotic() -> None:
    for x in (0.3, 0.5, 0.8, 1.0, 1.36, 2.0, 3.0):
        assert kolmogorov_sf(x) == pytest.approx(sps.kstwobign.sf(x), rel=1e-9, abs=1e-15)
    d, n, m = 0.05, 900, 2000
    en = np.sqrt(n * m / (n + m))
    assert ks_p_value(d, n, m) == pytest.approx(sps.kstwobign.sf(en * d), rel=1e-9)
    # Same samples: scipy's asymptotic p of ks_2samp on two large samples agrees.
    a, b = REF[:3000], CASES["shifted mean"][:2000] - 0.45
    res = sps.ks_2samp(a, b, method="asymp")
    assert ks_p_value(res.statistic, 3000, 2000) == pytest.approx(res.pvalue, rel=0.05)


@pytest.mark.parametrize(("x", "df"), [(0.5, 1), (3.84, 1), (10.0, 7), (30.0, 7), (100.0, 20),
                                       (1e-3, 3), (200.0, 3)])
def test_chi_square_survival_is_scipys(x: float, df: int) -> None:
    assert chi2_sf(x, df) == pytest.approx(sps.chi2.sf(x, df), rel=1e-9, abs=1e-300)


def test_label_tests_are_scipys() -> None:
    a = [250, 258, 250, 242, 253, 246, 255, 246]
    b = [400, 100, 250, 200, 253, 246, 255, 46]
    assert js_distance(a, b) == pytest.approx(jensenshannon(a, b, base=2), rel=1e-9)
    assert js_distance(a, a) == pytest.approx(0.0, abs=1e-7)
    _, p = label_shift(dict(enumerate(a)), dict(enumerate(b)))
    stat, p_scipy, _, _ = sps.chi2_contingency([a, b], correction=False)
    assert p == pytest.approx(p_scipy, rel=1e-9, abs=1e-300)


def test_reference_of_windows_has_a_channel_per_last_axis_and_open_bins() -> None:
    x = RNG.normal(0, 1, (300, 50, 9)).astype(np.float32)
    labels = RNG.integers(0, 3, 300)
    ref = build_reference(x, (50, 9), labels=labels, label_names=("a", "b", "c"))
    assert len(ref.channels) == 9 and ref.rows == 300
    ch = ref.channels[4]
    assert len(ch.counts) == len(ch.edges) + 1 == 22  # 20 bins plus the two open ends
    assert sum(ch.counts) == ch.count == 300 * 50
    assert ch.quantiles["p50"] == pytest.approx(float(np.median(x[:, :, 4])), abs=1e-6)
    assert ch.mean == pytest.approx(float(x[:, :, 4].mean()), rel=1e-5)
    assert ref.label_counts == tuple(np.bincount(labels, minlength=3))
    again = Reference.from_dict(ref.to_dict())
    assert again == ref
    live = ref.bin_inputs(x[:10] + 100.0, (50, 9))
    assert live[4, -1] == 500  # everything above the reference's range: the open bin


def _config(**kw: float) -> DriftConfig:
    base = {"window_s": 60.0, "step_s": 10.0, "min_rows": 100}
    return DriftConfig(**{**base, **kw})


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


def _monitor(clock: Clock, **kw: float) -> tuple[DriftMonitor, Reference]:
    x = RNG.normal(0, 1, (2000, 3))
    ref = build_reference(x, (3,), labels=RNG.integers(0, 4, 2000), label_names="abcd")
    return DriftMonitor(_config(**kw), {"v1": ref, "v2": ref, "v3": None}, clock=clock), ref


def _payload(ref: Reference, x: np.ndarray, labels: np.ndarray) -> dict:
    return {"rows": len(x), "channels": ref.bin_inputs(x, (3,)).tolist(),
            "answers": ref.bin_answers(labels, None).tolist()}


def test_windows_age_out_on_the_injected_clock() -> None:
    clock = Clock()
    mon, ref = _monitor(clock)
    shifted = RNG.normal(2.0, 1.0, (500, 3))
    mon.add("v1", _payload(ref, shifted, RNG.integers(0, 4, 500)))
    first = mon.version_report("v1")
    assert first["rows"] == 500 and first["status"] == "alert"
    assert first["max_psi"] > 0.2
    clock.t += 30
    assert mon.version_report("v1")["rows"] == 500  # still inside the 60 s window
    clock.t += 31
    gone = mon.version_report("v1")
    assert gone["rows"] == 0 and gone["status"] == "warming up" and not gone["alerts"]


def test_an_unshifted_version_stays_quiet_and_no_reference_says_so() -> None:
    clock = Clock()
    mon, ref = _monitor(clock)
    same = RNG.normal(0.0, 1.0, (800, 3))
    mon.add("v2", _payload(ref, same, RNG.integers(0, 4, 800)))
    mon.add("v3", {"rows": 800, "channels": [[1, 2]], "answers": []})
    rep = mon.report(["v2", "v3"], baseline="v2")
    assert rep["versions"]["v2"]["status"] == "ok"
    assert rep["versions"]["v2"]["max_psi"] < 0.05
    assert rep["versions"]["v3"]["status"] == "no reference"


def test_alert_is_logged_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    seen: list[dict] = []
    mon, ref = _monitor(clock)
    mon.on_alert = seen.append
    shifted = RNG.normal(3.0, 1.0, (500, 3))
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        for _ in range(5):  # one window: every report sees it, one log line per alert
            mon.add("v1", _payload(ref, shifted, np.zeros(500, dtype=int)))
            mon.version_report("v1")
            clock.t += 5
        per_window = len(seen)
        assert per_window > 0
        assert {(a["statistic"], a["channel"]) for a in seen} >= {("psi", "ch0"), ("ks", "ch0")}
        clock.t += 60  # the next window: the same alerts are raised once more
        mon.add("v1", _payload(ref, shifted, np.zeros(500, dtype=int)))
        mon.version_report("v1")
    assert len(seen) == 2 * per_window
    logged = [r.getMessage() for r in caplog.records if "drift alert" in r.getMessage()]
    assert len(logged) == 2  # one line per window, naming every new alert
    assert "version v1: psi on ch0 = " in logged[0] and "ks on ch2" in logged[0]
    assert mon.alert_counts[("v1", "psi")] == 2 * 3


def test_labels_against_the_baseline_over_the_same_window() -> None:
    clock = Clock()
    mon, ref = _monitor(clock, label_js_alert=0.2)
    x = RNG.normal(0.0, 1.0, (600, 3))
    mon.add("v1", _payload(ref, x, RNG.integers(0, 4, 600)))
    mon.add("v2", _payload(ref, x, np.zeros(600, dtype=int)))  # only label a
    v2 = mon.version_report("v2", baseline="v1")
    assert v2["labels"]["baseline"]["js"] > 0.5
    assert v2["labels"]["baseline"]["p_value"] < 1e-6
    assert {a["channel"] for a in v2["alerts"] if a["statistic"] == "label_js"} == {
        "reference", "baseline"}
    assert mon.version_report("v1", baseline="v1")["labels"].get("baseline") is None


def test_window_accuracy_from_feedback() -> None:
    clock = Clock()
    mon, _ = _monitor(clock)
    for i in range(10):
        mon.add_feedback("v1", i < 7)
    assert mon.version_report("v1")["accuracy"] == {"correct": 7, "labelled": 10,
                                                    "accuracy": 0.7}
    clock.t += 61
    assert mon.version_report("v1")["accuracy"] is None


def test_config_refuses_a_step_longer_than_the_window() -> None:
    with pytest.raises(ValueError, match=r"drift.step_s"):
        DriftConfig(window_s=10, step_s=20)


def test_a_window_with_too_few_rows_is_not_judged() -> None:
    clock = Clock()
    mon, ref = _monitor(clock)
    shifted = RNG.normal(3.0, 1.0, (60, 3))
    mon.add("v1", _payload(ref, shifted, np.zeros(60, dtype=int)))
    rep = mon.version_report("v1")
    assert rep["status"] == "warming up" and rep["alerts"] == [] and rep["rows"] == 60
    mon.add("v1", _payload(ref, shifted, np.zeros(60, dtype=int)))
    assert mon.version_report("v1")["status"] == "alert"  # 120 rows: judged


def test_the_router_buffer_only_appends_is_bounded_and_bins_like_the_reference() -> None:
    from router.controlplane.drift import DriftBuffer

    clock = Clock()
    mon, ref = _monitor(clock)
    buf = DriftBuffer({"v1": ref, "v3": None}, max_rows=250)
    a, b = RNG.normal(0, 1, (100, 3)), RNG.normal(1, 1, (100, 3))
    outputs = np.zeros((100, 4))
    buf.append("v1", a, np.ones(100, dtype=int), outputs)
    buf.append("v1", b, np.full(100, 2), outputs)
    buf.append("v1", b, np.full(100, 2), outputs)  # past max_rows: dropped, not kept
    buf.append("v3", a, None, outputs)  # no reference: ignored
    assert buf.dropped == 100
    pending = buf.take()
    assert [p[1] is a or p[1] is b for p in pending] == [True, True]  # references, no copies
    binned = buf.bin(pending)
    assert set(binned) == {"v1"} and binned["v1"]["rows"] == 200
    both = np.concatenate([a, b])
    assert binned["v1"]["channels"] == ref.bin_inputs(both, (3,)).tolist()
    assert binned["v1"]["answers"] == [0, 100, 100, 0]
    assert buf.take() == []
    buf.keep(binned)  # a failed sync: the counts travel with the next report
    again = buf.bin([("v1", a, np.ones(100, dtype=int), outputs)])
    assert again["v1"]["rows"] == 300
    assert again["v1"]["answers"] == [0, 200, 100, 0]


def test_the_service_keeps_windows_from_syncs_and_feedback_and_reports_them(
    tmp_path: Path,
) -> None:
    from router.controlplane.messages import SyncReport
    from router.controlplane.service import ExperimentService
    from router.controlplane.store import FileStore
    from serve.config import parse_config

    config = parse_config({
        "models": [{"version": "v1"}, {"version": "v2"}, {"version": "v3"}],
        "experiment": {"name": "e", "baseline": "v1", "arms": [
            {"version": "v1", "weight": 50}, {"version": "v2", "weight": 50},
            {"version": "v3", "weight": 0}]},
        "drift": {"window_s": 60, "step_s": 10, "min_rows": 100},
    })
    clock = Clock()
    _, ref = _monitor(clock)
    svc = ExperimentService(config, FileStore(tmp_path, "t"), clock=clock,
                            references={"v1": ref, "v2": ref, "v3": None})
    shifted = RNG.normal(2.5, 1.0, (300, 3))
    same = RNG.normal(0.0, 1.0, (300, 3))
    reply = svc.sync("r", SyncReport(
        metrics={}, shadows={}, served=[("q1", "v2", 1), ("q2", "v2", 0)],
        drift={"v1": _payload(ref, same, RNG.integers(0, 4, 300)),
               "v2": _payload(ref, shifted, RNG.integers(0, 4, 300))}))
    assert reply.drift["v1"].startswith("ok") and reply.drift["v2"].startswith("ALERT psi")
    assert reply.drift["v3"] == "no reference"
    svc.record_feedback("q1", 1)
    svc.record_feedback("q2", 3)
    drift = svc.report()["drift"]
    assert drift["versions"]["v2"]["accuracy"] == {"correct": 1, "labelled": 2,
                                                   "accuracy": 0.5}
    assert drift["versions"]["v2"]["status"] == "alert"
    assert drift["versions"]["v1"]["status"] == "ok"
    clock.t += 61  # the window moved on: its rows aged out
    assert svc.report()["drift"]["versions"]["v2"]["rows"] == 0


def test_drift_gate_fails_on_an_alert_passes_without_and_skips_while_warming() -> None:
    from router.controlplane.canary import GateConfig, check_gates
    from router.dataplane.measures import ArmMetrics

    gates = GateConfig(drift=True)
    alert = {"status": "alert", "rows": 500, "max_psi": 0.4, "max_ks": 0.2,
             "alerts": [{"statistic": "psi", "channel": "ch3", "value": 0.4,
                         "threshold": 0.2}]}
    ok = {"status": "ok", "rows": 500, "max_psi": 0.02, "max_ks": 0.01, "alerts": []}

    def gate(drift: dict | None) -> str:
        results, _ = check_gates(gates, ArmMetrics(), ArmMetrics(), drift=drift)
        return next(r for r in results if r.name == "drift").status

    assert gate(alert) == "fail"
    assert gate(ok) == "pass"
    assert gate({"status": "warming up"}) == "skip"
    assert gate(None) == "skip"
    results, _ = check_gates(GateConfig(), ArmMetrics(), ArmMetrics(), drift=alert)
    assert "drift" not in {r.name for r in results}  # off by default


def test_the_html_report_has_a_drift_chart_per_version() -> None:
    from router.controlplane.report_html import render_report_html

    clock = Clock()
    mon, ref = _monitor(clock)
    mon.add("v1", _payload(ref, RNG.normal(2.0, 1.0, (300, 3)), np.zeros(300, dtype=int)))
    report = {"arms": {}, "baseline": "v1", "drift": mon.report(["v1", "v3"], "v1")}
    html = render_report_html(report)
    assert "Drift of v1: PSI per input channel" in html and "<svg" in html
    assert "Drift of v3: no reference" in html
    assert "psi ch0" in html
