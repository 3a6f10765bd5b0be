"""The experiment report as one self-contained HTML page (inline SVG, no scripts).

Pure: takes the JSON report (``ExperimentController.report``) and returns a
string. No external assets, so the page works on an air-gapped cluster.
"""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["render_report_html"]

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
W, H, PAD = 640, 220, 40


def _fmt(value: Any, digits: int = 3, pct: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value * 100:.1f} %" if pct else f"{value:.{digits}g}"
    return escape(str(value))


def _share_series(history: list[dict[str, Any]], arms: list[str]) -> list[tuple[float, dict]]:
    """Traffic share per interval, from cumulative request counts."""
    series = []
    for prev, cur in zip(history, history[1:], strict=False):
        deltas = {
            a: cur["arms"].get(a, {}).get("requests", 0)
            - prev["arms"].get(a, {}).get("requests", 0)
            for a in arms
        }
        total = sum(deltas.values())
        if total > 0:
            series.append((cur["time"], {a: d / total for a, d in deltas.items()}))
    return series


def _line_chart(series: list[tuple[float, dict]], arms: list[str], title: str) -> str:
    if len(series) < 2:
        return f"<p><em>{escape(title)}: not enough history yet (one point per 10 s).</em></p>"
    t0, t1 = series[0][0], series[-1][0]
    span = max(t1 - t0, 1e-9)

    def xy(t: float, v: float) -> str:
        return f"{PAD + (t - t0) / span * (W - 2 * PAD):.1f},{H - PAD - v * (H - 2 * PAD):.1f}"

    lines = []
    for i, arm in enumerate(arms):
        pts = " ".join(xy(t, shares.get(arm, 0.0)) for t, shares in series)
        color = COLORS[i % len(COLORS)]
        lines.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        lines.append(f'<text x="{W - PAD + 4}" y="{PAD + 14 * i}" fill="{color}" '
                     f'font-size="12">{escape(arm)}</text>')
    axes = (f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#999"/>'
            f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#999"/>'
            f'<text x="4" y="{PAD + 4}" font-size="11">100%</text>'
            f'<text x="12" y="{H - PAD}" font-size="11">0%</text>'
            f'<text x="{PAD}" y="{H - 10}" font-size="11">last {span / 60:.1f} min</text>')
    return (f"<h3>{escape(title)}</h3><svg width='{W + 60}' height='{H}' role='img'>"
            f"{axes}{''.join(lines)}</svg>")


def _bar_chart(values: dict[str, tuple[float | None, float | None, float | None]], title: str,
               unit: str, scale_max: float | None = None) -> str:
    """Bars with optional error bars: {arm: (value, lo, hi)}."""
    present = {a: v for a, v in values.items() if v[0] is not None}
    if not present:
        return f"<p><em>{escape(title)}: no data yet.</em></p>"
    top = scale_max or max(max(v[0] or 0, v[2] or 0) for v in present.values()) * 1.15 or 1.0
    bw = (W - 2 * PAD) / max(len(values), 1)
    parts = []
    for i, (arm, (v, lo, hi)) in enumerate(values.items()):
        x = PAD + i * bw + bw * 0.2
        color = COLORS[i % len(COLORS)]
        if v is not None:
            h = v / top * (H - 2 * PAD)
            parts.append(f'<rect x="{x:.1f}" y="{H - PAD - h:.1f}" width="{bw * 0.6:.1f}" '
                         f'height="{h:.1f}" fill="{color}"/>')
            parts.append(f'<text x="{x:.1f}" y="{H - PAD - h - 4:.1f}" font-size="11">'
                         f"{v:.3g}{escape(unit)}</text>")
            if lo is not None and hi is not None:
                cx = x + bw * 0.3
                y_lo = H - PAD - lo / top * (H - 2 * PAD)
                y_hi = H - PAD - hi / top * (H - 2 * PAD)
                parts.append(f'<line x1="{cx:.1f}" y1="{y_lo:.1f}" x2="{cx:.1f}" '
                             f'y2="{y_hi:.1f}" stroke="#000"/>')
        parts.append(f'<text x="{x:.1f}" y="{H - PAD + 14}" font-size="12">{escape(arm)}</text>')
    return (f"<h3>{escape(title)}</h3><svg width='{W}' height='{H}' role='img'>"
            f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#999"/>'
            f"{''.join(parts)}</svg>")


def _interval(ci: Any) -> str:
    if not ci:
        return "–"
    return f"{ci[0] * 100:+.1f} to {ci[1] * 100:+.1f} pp"


def _range(ci: Any) -> str:
    """An interval in the value's own units (an error, an AUC)."""
    return "–" if not ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def _p(value: Any) -> str:
    if value is None:
        return "–"
    return "&lt; 0.0001" if value < 1e-4 else f"{value:.2g}"


def _disagreement(r: dict[str, Any]) -> str:
    ci = r.get("disagreement_ci95")
    if r.get("disagreement") is None or not ci:
        return "–"
    return (f"{r['disagreement'] * 100:.1f} % of {_fmt(r.get('compared'))} "
            f"[{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]")


def _label_shift(r: dict[str, Any]) -> str:
    if r.get("label_shift") is None:
        return "–"
    return f"{r['label_shift']:.3f}, p {_p(r.get('label_shift_p_value'))}"


def _label_table(report: dict[str, Any]) -> str:
    """Each arm's predicted labels: the share of its own answers per class index."""
    dists = {a: r.get("label_distribution") for a, r in report["arms"].items()}
    present = {a: d for a, d in dists.items() if d}
    if not present:
        return ""
    classes = sorted({k for d in present.values() for k in d}, key=lambda k: (len(k), k))
    head = "".join(f"<th>{escape(k)}</th>" for k in classes)
    rows = "".join(
        f"<tr><th>{escape(a)}</th>"
        + "".join(f"<td>{_fmt(d.get(k), pct=True)}</td>" for k in classes) + "</tr>"
        for a, d in present.items()
    )
    return ("<h3>Predicted labels (share of each arm's own answers, by class index)</h3>"
            f"<table><tr><th>arm</th>{head}</tr>{rows}</table>")


def _statistics(report: dict[str, Any]) -> str:
    """Per candidate: sequential and fixed-horizon tests, latency, the quality without labels,
    verdict; the SRM check; the predicted labels."""
    alpha = report.get("alpha", 0.05)
    rows = []
    for arm, r in report["arms"].items():
        if r.get("baseline") or "seq_p_value" not in r:
            continue
        lat = r.get("latency_test") or {}
        reached = r.get("sample_size_reached")
        valid = ("valid (planned n reached)" if reached else
                 f"not yet valid (needs n = {r.get('min_sample_size')})"
                 if r.get("min_sample_size") else "–")
        shift = f"×{lat['shift_ratio']:.2f}, p {_p(lat.get('p_value'))}" if lat else "–"
        rows.append(
            f"<tr><th>{escape(arm)}</th><td>{_fmt(r.get('accuracy_delta'), pct=True)}</td>"
            f"<td>{_interval(r.get('seq_ci'))}</td><td>{_p(r.get('seq_p_value'))}</td>"
            f"<td>{_p(r.get('seq_p_value_holm'))}</td><td>{_fmt(r.get('seq_significant'))}</td>"
            f"<td>{_p(r.get('p_value'))}</td><td>{escape(valid)}</td><td>{shift}</td>"
            f"<td>{_disagreement(r)}</td><td>{_label_shift(r)}</td></tr>"
            f"<tr><td colspan='11' style='text-align:left'>{escape(str(r.get('verdict')))}"
            "</td></tr>"
        )
    srm = report.get("srm") or {}
    flagged = srm.get("flagged")
    style = " style='color:#b00;font-weight:bold'" if flagged else ""
    srm_html = (f"<p{style}>Sample ratio: {escape(str(srm.get('summary', '–')))}</p>"
                if srm else "")
    methods = "".join(f"<li><b>{escape(k)}</b>: {escape(v)}</li>"
                      for k, v in (report.get("methods") or {}).items())
    if not rows and not srm_html:
        return ""
    conf = f"{(1 - alpha) * 100:g} %"
    table = (
        "<table><tr><th>candidate</th><th>Δ accuracy</th>"
        f"<th>always-valid {conf} interval</th><th>sequential p</th><th>Holm p</th>"
        "<th>significant</th><th>z-test p</th><th>z-test validity</th>"
        "<th>latency (Mann-Whitney)</th><th>disagreement with the baseline (95 % CI)</th>"
        "<th>label shift (total variation, chi-square p)</th></tr>"
        + "".join(rows) + "</table>"
    ) if rows else ""
    return (f"<h2>Statistics</h2>{srm_html}{table}{_label_table(report)}"
            + (f"<details><summary>Methods</summary><ul>{methods}</ul></details>"
               if methods else ""))


def _kind_section(report: dict[str, Any]) -> str:
    """A regression model's errors per arm and its candidates' always-valid comparison of
    the mean absolute error; a binary model's AUC per arm. Empty for a multiclass model."""
    kind = report.get("kind", "multiclass")
    arms = report["arms"]
    if kind == "regression":
        rows = []
        for arm, r in arms.items():
            e = r.get("regression") or {}
            name = escape(arm) + (" (baseline)" if r.get("baseline") else "")
            rows.append(
                f"<tr><th>{name}</th><td>{_fmt(e.get('n'))}</td><td>{_fmt(e.get('mae'))} "
                f"{_range(e.get('mae_ci95'))}</td><td>{_fmt(e.get('rmse'))} "
                f"{_range(e.get('rmse_ci95'))}</td><td>{_fmt(e.get('r2'))}</td>"
                f"<td>{_fmt(r.get('mae_delta'))}</td><td>{_range(r.get('mae_seq_ci'))}</td>"
                f"<td>{_p(r.get('mae_seq_p_value'))}</td>"
                f"<td>{_p(r.get('mae_seq_p_value_holm'))}</td></tr>")
        return ("<h2>Errors on the true values (regression)</h2><table><tr><th>arm</th>"
                "<th>n</th><th>MAE (95 % CI)</th><th>RMSE (95 % CI)</th><th>R²</th>"
                "<th>Δ MAE vs baseline</th><th>always-valid interval</th><th>sequential p</th>"
                "<th>Holm p</th></tr>" + "".join(rows) + "</table>")
    if kind == "binary":
        rows = [f"<tr><th>{escape(arm)}</th><td>{_fmt(r.get('auc'))} "
                f"{_range(r.get('auc_ci95'))}</td><td>{_fmt(r.get('feedback_n'))}</td></tr>"
                for arm, r in arms.items()]
        return ("<h2>Ranking quality (binary)</h2><table><tr><th>arm</th><th>AUC (95 % CI)</th>"
                "<th>labels</th></tr>" + "".join(rows) + "</table>")
    return ""


def _drift_section(report: dict[str, Any]) -> str:
    """Per version its drift window: a table, and a chart of its channels' PSI."""
    drift = report.get("drift")
    if not drift or not drift.get("versions"):
        return ""
    thr = drift.get("thresholds", {})
    rows, charts = [], []
    for v, d in drift["versions"].items():
        labels = d.get("labels") or {}
        acc = d.get("accuracy") or {}
        alerts = "; ".join(f"{a['statistic']} {a['channel']} {a['value']:.3g}"
                           for a in d.get("alerts", ())) or "–"
        rows.append(
            f"<tr><th>{escape(v)}</th><td>{escape(str(d.get('status')))}</td>"
            f"<td>{_fmt(d.get('rows'))}</td><td>{_fmt(d.get('max_psi'))}</td>"
            f"<td>{_fmt(d.get('max_ks'))}</td>"
            f"<td>{_fmt((labels.get('reference') or {}).get('js'))}</td>"
            f"<td>{_fmt((labels.get('baseline') or {}).get('js'))}</td>"
            f"<td>{_fmt(acc.get('accuracy'), pct=True)}</td><td>{escape(alerts)}</td></tr>")
        if d.get("channels"):
            charts.append(_bar_chart(
                {c["name"]: (c["psi"], None, None) for c in d["channels"]},
                f"Drift of {v}: PSI per input channel (alert above {thr.get('psi_alert')})", ""))
        else:
            charts.append(f"<p><em>Drift of {escape(v)}: {escape(str(d.get('status')))}."
                          "</em></p>")
    return (f"<h2>Drift (window {_fmt(drift.get('window_s'))} s)</h2>"
            "<table><tr><th>version</th><th>status</th><th>rows</th><th>max PSI</th>"
            "<th>max KS</th><th>labels JS vs reference</th><th>labels JS vs baseline</th>"
            f"<th>window accuracy</th><th>alerts</th></tr>{''.join(rows)}</table>"
            f"<p>alert: PSI &gt; {_fmt(thr.get('psi_alert'))}, KS &gt; "
            f"{_fmt(thr.get('ks_alert'))}, labels JS &gt; {_fmt(thr.get('label_js_alert'))}; "
            f"judged from {_fmt(thr.get('min_rows'))} rows in the window</p>{''.join(charts)}")


def render_report_html(report: dict[str, Any]) -> str:
    arms = list(report["arms"])
    rows = []
    cols = [("requests", "requests", False), ("traffic_share", "share", True),
            ("weight", "weight %", False), ("error_rate", "errors", True),
            ("fallback_rate", "fallbacks", True), ("p50_ms", "p50 ms", False),
            ("p99_ms", "p99 ms", False), ("accuracy", "accuracy", True),
            ("feedback_n", "feedback n", False), ("p_value", "z-test p", False),
            ("significant", "significant", False), ("sample_size_reached", "n reached", False),
            ("disagreement", "disagreement", True), ("compared", "compared n", False)]
    for arm, row in report["arms"].items():
        ci = row.get("accuracy_ci95")
        ci_txt = f" [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]" if ci and row.get("accuracy") else ""
        cells = []
        for key, _, pct in cols:
            text = _fmt(row.get(key), pct=pct)
            cells.append(f"<td>{text}{ci_txt if key == 'accuracy' else ''}</td>")
        name = escape(arm) + (" (baseline)" if row.get("baseline") else "")
        rows.append(f"<tr><th>{name}</th>{''.join(cells)}</tr>")
    header = "".join(f"<th>{escape(label)}</th>" for _, label, _ in cols)
    shadows = "".join(
        f"<tr><th>{escape(v)}</th><td>{_fmt(s.get('compared'))}</td>"
        f"<td>{_fmt(s.get('agreement_rate'), pct=True)}</td>"
        f"<td>{_fmt(s.get('mean_abs_diff'))}</td>"
        f"<td>{_fmt(s.get('errors'))}</td><td>{_fmt(s.get('p99_ms'))}</td></tr>"
        for v, s in report.get("shadows", {}).items()
    )
    shadow_table = (
        "<h2>Shadow versions</h2><table><tr><th>version</th><th>compared</th><th>agreement</th>"
        f"<th>mean |Δp|</th><th>errors</th><th>p99 ms</th></tr>{shadows}</table>"
        if shadows else ""
    )
    Bars = dict[str, tuple[float | None, float | None, float | None]]
    latency: Bars = {a: (r.get("p99_ms"), None, None) for a, r in report["arms"].items()}
    accuracy: Bars = {
        a: (r.get("accuracy"), *(r.get("accuracy_ci95") or (None, None)))
        if r.get("accuracy") is not None else (None, None, None)
        for a, r in report["arms"].items()
    }
    return f"""<!doctype html>
<html><head><meta charset="utf-8">
<title>abserve report: {escape(str(report.get("experiment")))}</title>
<meta http-equiv="refresh" content="10">
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th:first-child{{text-align:left}}</style></head><body>
<h1>Experiment {escape(str(report.get("experiment")))}</h1>
<p>revision {_fmt(report.get("revision"))} · baseline {escape(str(report["baseline"]))} ·
α = {_fmt(report.get("alpha"))} ·
minimum detectable effect {_fmt(report.get("min_detectable_effect"), pct=True)}
· refreshes every 10 s</p>
<table><tr><th>arm</th>{header}</tr>{''.join(rows)}</table>
{_kind_section(report)}
{_statistics(report)}
{shadow_table}
{_drift_section(report)}
{_line_chart(_share_series(report.get("history", []), arms), arms, "Traffic share over time")}
{_bar_chart(latency, "p99 latency per arm", " ms")}
{_bar_chart(accuracy, "Accuracy per arm (95 % CI)", "", scale_max=1.0)}
</body></html>"""
