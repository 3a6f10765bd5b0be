"""Commands of the admin API (they need ABSERVE_ADMIN_TOKEN): the experiment's weights,
shadows, arms and audit log; the automated canary; the experiment report.

Each one is one HTTP call to the running router (``--url``, default: the one
``abserve up`` recorded); the router checks the token, this side only sends it.
``--model NAME`` addresses that model's application, at ``/models/NAME``, with the
admin token of its config; the default model needs none.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from serve.cli.state import app_for_model, model_url, read_state
from serve.config import load_config
from serve.errors import AbserveError

__all__ = ["ADMIN_COMMANDS", "add_model_option", "add_parsers", "admin_call", "cmd_admin",
           "cmd_diff", "diff_lines",
           "cmd_canary", "cmd_report", "drift_lines", "print_experiment", "reassigned_warning"]


# The admin commands that are one call each, with their help.
ADMIN_COMMANDS = {
    "experiment": "show the live experiment (weights, baseline, revision)",
    "traffic": "set weights: abserve traffic v1=80 v2=20",
    "shadow": "set shadow versions: abserve shadow v3=20 (percent; no arguments: shadows off)",
    "add-candidate": "add a deployed version as an arm",
    "remove-arm": "remove a candidate; its weight returns to the baseline",
    "promote": "the candidate becomes the baseline",
    "rollback": "a candidate's weight to 0 at once (every candidate if none named)",
    "pause": "send all traffic to the baseline, keeping the weights",
    "resume": "resume the weights after a pause",
    "audit": "the audit log: time, who, operation, before, after",
}


def _admin_token(args: argparse.Namespace, state: dict[str, Any]) -> str:
    from router.http.auth import TOKEN_ENV, load_admin_token
    from serve.config import AdminConfig

    model = getattr(args, "model", None)
    recorded = app_for_model(state, model) if model else None
    config_path = (getattr(args, "config", None) or (recorded or {}).get("config")
                   or state.get("config"))
    admin = load_config(config_path).admin if config_path else AdminConfig()
    token = load_admin_token(admin)
    if token is None:
        raise AbserveError(f"no admin token: set {TOKEN_ENV} (or admin.token_file in the config)")
    return token.decode()


def _base_url(args: argparse.Namespace, state: dict[str, Any]) -> str:
    """The router to call: ``--url`` (or the recorded one), under ``/models/NAME`` when
    ``--model NAME`` is given."""
    base = str(args.url or state.get("url") or "http://127.0.0.1:8000")
    return model_url(base, getattr(args, "model", None))


def add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="NAME",
                        help="the model to address, at /models/NAME (default: the default "
                             "model, at /)")


def report_html_link(args: argparse.Namespace) -> str:
    """A link that opens the HTML report in a browser until it expires (``--valid`` minutes)."""
    from router.http.auth import REPORT_LINK_PARAM, report_link

    state = read_state()
    token = _admin_token(args, state).encode()
    link = report_link(token, args.valid * 60)
    return f"{_base_url(args, state)}/report?{REPORT_LINK_PARAM}={link}"


def admin_call(args: argparse.Namespace, method: str, path: str,
               body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One admin API call with the bearer token; a non-200 answer becomes an AbserveError."""
    import getpass

    import httpx

    state = read_state()
    url = _base_url(args, state)
    headers = {"Authorization": f"Bearer {_admin_token(args, state)}",
               "X-Admin-User": getpass.getuser()}
    r = httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=30)
    data = r.json()
    if r.status_code != 200:
        raise AbserveError(f"{r.status_code}: {data.get('error', data)}")
    return dict(data)


def reassigned_warning(reassigned: dict[str, Any] | None) -> str | None:
    """The line that tells the operator a change moved sticky users beyond the promise of
    docs/experiments.md (a change's ``reassigned``), or None when it kept it."""
    if not reassigned:
        return None
    return (f"warning: this change moved {reassigned['percent_of_users']:g}% of users beyond "
            f"the sticky-assignment promise ({reassigned['moves']}); see 'Sticky assignment' "
            "in docs/experiments.md")


def print_experiment(data: dict[str, Any]) -> None:
    """The experiment, and after a change the warning when it reassigned users."""
    exp = data["experiment"]
    paused = "  PAUSED (all traffic to the baseline)" if data.get("paused") else ""
    print(f"experiment {exp['name']}  revision {data['revision']}  baseline {exp['baseline']}"
          f"  by {data.get('updated_by')}{paused}")
    eff = data.get("effective_weights", {})
    for s in exp.get("shadows", []):
        print(f"  shadow {s['version']}: {s['percent']:g}% of requests copied")
    for arm in exp["arms"]:
        mark = " (baseline)" if arm["version"] == exp["baseline"] else ""
        effective = eff.get(arm["version"], 0)
        print(f"  {arm['version']:<10}{arm['weight']:>7g}%  effective {effective:g}%{mark}")
    warning = reassigned_warning(data.get("reassigned"))
    if warning:
        print(warning, file=sys.stderr)


def _parse_weights(pairs: list[str]) -> dict[str, float]:
    weights = {}
    for pair in pairs:
        version, sep, value = pair.partition("=")
        if not sep:
            raise AbserveError(f"expected VERSION=PERCENT, got {pair!r}")
        try:
            weights[version] = float(value)
        except ValueError:
            raise AbserveError(f"{pair!r}: {value!r} is not a number") from None
    return weights


def cmd_admin(args: argparse.Namespace) -> int:
    op = args.command
    if op == "experiment":
        print_experiment(admin_call(args, "GET", "/admin/experiment"))
    elif op == "traffic":
        print_experiment(admin_call(args, "PUT", "/admin/weights",
                                      {"weights": _parse_weights(args.weights)}))
    elif op == "shadow":
        shares = _parse_weights(args.shares)  # VERSION=PERCENT, as weights
        shadows = [{"version": v, "percent": s} for v, s in shares.items()]
        print_experiment(admin_call(args, "PUT", "/admin/shadows", {"shadows": shadows}))
    elif op == "add-candidate":
        print_experiment(admin_call(args, "POST", "/admin/candidates",
                                      {"version": args.version, "weight": args.weight}))
    elif op == "remove-arm":
        print_experiment(admin_call(args, "DELETE", f"/admin/candidates/{args.version}"))
    elif op in ("promote", "rollback"):
        body = {"version": args.version} if args.version else {}
        print_experiment(admin_call(args, "POST", f"/admin/{op}", body))
    elif op in ("pause", "resume"):
        print_experiment(admin_call(args, "POST", f"/admin/{op}"))
    elif op == "audit":
        for e in admin_call(args, "GET", f"/admin/audit?limit={args.limit}")["entries"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
            before = (e.get("before") or {}).get("weights")
            moved = e.get("reassigned")
            note = (f"  (moved {moved['percent_of_users']:g}% of users: {moved['moves']})"
                    if moved else "")
            print(f"{when}  r{e['revision']:<4} {e['who']:<12} {e['operation']:<14} "
                  f"{before} -> {e['after']['weights']}{note}")
    return 0


REPLAY_PENDING = ("waiting", "running")  # a replay gate's statuses before its verdict


def _replay_line(replay: dict[str, Any]) -> str:
    numbers = ""
    if replay.get("agreement_percent") is not None:
        numbers = (f" ({replay['agreement_percent']:.2f}% agreement on {replay['rows']:,} "
                   "rows)")
    elif replay.get("rows") is not None:
        numbers = f" ({replay['rows']:,} rows)"
    return f"replay gate: {replay['status']}{numbers}: {replay.get('reason') or ''}"


def _print_canary(data: dict[str, Any]) -> None:
    plan, state = data.get("plan"), data.get("state")
    if not plan or not state:
        print("no canary plan")
        return
    steps = ", ".join(f"{s:g}" for s in plan["steps"])
    replay = data.get("replay")
    status = state["status"]
    if replay and status == "pending" and replay.get("status") in REPLAY_PENDING:
        status = "pending (waiting for replay)"
    print(f"canary {plan['candidate']} vs {plan['baseline']}: {status}, "
          f"step {state['step'] + 1}/{len(plan['steps'])} at {state['weight']:g}%  "
          f"(steps {steps}; every {plan['interval_s']:g}s, >= {plan['min_requests']} requests)")
    if replay:
        print(f"  {_replay_line(replay)}")
    for d in state.get("history", [])[-10:]:
        when = time.strftime("%H:%M:%S", time.localtime(d["time"]))
        print(f"  {when} {d['action']:<9} {d['verdict']:<7} {d['weight']:g}% -> "
              f"{d['new_weight']:g}%  {'; '.join(d['reasons'])}")


def cmd_canary(args: argparse.Namespace) -> int:
    if args.action == "start":
        if not args.candidate:
            raise AbserveError("canary start needs the candidate version")
        plan: dict[str, Any] = {"candidate": args.candidate, "interval_s": args.interval,
                                "min_requests": args.min_requests,
                                "steps": [float(s) for s in args.steps.split(",")]}
        if args.gates:
            plan["gates"] = json.loads(args.gates)
        if args.require_replay:  # the plan's replay gate: the controller runs it first
            location = args.require_replay
            plan["replay"] = {
                "log": location if "://" in location else str(Path(location).resolve()),
                "min_agreement_percent": args.min_agreement, "min_rows": args.min_rows,
                "since_hours": args.since_hours}
        data = admin_call(args, "POST", "/admin/canary", plan)
        _print_canary(data)
        if args.require_replay and not args.no_wait:
            _print_canary(_wait_for_replay(args, data))
    elif args.action == "status":
        _print_canary(admin_call(args, "GET", "/admin/canary"))
    else:
        _print_canary(admin_call(args, "POST", f"/admin/canary/{args.action}"))
    return 0


def _wait_for_replay(args: argparse.Namespace, data: dict[str, Any],
                     poll_s: float = 1.0) -> dict[str, Any]:
    """The canary status once the plan's replay gate has its verdict; AbserveError when it
    refused the plan (or the plan was aborted meanwhile). Interrupted, the replay goes on
    in the controller (`abserve canary status` shows it)."""
    shown = None
    while ((data.get("replay") or {}).get("status")) in REPLAY_PENDING:
        replay = data["replay"]
        if replay["status"] != shown:
            print(_replay_line(replay), flush=True)
            shown = replay["status"]
        time.sleep(poll_s)
        data = admin_call(args, "GET", "/admin/canary")
    replay = data.get("replay") or {}
    if replay.get("status") == "refused":
        raise AbserveError(f"canary refused: {replay.get('reason')}")
    if replay.get("status") == "aborted":
        raise AbserveError(f"canary aborted before its replay's verdict: {replay.get('reason')}")
    return data


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def diff_lines(declared: Any, live: dict[str, Any], canary: dict[str, Any],
               path: str) -> tuple[list[str], bool]:
    """What `abserve diff` prints, and whether the live experiment is what the file says."""
    from router.controlplane.experiment import ExperimentState, experiment_diff

    state = ExperimentState.from_dict(live)
    ours = declared.digest
    made_on = state.config_revision or "unknown (before config revisions)"
    lines = [f"{path}: config revision {ours}",
             f"live: experiment revision {state.revision}, made on config revision {made_on}, "
             f"{state.live_changes} live change(s) since, last by {state.updated_by}"]
    rows = experiment_diff(declared, state)
    plan, cstate = canary.get("plan"), canary.get("state")
    live_canary = (f"{plan['candidate']} {cstate['status']} at {cstate['weight']:g}%"
                   if plan and cstate else None)
    file_canary = None if declared.canary is None else (
        f"{declared.canary.candidate} (steps {','.join(f'{s:g}' for s in declared.canary.steps)})")
    same_canary = (declared.canary is not None and plan is not None
                   and plan["candidate"] == declared.canary.candidate
                   and state.config_revision == ours)  # the declared plan, started by it
    if (file_canary or live_canary) and not same_canary:
        rows.append(("canary", file_canary, live_canary))
    if rows:
        width = max(len(r[0]) for r in rows) + 2
        lines.append(f"  {'field':<{width}}{'file':<22}live")
        lines += [f"  {f:<{width}}{_shown(a):<22}{_shown(b)}" for f, a, b in rows]
    if state.config_revision != ours:
        lines.append("the live state was made on another config revision than this file's: "
                     "deploying this file (abserve up, serve deploy) replaces it, and the audit "
                     "log records what it replaced")
    elif rows:
        lines.append("the live changes above override this config revision; they stay until "
                     "a new config revision is deployed (edit the file, then abserve up or "
                     "serve deploy)")
    else:
        lines.append("the live experiment is what the file declares")
    return lines, not rows and state.config_revision == ours


def cmd_diff(args: argparse.Namespace) -> int:
    """The live experiment against the config file; exit 1 when they differ (as diff)."""
    from router.controlplane.experiment import Declaration

    path = args.config or read_state().get("config") or "abserve.yaml"
    declared = Declaration.of(load_config(path))
    lines, same = diff_lines(declared, admin_call(args, "GET", "/admin/experiment"),
                             admin_call(args, "GET", "/admin/canary"), path)
    print("\n".join(lines))
    return 0 if same else 1


def cmd_report(args: argparse.Namespace) -> int:
    if getattr(args, "html", False):
        print(report_html_link(args))
        print(f"(opens the HTML report for {args.valid:g} min; it grants nothing else)",
              file=sys.stderr)
        return 0
    report = admin_call(args, "GET", "/admin/report")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"experiment {report.get('experiment')}  revision {report.get('revision')}  "
          f"baseline {report['baseline']}  alpha {report['alpha']}")
    head = (f"{'arm':<8}{'requests':>9}{'share':>8}{'weight':>8}{'errors':>8}{'fallbk':>8}"
            f"{'p50ms':>8}{'p99ms':>8}{'accuracy':>10}{'95% CI':>16}{'n':>6}{'p-value':>9}"
            f"{'n ok':>6}")
    print(head)

    def pct(x: Any) -> str:
        return "-" if x is None else f"{x * 100:.1f}%"

    def num(x: Any, spec: str = ".1f") -> str:
        return "-" if x is None else format(x, spec)

    for arm, r in report["arms"].items():
        ci = r.get("accuracy_ci95")
        ci_txt = f"[{ci[0] * 100:.1f},{ci[1] * 100:.1f}]" if ci and r.get("accuracy") else "-"
        reached = "-" if r.get("sample_size_reached") is None else str(r["sample_size_reached"])
        print(f"{arm + ('*' if r.get('baseline') else ''):<8}{r['requests']:>9}"
              f"{pct(r.get('traffic_share')):>8}{num(r.get('weight'), 'g'):>8}"
              f"{pct(r.get('error_rate')):>8}{pct(r.get('fallback_rate')):>8}"
              f"{num(r.get('p50_ms')):>8}{num(r.get('p99_ms')):>8}{pct(r.get('accuracy')):>10}"
              f"{ci_txt:>16}{r.get('feedback_n', 0):>6}{num(r.get('p_value'), '.4f'):>9}"
              f"{reached:>6}")
    for version, s in report.get("shadows", {}).items():
        print(f"shadow {version}: compared {s['compared']}, agreement {pct(s['agreement_rate'])},"
              f" mean |dp| {num(s['mean_abs_diff'], '.4f')}, errors {s['errors']}, "
              f"p99 {num(s['p99_ms'])} ms")
    print("* baseline; p-value: two-proportion z-test of accuracy against the baseline, valid "
          "only read once at the planned n (n ok); act on the sequential test below")
    for line in _kind_lines(report):
        print(line)
    for line in _statistics_lines(report):
        print(line)
    for line in drift_lines(report.get("drift")):
        print(line)
    return 0


def drift_lines(drift: dict[str, Any] | None) -> list[str]:
    """The report's drift section: per version its window's worst channel, labels, accuracy
    and alerts; "no reference" for a version registered without reference statistics."""
    if not drift or not drift.get("versions"):
        return []
    thr = drift.get("thresholds", {})
    lines = [f"drift over the last {drift.get('window_s'):g} s (alert: PSI > "
             f"{thr.get('psi_alert')}, KS > {thr.get('ks_alert')}, labels JS > "
             f"{thr.get('label_js_alert')}; from {thr.get('min_rows')} rows):"]
    for v, d in drift["versions"].items():
        status = d.get("status")
        if status in ("no reference", "warming up"):
            lines.append(f"  {v}: {status} ({d.get('rows', 0)} rows in the window)")
            continue
        worst = max(d.get("channels") or [{}], key=lambda c: c.get("psi", 0.0))
        labels = d.get("labels") or {}
        parts = [f"{d['rows']} rows", f"max PSI {d.get('max_psi', 0):.3f} ({worst.get('name')})",
                 f"max KS {d.get('max_ks', 0):.3f}"]
        for against in ("reference", "baseline"):
            if against in labels:
                parts.append(f"labels JS vs {against} {labels[against]['js']:.3f} "
                             f"(chi2 p {labels[against]['p_value']:.2g})")
        acc = d.get("accuracy")
        if acc:
            parts.append(f"window accuracy {acc['accuracy'] * 100:.1f}% of {acc['labelled']}")
        lines.append(f"  {v}: {status.upper() if status == 'alert' else status}: "
                     + ", ".join(parts))
        by_statistic: dict[str, list[dict[str, Any]]] = {}
        for a in d.get("alerts", ()):
            by_statistic.setdefault(a["statistic"], []).append(a)
        for statistic, alerts in by_statistic.items():
            where = ", ".join(f"{a['channel']} {a['value']:.3f}" for a in alerts)
            lines.append(f"    ALERT {statistic} > {alerts[0]['threshold']}: {where}")
    return lines


def _kind_lines(report: dict[str, Any]) -> list[str]:
    """A regression model's errors per arm (MAE, RMSE with 95 % intervals, R²) and its
    candidates' always-valid MAE comparison; a binary model's AUC per arm."""
    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.4g}"

    def rng(ci: Any) -> str:
        return "-" if not ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]"

    kind = report.get("kind", "multiclass")
    lines: list[str] = []
    if kind == "regression":
        lines.append(f"{'arm':<8}{'n':>7}{'MAE':>10}{'95% CI':>22}{'RMSE':>10}{'95% CI':>22}"
                     f"{'R2':>8}  (regression: errors on the true values fed back)")
        for arm, r in report["arms"].items():
            e = r.get("regression") or {}
            lines.append(f"{arm + ('*' if r.get('baseline') else ''):<8}{e.get('n', 0):>7}"
                         f"{num(e.get('mae')):>10}{rng(e.get('mae_ci95')):>22}"
                         f"{num(e.get('rmse')):>10}{rng(e.get('rmse_ci95')):>22}"
                         f"{num(e.get('r2')):>8}")
        for arm, r in report["arms"].items():
            if r.get("baseline") or r.get("mae_seq_p_value") is None:
                continue
            word = "significant" if r.get("mae_seq_significant") else "not significant"
            lines.append(f"{arm} MAE - {report['baseline']} MAE: {num(r.get('mae_delta'))}, "
                         f"always-valid interval {rng(r.get('mae_seq_ci'))}, p "
                         f"{num(r.get('mae_seq_p_value'))}, Holm p "
                         f"{num(r.get('mae_seq_p_value_holm'))}: {word}")
    elif kind == "binary":
        for arm, r in report["arms"].items():
            lines.append(f"{arm}: AUC {num(r.get('auc'))} {rng(r.get('auc_ci95'))} over "
                         f"{r.get('feedback_n', 0)} labels")
    return lines


def _statistics_lines(report: dict[str, Any]) -> list[str]:
    """Per candidate: the sequential test, the z-test with its validity, the latency test, the
    quality without labels (disagreement, label shift) and the verdict; then the sample-ratio
    check and each arm's predicted labels (router/controlplane/analysis.py)."""
    def pp(x: Any) -> str:
        return "-" if x is None else f"{x * 100:+.1f}"

    def p(x: Any) -> str:
        return "-" if x is None else ("<0.0001" if x < 1e-4 else f"{x:.2g}")

    alpha = report.get("alpha", 0.05)
    lines: list[str] = []
    for arm, r in report["arms"].items():
        if r.get("baseline") or "seq_p_value" not in r:
            continue
        lines.append(f"{arm} vs {report['baseline']}:")
        if r.get("seq_p_value") is None:
            lines.append("  sequential (mSPRT, always valid): not enough labels yet")
        else:
            lo, hi = r["seq_ci"]
            verdict = "significant" if r.get("seq_significant") else "not significant"
            lines.append(
                f"  sequential (mSPRT, always valid): delta {pp(r.get('accuracy_delta'))} pp, "
                f"{(1 - alpha) * 100:g}% interval [{pp(lo)}, {pp(hi)}] pp, p {p(r['seq_p_value'])}"
                f", Holm p {p(r.get('seq_p_value_holm'))}: {verdict}")
        if r.get("p_value") is not None:
            reached = r.get("sample_size_reached")
            need = r.get("min_sample_size")
            valid = ("valid: planned n reached" if reached else
                     f"not valid yet: needs {need} labels per arm" if need else "validity unknown")
            lines.append(f"  fixed-horizon z-test: p {p(r['p_value'])}, Holm p "
                         f"{p(r.get('p_value_holm'))} ({valid})")
        lat = r.get("latency_test")
        if lat is not None:
            lines.append(f"  latency (Mann-Whitney): typically x{lat['shift_ratio']:.2f}, "
                         f"P(slower) {lat['prob_slower']:.2f}, p {p(lat['p_value'])}")
        if "compared" in r:  # the quality without labels (reports since it was added)
            ci = r.get("disagreement_ci95")
            lines.append(
                f"  disagreement with {report['baseline']}: {r['disagreement'] * 100:.1f}% of "
                f"{r['compared']} compared rows, 95% Wilson [{ci[0] * 100:.1f}, "
                f"{ci[1] * 100:.1f}]" if r.get("disagreement") is not None and ci else
                f"  disagreement with {report['baseline']}: none compared yet "
                "(experiment.compare_percent)")
            lines.append(
                f"  label shift: total variation {r['label_shift']:.3f}, chi-square p "
                f"{p(r.get('label_shift_p_value'))}" if r.get("label_shift") is not None else
                "  label shift: not enough answers yet (50 on each side)")
        lines.append(f"  verdict: {r.get('verdict')}")
    srm = report.get("srm")
    if srm is not None:
        lines.append(f"sample ratio: {srm.get('summary')}")
    dists = {a: r.get("label_distribution") for a, r in report["arms"].items()}
    if any(dists.values()):
        lines.append("predicted labels (class index: share of the arm's own answers):")
        for arm, d in dists.items():
            if d:
                shares = ", ".join(f"{k} {v * 100:.1f}%" for k, v in d.items())
                lines.append(f"  {arm + ('*' if report['arms'][arm].get('baseline') else '')}: "
                             f"{shares}")
    return lines


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("canary", help="automated canary analysis: start | status | pause | "
                                      "resume | abort (admin API)")
    c.add_argument("action", choices=["start", "status", "pause", "resume", "abort"])
    c.add_argument("candidate", nargs="?")
    c.add_argument("--steps", default="5,10,25,50,100")
    c.add_argument("--interval", type=float, default=300.0, help="seconds per step, at least")
    c.add_argument("--min-requests", type=int, default=500, help="candidate requests per step")
    c.add_argument("--gates", help='JSON, rates in percent, e.g. '
                                   '\'{"max_fallback_percent": 2}\' (docs/experiments.md)')
    c.add_argument("--require-replay", metavar="LOCATION",
                   help="a replay gate in the plan: the controller replays the prediction "
                        "log at LOCATION with the candidate first and refuses the plan below "
                        "--min-agreement or --min-rows (docs/monitoring.md); the command "
                        "waits for the verdict")
    c.add_argument("--min-agreement", type=float, default=95.0, metavar="PERCENT",
                   help="--require-replay: the share of logged rows, in percent, whose label "
                        "(regression: values) the candidate must reproduce (default 95)")
    c.add_argument("--min-rows", type=int, default=100, metavar="N",
                   help="--require-replay: the least rows replayed (default 100)")
    c.add_argument("--since-hours", type=float, default=24.0, metavar="H",
                   help="--require-replay: replay the rows logged in the last H hours "
                        "(default 24)")
    c.add_argument("--no-wait", action="store_true",
                   help="--require-replay: post the plan and return; `abserve canary status` "
                        "shows the replay's verdict")
    c.add_argument("--url")
    c.add_argument("--config")
    add_model_option(c)
    c.set_defaults(func=cmd_canary)

    rp = sub.add_parser("report", help="the experiment report: per-arm traffic, errors, latency, "
                                       "accuracy with 95%% CI, predicted labels; per candidate "
                                       "the always-valid sequential test, the z-test, the "
                                       "latency test, disagreement and label shift against the "
                                       "baseline, the sample-ratio check and a verdict (admin "
                                       "API)")
    rp.add_argument("--json", action="store_true")
    rp.add_argument("--html", action="store_true",
                    help="print a signed link that opens the HTML report in a browser")
    rp.add_argument("--valid", type=float, default=60.0,
                    help="minutes the --html link stays valid (default 60)")
    rp.add_argument("--url")
    rp.add_argument("--config")
    add_model_option(rp)
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser("diff", help="the live experiment against the config file: what live "
                                    "changes override, and what deploying the file would "
                                    "replace; exit 1 when they differ (admin API)")
    d.add_argument("--url")
    d.add_argument("--config", "-c",
                   help="the config file (default: the one abserve up used)")
    add_model_option(d)
    d.set_defaults(func=cmd_diff)

    for name, text in ADMIN_COMMANDS.items():
        a = sub.add_parser(name, help=f"{text} (admin API; needs ABSERVE_ADMIN_TOKEN)")
        a.add_argument("--url")
        a.add_argument("--config", help="config whose admin.token_file to use")
        add_model_option(a)
        if name == "traffic":
            a.add_argument("weights", nargs="+", metavar="VERSION=PERCENT")
        elif name == "shadow":
            a.add_argument("shares", nargs="*", metavar="VERSION=PERCENT")
        elif name in ("add-candidate", "remove-arm", "promote"):
            a.add_argument("version")
        elif name == "rollback":
            a.add_argument("version", nargs="?")
        if name == "add-candidate":
            a.add_argument("--weight", type=float, default=0.0)
        if name == "audit":
            a.add_argument("--limit", type=int, default=20)
        a.set_defaults(func=cmd_admin)
