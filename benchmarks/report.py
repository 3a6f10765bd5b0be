"""The bench's report: ratios, targets (PASS/FAIL with their numbers), markdown, JSON, PNG.

Everything here is plain Python over the measured numbers (no Ray, no
network), so the targets' arithmetic is testable in microseconds. It also
renders an older bench.json (no (f), no (n), no ``ratio_f``, no ``ratio_n``, no
``system``, no ``not_run``), as docs/data/ may hold one: its stored targets are
shown as they were judged, and its table has no × (n) column.

(n), the no-op Serve replica, is context, not a target: each row's ``ratio_n``
is its req/s over (n)'s (like with like: not for the concurrency-1 rows nor the
rate-limited open loop), and the text names (d)'s and (c)'s share of it.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_VARIANTS", "SYSTEMS", "build", "chart", "cpu_per_request", "machine_info",
           "markdown", "targets", "write_all"]

ROUTER_RSS_LIMIT_MB = 400.0
BACKGROUND_WARN_PCT = 30.0
DEFAULT_VARIANTS = ("a", "b", "c", "d", "e", "f", "n")
# Variant l's windows, in the order they run, on one deployment with the log switched live:
# off1, log1, off2, log2, ..., log{pairs}, off{pairs + 1}. Each log-on window is read against
# the mean of the off windows on either side of it, so that a drift slower than a window
# cancels; the pairs' ratios give the mean and its interval.
LOG_PAIRS = 2  # the default; ABSERVE_BENCH_LOG_PAIRS sets it for one run


def log_windows(pairs: int = LOG_PAIRS) -> tuple[str, ...]:
    """Variant l's window names, in the order they run."""
    return ("off1", *(w for k in range(1, pairs + 1) for w in (f"log{k}", f"off{k + 1}")))


_LOG_WINDOW = re.compile(r"^(?P<v>[ce])-(?P<state>off|log)(?P<k>[0-9]+)$")


def log_window(name: str) -> tuple[str, bool, int] | None:
    """A variant l window's (variant, log on, window number), or None for any other row."""
    m = _LOG_WINDOW.match(name)
    return None if m is None else (m["v"], m["state"] == "log", int(m["k"]))


# The table's order; variant l's windows follow their variant, in run order (``_order``).
ORDER = ("a", "b", "b1", "n", "f", "c", "c-open", "d", "e", "e-shadow")
CONCURRENCY_1 = ("b1", "e", "e-shadow")  # and (e)'s log windows
# Each variant's system in words, next to its letter in the table and the chart.
SYSTEMS = {
    "a": "naive FastAPI",
    "b": "plain Ray Serve",
    "b1": "plain Ray Serve, c=1",
    "n": "Serve no-op (ceiling)",
    "f": "MLServer",
    "c": "abserve miss 90/10",
    "c-open": "abserve miss open loop",
    "d": "abserve hit",
    "e": "abserve c=1",
    "e-shadow": "abserve c=1 + shadow",
}
_LOG_WORDS = {"c": "abserve miss 90/10", "e": "abserve c=1"}


def system(name: str) -> str:
    window = log_window(name)
    if window is not None:
        variant, on, k = window
        return f"{_LOG_WORDS[variant]}, log {'on' if on else 'off'} ({k})"
    return SYSTEMS.get(name, name)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _wrk_version() -> str:
    binary = shutil.which("wrk")
    if not binary:
        return "absent"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].strip() if first else "unknown"


def machine_info(opts: Any, cores: int) -> dict[str, Any]:
    from importlib import metadata

    try:
        ray_version = metadata.version("ray")  # without importing it
    except metadata.PackageNotFoundError:
        ray_version = "absent"
    return {
        "cores": cores,
        "cpu_model": _cpu_model(),
        "ingress": opts.ingress,
        "duration_s": opts.duration_s,
        "warmup_s": opts.warmup_s,
        "connections": opts.connections,
        "threads": opts.threads,
        "short": opts.short,
        "python": platform.python_version(),
        "ray": ray_version,
        "wrk": _wrk_version(),
        "platform": platform.platform(),
    }


def _ratio(x: float | None, ref: float | None) -> float | None:
    if x is None or not ref:
        return None
    return round(x / ref, 2)


def _at_concurrency_1(name: str) -> bool:
    window = log_window(name)
    return name in CONCURRENCY_1 or (window is not None and window[0] == "e")


def _order(name: str) -> tuple[int, int, int, int]:
    """Where a row goes in the table: ORDER's place; variant l's windows right after
    their variant, in run order (off k before log k); any other name at the end."""
    window = log_window(name)
    if window is not None:
        variant, on, k = window
        return ORDER.index(variant), 1, k, int(on)
    return (ORDER.index(name) if name in ORDER else len(ORDER)), 0, 0, 0


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    by = {k: v.to_dict() if hasattr(v, "to_dict") else dict(v) for k, v in results.items()}
    a = by.get("a", {}).get("rps")
    b = by.get("b", {}).get("rps")
    b1 = by.get("b1", {}).get("rps")
    f = by.get("f", {}).get("rps")
    n = by.get("n", {}).get("rps")
    rows = []
    for name in sorted(by, key=_order):
        row = dict(by[name])
        row.setdefault("system", system(name))
        if name == "c-open":  # rate-limited on purpose: a ratio would mean nothing
            row["ratio_a"] = row["ratio_b"] = row["ratio_f"] = row["ratio_n"] = None
        elif _at_concurrency_1(name):  # compared with the same concurrency only
            row["ratio_a"] = row["ratio_f"] = row["ratio_n"] = None
            row["ratio_b"] = _ratio(row["rps"], b1)
        else:
            row["ratio_a"] = _ratio(row["rps"], a)
            row["ratio_b"] = _ratio(row["rps"], b)
            row["ratio_f"] = _ratio(row["rps"], f)
            row["ratio_n"] = _ratio(row["rps"], n)
        rows.append(row)
    return rows


def _log_windows(by: dict[str, dict[str, Any]], variant: str, key: str
                 ) -> tuple[list[float], list[float]] | None:
    """Variant l's ``key`` over its windows: (the log-on values, the log-off values), in
    run order; None unless it ran at least off1, log1, off2 and every on window has its
    off window after it."""
    on: list[float] = []
    off: list[float] = []
    k = 1
    while f"{variant}-off{k}" in by:
        off.append(float(by[f"{variant}-off{k}"][key]))
        if f"{variant}-log{k}" not in by:
            break
        on.append(float(by[f"{variant}-log{k}"][key]))
        k += 1
    if not on or len(off) != len(on) + 1:
        return None
    return on, off


def _neighbours(off: list[float]) -> list[float]:
    """For each on window, the mean of the off windows either side of it."""
    return [(a + b) / 2 for a, b in zip(off, off[1:], strict=False)]


def _interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """A t interval for the mean of ``values``; None for fewer than two."""
    if len(values) < 2:
        return None
    import statistics

    from scipy import stats  # scikit-learn's own dependency

    mean = statistics.fmean(values)
    half = stats.t.ppf((1 + level) / 2, len(values) - 1) * statistics.stdev(values)
    half /= len(values) ** 0.5
    return mean - half, mean + half


def _figures(values: list[float], fmt: str) -> str:
    return " / ".join(format(v, fmt) for v in values)


def _target(name: str, ok: bool | None, detail: str) -> dict[str, Any]:
    status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
    return {"target": name, "status": status, "detail": detail}


def _missing(names: tuple[str, ...], by: dict[str, Any],
             not_run: dict[str, dict[str, str]]) -> tuple[bool | None, str]:
    """A target's status and detail when a variant it needs has no row.

    SKIP naming why: the reason a selected variant was skipped (MLServer's
    virtualenv could not be built, say), or the variants it needs; FAIL when one
    of them failed (its answers were wrong): a comparison with it cannot pass.
    """
    for n in names:
        if n not in by and not_run.get(n, {}).get("status") == "failed":
            return False, f"({n}) failed: {not_run[n]['reason']}"
    for n in names:
        if n not in by and n in not_run:
            return None, f"({n}) skipped: {not_run[n]['reason']}"
    return None, f"needs variant{'s' if len(names) > 1 else ''} {' and '.join(names)}"


def _throughput(label: str, row: str, ref: str, factor: float, by: dict[str, Any],
                not_run: dict[str, dict[str, str]]) -> dict[str, Any]:
    """``row``'s req/s >= ``factor`` x ``ref``'s."""
    x, r = by.get(row), by.get(ref)
    if not (x and r):
        return _target(label, *_missing((row, ref), by, not_run))
    if not r["rps"]:
        return _target(label, False, f"{ref} has 0 req/s")
    need = factor * r["rps"]
    return _target(label, x["rps"] >= need,
                   f"{row} {x['rps']:.0f} req/s vs {factor:g} x {ref} {r['rps']:.0f} = "
                   f"{need:.0f} (x{x['rps'] / r['rps']:.2f})")


def targets(rows: list[dict[str, Any]],
            not_run: dict[str, dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """The issue's targets, each PASS, FAIL or SKIP (a variant it needs did not run).

    ``not_run``: the variants selected but not measured, ``{name: {"status":
    "skipped" | "failed", "reason": ...}}``, so that a SKIP or FAIL says why.
    """
    not_run = not_run or {}
    by = {r["name"]: r for r in rows}
    c, e, b1 = by.get("c"), by.get("e"), by.get("b1")
    out = [
        _throughput("(c) >= 1.0x (f) req/s", "c", "f", 1.0, by, not_run),
        _throughput("(c) >= 0.8x (b) req/s", "c", "b", 0.8, by, not_run),
        _throughput("(c) >= 12x (a) req/s", "c", "a", 12.0, by, not_run),
    ]
    if c:
        out.append(_target("(c) p99 <= 150 ms", c["p99_ms"] <= 150.0,
                           f"c p99 {c['p99_ms']:.1f} ms"))
    else:
        out.append(_target("(c) p99 <= 150 ms", *_missing(("c",), by, not_run)))
    out.append(_throughput("(d) >= 3x (f) req/s", "d", "f", 3.0, by, not_run))
    label = "(e) p50 <= (b1) p50 + 1 ms"
    if e and b1:
        limit = b1["p50_ms"] + 1.0
        out.append(_target(label, e["p50_ms"] <= limit,
                           f"e p50 {e['p50_ms']:.2f} ms vs b1 p50 {b1['p50_ms']:.2f} + 1 = "
                           f"{limit:.2f} ms"))
    else:
        out.append(_target(label, *_missing(("b1", "e"), by, not_run)))
    es = by.get("e-shadow")
    if e and es:
        gap = es["p50_ms"] - e["p50_ms"]
        out.append(_target("shadow at 100 %: p50 within 1 ms of shadow off", gap <= 1.0,
                           f"e-shadow p50 {es['p50_ms']:.2f} ms vs e {e['p50_ms']:.2f} ms "
                           f"({gap:+.2f} ms)"))
    # The log's cost: variant l's log-on windows against the log-off windows around them,
    # all on one deployment (the same processes): the pairs' mean ratio, and its interval.
    c_win = _log_windows(by, "c", "rps")
    if c_win is not None:
        ons, offs = c_win
        pairs = [o / ref for o, ref in zip(ons, _neighbours(offs), strict=True)]
        share = sum(pairs) / len(pairs)
        ci = _interval(pairs)
        within = "" if ci is None else f", 95 % interval {ci[0]:.3f}-{ci[1]:.3f}x"
        out.append(_target("prediction log: (c) log on >= 0.95x log off req/s", share >= 0.95,
                           f"{share:.3f}x over {len(pairs)} on windows{within}; on "
                           f"{_figures(ons, ',.0f')} vs off {_figures(offs, ',.0f')} req/s"))
    e_win = _log_windows(by, "e", "p50_ms")
    if e_win is not None:
        ons, offs = e_win
        gaps = [o - ref for o, ref in zip(ons, _neighbours(offs), strict=True)]
        gap = sum(gaps) / len(gaps)
        ci = _interval(gaps)
        within = "" if ci is None else f", 95 % interval {ci[0]:+.2f} to {ci[1]:+.2f} ms"
        out.append(_target("prediction log: (e) log on p50 within 0.5 ms of log off",
                           gap <= 0.5,
                           f"{gap:+.2f} ms over {len(gaps)} on windows{within}; on "
                           f"{_figures(ons, '.2f')} vs off {_figures(offs, '.2f')} ms"))
    bad = [f"{r['name']}: {r['errors']} ({_error_text(r)})" for r in rows if r["errors"]]
    total = sum(r["requests"] for r in rows)
    out.append(_target("zero errors in every run", not bad if rows else None,
                       "; ".join(bad) if bad else f"0 errors in {total} requests"))
    # Per replica: the largest router process (a JSON from before process_rss_mb: the sum).
    router = [r.get("process_rss_mb", r["rss_mb"]).get("router") for r in rows]
    router = [mb for mb in router if mb is not None]
    if router:
        peak = max(router)
        replicas = max(len(r.get("notes", {}).get("pids", {}).get("router", [])) for r in rows)
        of = f" (the largest of {replicas} replicas)" if replicas > 1 else ""
        out.append(_target(f"router replica RSS < {ROUTER_RSS_LIMIT_MB:.0f} MB",
                           peak < ROUTER_RSS_LIMIT_MB, f"peak {peak:.0f} MB{of}"))
    else:
        out.append(_target(f"router replica RSS < {ROUTER_RSS_LIMIT_MB:.0f} MB", None,
                           "needs variant c, d or e"))
    return out


def _error_text(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in row.get("error_detail", {}).items() if v)


def build(results: dict[str, Any], opts: Any, machine: dict[str, Any],
          wall_s: float, not_run: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    rows = _rows(results)
    return {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": _command(opts),
        "machine": machine,
        "wall_s": round(wall_s, 1),
        "variants": rows,
        "not_run": dict(not_run or {}),
        "targets": targets(rows, not_run),
        "cpu_ms_per_request": cpu_per_request(rows),
    }


def _command(opts: Any) -> str:
    parts = ["abserve bench"]
    if opts.short:
        parts.append("--short")
    else:
        parts.append(f"--duration {opts.duration_s:g}")
    if opts.connections != 32:
        parts.append(f"--connections {opts.connections}")
    if opts.ingress != "throughput":
        parts.append(f"--ingress {opts.ingress}")
    if tuple(opts.variants) != DEFAULT_VARIANTS:
        parts.append(f"--variants {','.join(opts.variants)}")
    return " ".join(parts)


# ---------------------------------------------------------------- markdown


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _conns(row: dict[str, Any]) -> str:
    if row.get("tool") == "open-loop":
        return f"open loop {row['extra'].get('target_rate', 0):.0f}/s"
    return str(row["connections"])


def _ceiling_line(rows: list[dict[str, Any]]) -> str | None:
    """(n)'s req/s and (d)'s and (c)'s share of it; None without an (n) row."""
    by = {r["name"]: r for r in rows}
    n = by.get("n")
    if n is None:
        return None

    def share(name: str) -> str:
        row = by.get(name, {})
        return _num(row.get("ratio_n", _ratio(row.get("rps"), n["rps"])), ".2f")

    return (f"ceiling: one Serve replica doing no work: {n['rps']:.0f} req/s; "
            f"(d) is {share('d')} of it, (c) {share('c')}")


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    # × (n) only for a run that carries it: an older bench.json renders as it did.
    with_n = any("ratio_n" in r for r in data["variants"])
    lines = [
        f"Machine: {m['cores']} cores ({m['cpu_model']}), ingress mode `{m['ingress']}`, "
        f"{m['duration_s']:g} s per variant after {m['warmup_s']:g} s warm-up, "
        f"{m['wrk']}, Ray {m['ray']}, Python {m['python']}; {data['generated_at']}.",
        f"Command: `{data['command']}`",
        "",
        "| system | variant | description | connections | req/s | p50 ms | p99 ms | errors "
        "| CPU % | × (a) | × (b) | × (f) |" + (" × (n) |" if with_n else ""),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if with_n else ""),
    ]
    for r in data["variants"]:
        lines.append(
            f"| {r.get('system') or system(r['name'])} | {r['name']} | {r['description']} "
            f"| {_conns(r)} | {r['rps']:.0f} "
            f"| {_num(r['p50_ms'], '.2f')} | {_num(r['p99_ms'], '.2f')} | {r['errors']} "
            f"| {r['cpu_pct']:.0f} | {_num(r['ratio_a'], '.2f')} | {_num(r['ratio_b'], '.2f')} "
            f"| {_num(r.get('ratio_f'), '.2f')} |"
            + (f" {_num(r.get('ratio_n'), '.2f')} |" if with_n else "")
        )
    for name, why in data.get("not_run", {}).items():
        lines.append(f"| {system(name)} | {name} | **{why['status']}**: {why['reason']} "
                     "| | | | | | | | | |" + (" |" if with_n else ""))
    lines += [
        "",
        "CPU % is the server side's CPU time over the run (100 = one core): replicas, Serve's "
        "proxy and HAProxy, and redis-server for (c)-(e); MLServer's process for (f); the load "
        "generator runs on the same cores and is not included. × (b) of b1, e and e-shadow is "
        "against b1 (concurrency 1); × (f) is of the runs at the same connections as (f)"
        + ("; × (n) likewise, against (n), a Serve replica that reads the body and answers a "
           "constant: the most one replica serves here, context, not a target." if with_n
           else "."),
        "",
        "| target | result | numbers |",
        "|---|---|---|",
    ]
    for t in data["targets"]:
        lines.append(f"| {t['target']} | **{t['status']}** | {t['detail']} |")
    ceiling = _ceiling_line(data["variants"])
    if ceiling:
        lines += ["", ceiling]
    cost = cpu_per_request(data["variants"])
    if cost:
        names = [r["name"] for r in data["variants"] if r["name"] in cost["by_variant"]]
        lines += ["", "CPU per request, ms of one core (the capacity model's inputs, "
                  "docs/operations.md Capacity): each process's CPU over the run / requests "
                  "answered.", "",
                  "| process | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        for label in cost["processes"]:
            cells = [cost["by_variant"][n].get(label) for n in names]
            lines.append(f"| {label} | " + " | ".join(_num(c, '.3f') for c in cells) + " |")
        lines.append("| all server processes | " + " | ".join(
            _num(sum(cost["by_variant"][n].values()), '.3f') for n in names) + " |")
    lines += ["", "| process | peak RSS MB | by variant |", "|---|---:|---|"]
    rss: dict[str, dict[str, float]] = {}
    for r in data["variants"]:
        for label, mb in r["rss_mb"].items():
            rss.setdefault(label, {})[r["name"]] = mb
    for label, per in rss.items():
        detail = ", ".join(f"{k} {v:.0f}" for k, v in per.items())
        lines.append(f"| {label} | {max(per.values()):.0f} | {detail} |")
    notes = _observations(data["variants"])
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def cpu_per_request(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant and labelled process, CPU milliseconds (of one core) per request: the
    process's CPU % over the run / 100 / req/s x 1000. Variants without requests or
    without labelled processes are left out."""
    by_variant: dict[str, dict[str, float]] = {}
    processes: list[str] = []
    for r in rows:
        rps, cpu = r.get("rps") or 0.0, r.get("cpu_by_process") or {}
        if rps <= 0 or not cpu:
            continue
        by_variant[r["name"]] = {k: round(10.0 * v / rps, 4) for k, v in cpu.items()}
        processes += [k for k in cpu if k not in processes]
    return {"by_variant": by_variant, "processes": processes} if by_variant else {}


def _background_pct(row: dict[str, Any]) -> float:
    """Host CPU not spent by the measured server or wrk (Ray's own idle upkeep included)."""
    host = row.get("notes", {}).get("host_cpu_pct")
    if host is None:
        return 0.0
    client = row.get("extra", {}).get("client_cpu_pct") or 0.0
    return float(host - row["cpu_pct"] - client)


def _observations(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        n = r.get("notes", {})
        parts = []
        cache = n.get("cache")
        if cache:
            parts.append(f"cache hit rate {cache['hit_rate']:.1%} "
                         f"({cache['hits']} hits, {cache['misses']} misses, "
                         f"{cache['bypasses']} bypasses)")
        arms = n.get("arms")
        if arms:
            total = sum(a.get("requests", 0) for a in arms.values())
            if total:
                parts.append("arms " + ", ".join(
                    f"{v} {a.get('requests', 0) / total:.0%}" for v, a in sorted(arms.items())))
            fallbacks = sum(a.get("fallbacks", 0) for a in arms.values())
            parts.append(f"{fallbacks} fallbacks")
        batching = n.get("batching")
        if isinstance(batching, dict):
            parts += [f"{v} mean batch {b['mean_batch_rows']}" for v, b in batching.items()
                      if b.get("mean_batch_rows")]
        elif n.get("mean_batch_rows"):
            parts.append(f"mean batch {n['mean_batch_rows']}")
        check = n.get("answer_check")
        if check:
            parts.append(f"answers = the artifact's predict_proba on {check['windows']} windows "
                         f"sent at once (max abs diff {check['max_abs_diff']:.2g})")
        client = r.get("extra", {}).get("client_cpu_pct")
        if client is not None:
            parts.append(f"{'wrk' if r.get('tool') == 'wrk' else 'client'} CPU {client:.0f}%")
        host = n.get("host_cpu_pct")
        if host is not None:
            parts.append(f"host CPU {host:.0f}%")
            other = _background_pct(r)
            if other > BACKGROUND_WARN_PCT:
                who = ", ".join(f"`{o['cmd'][:40].strip()}` {o['cpu_pct']:.0f}%"
                                for o in n.get("other_processes", []))
                parts.append(f"**about {other:.0f}% CPU used by other processes: disturbed**"
                             + (f" (top: {who})" if who else ""))
        if parts:
            out.append(f"{r['name']}: " + "; ".join(parts))
    return out


# ---------------------------------------------------------------- chart


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["variants"]
    names = [r["name"] for r in rows]
    # The letter and the system in words under each bar.
    labels = [f"{n}\n" + textwrap.fill(r.get("system") or system(n), 11)
              for n, r in zip(names, rows, strict=True)]
    colors = ["#999999" if n == "a" else "#6699cc" if n.startswith("b") else
              "#bbccdd" if n == "n" else
              "#55aa55" if n == "f" else "#dd7733" for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    ax1.bar(labels, [r["rps"] for r in rows], color=colors)
    ax1.set_title("throughput (req/s, higher is better)")
    for i, r in enumerate(rows):
        ax1.annotate(f"{r['rps']:.0f}", (i, r["rps"]), ha="center", va="bottom", fontsize=8)
    ax2.bar(labels, [r["p99_ms"] for r in rows], color=colors)
    ax2.set_title("p99 latency (ms, lower is better)")
    for i, r in enumerate(rows):
        ax2.annotate(f"{r['p99_ms']:.1f}", (i, r["p99_ms"]), ha="center", va="bottom",
                     fontsize=8)
    m = data["machine"]
    fig.suptitle(f"abserve bench: {m['cores']} cores, ingress {m['ingress']}, "
                 f"{m['duration_s']:g} s per variant, {m['connections']} connections")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(data: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(data, indent=2, default=str))
    (out / "bench.md").write_text(markdown(data))
    chart(data, out / "bench.png")
