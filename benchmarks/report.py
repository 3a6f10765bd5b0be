"""The bench's report: ratios, targets (PASS/FAIL with their numbers), markdown, JSON, PNG.

Everything here is plain Python over the measured numbers (no Ray, no
network), so the targets' arithmetic is testable in microseconds.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["build", "chart", "machine_info", "markdown", "targets", "write_all"]

ROUTER_RSS_LIMIT_MB = 400.0
BACKGROUND_WARN_PCT = 30.0
ORDER = ("a", "b", "b1", "c", "c-open", "d", "e", "e-shadow")
CONCURRENCY_1 = ("b1", "e", "e-shadow")


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


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    by = {k: v.to_dict() if hasattr(v, "to_dict") else dict(v) for k, v in results.items()}
    a = by.get("a", {}).get("rps")
    b = by.get("b", {}).get("rps")
    b1 = by.get("b1", {}).get("rps")
    rows = []
    for name in [n for n in ORDER if n in by] + [n for n in by if n not in ORDER]:
        row = dict(by[name])
        if name == "c-open":  # rate-limited on purpose: a ratio would mean nothing
            row["ratio_a"] = row["ratio_b"] = None
        elif name in CONCURRENCY_1:  # compared with the same concurrency only
            row["ratio_a"] = None
            row["ratio_b"] = _ratio(row["rps"], b1)
        else:
            row["ratio_a"] = _ratio(row["rps"], a)
            row["ratio_b"] = _ratio(row["rps"], b)
        rows.append(row)
    return rows


def _target(name: str, ok: bool | None, detail: str) -> dict[str, Any]:
    status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
    return {"target": name, "status": status, "detail": detail}


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each PASS, FAIL or SKIP (a variant it needs did not run)."""
    by = {r["name"]: r for r in rows}
    a, b, b1, c, d, e = (by.get(k) for k in ("a", "b", "b1", "c", "d", "e"))
    out = []
    if a and c:
        need = 12 * a["rps"]
        out.append(_target("(c) >= 12x (a) req/s", c["rps"] >= need,
                           f"c {c['rps']:.0f} req/s vs 12 x {a['rps']:.0f} = {need:.0f} "
                           f"(x{c['rps'] / a['rps']:.2f})" if a["rps"] else "a has 0 req/s"))
    else:
        out.append(_target("(c) >= 12x (a) req/s", None, "needs variants a and c"))
    if c:
        out.append(_target("(c) p99 <= 150 ms", c["p99_ms"] <= 150.0,
                           f"c p99 {c['p99_ms']:.1f} ms"))
    else:
        out.append(_target("(c) p99 <= 150 ms", None, "needs variant c"))
    for label, row, factor in (("(c) >= 0.6x (b) req/s", c, 0.6),
                               ("(d) >= 1.5x (b) req/s", d, 1.5)):
        if row and b:
            need = factor * b["rps"]
            out.append(_target(label, row["rps"] >= need,
                               f"{row['name']} {row['rps']:.0f} req/s vs {factor} x "
                               f"{b['rps']:.0f} = {need:.0f} (x{row['rps'] / b['rps']:.2f})"
                               if b["rps"] else "b has 0 req/s"))
        else:
            out.append(_target(label, None, f"needs variants b and {label[1]}"))
    if e and b1:
        limit = b1["p50_ms"] + 2.0
        out.append(_target("(e) p50 <= (b) p50 at concurrency 1 + 2 ms", e["p50_ms"] <= limit,
                           f"e p50 {e['p50_ms']:.2f} ms vs b1 p50 {b1['p50_ms']:.2f} + 2 = "
                           f"{limit:.2f} ms"))
    else:
        out.append(_target("(e) p50 <= (b) p50 at concurrency 1 + 2 ms", None,
                           "needs variants b and e"))
    es = by.get("e-shadow")
    if e and es:
        gap = es["p50_ms"] - e["p50_ms"]
        out.append(_target("shadow at 100 %: p50 within 1 ms of shadow off", gap <= 1.0,
                           f"e-shadow p50 {es['p50_ms']:.2f} ms vs e {e['p50_ms']:.2f} ms "
                           f"({gap:+.2f} ms)"))
    bad = [f"{r['name']}: {r['errors']} ({_error_text(r)})" for r in rows if r["errors"]]
    total = sum(r["requests"] for r in rows)
    out.append(_target("zero errors in every run", not bad if rows else None,
                       "; ".join(bad) if bad else f"0 errors in {total} requests"))
    router = [r["rss_mb"].get("router") for r in rows if r["rss_mb"].get("router") is not None]
    if router:
        peak = max(router)
        out.append(_target(f"router replica RSS < {ROUTER_RSS_LIMIT_MB:.0f} MB",
                           peak < ROUTER_RSS_LIMIT_MB, f"peak {peak:.0f} MB"))
    else:
        out.append(_target(f"router replica RSS < {ROUTER_RSS_LIMIT_MB:.0f} MB", None,
                           "needs variant c, d or e"))
    return out


def _error_text(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in row.get("error_detail", {}).items() if v)


def build(results: dict[str, Any], opts: Any, machine: dict[str, Any],
          wall_s: float) -> dict[str, Any]:
    rows = _rows(results)
    return {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": _command(opts),
        "machine": machine,
        "wall_s": round(wall_s, 1),
        "variants": rows,
        "targets": targets(rows),
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
    if tuple(opts.variants) != ("a", "b", "c", "d", "e"):
        parts.append(f"--variants {','.join(opts.variants)}")
    return " ".join(parts)


# ---------------------------------------------------------------- markdown


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _conns(row: dict[str, Any]) -> str:
    if row.get("tool") == "open-loop":
        return f"open loop {row['extra'].get('target_rate', 0):.0f}/s"
    return str(row["connections"])


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"Machine: {m['cores']} cores ({m['cpu_model']}), ingress mode `{m['ingress']}`, "
        f"{m['duration_s']:g} s per variant after {m['warmup_s']:g} s warm-up, "
        f"{m['wrk']}, Ray {m['ray']}, Python {m['python']}; {data['generated_at']}.",
        f"Command: `{data['command']}`",
        "",
        "| variant | description | connections | req/s | p50 ms | p99 ms | errors | CPU % "
        "| × (a) | × (b) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["variants"]:
        lines.append(
            f"| {r['name']} | {r['description']} | {_conns(r)} | {r['rps']:.0f} "
            f"| {_num(r['p50_ms'], '.2f')} | {_num(r['p99_ms'], '.2f')} | {r['errors']} "
            f"| {r['cpu_pct']:.0f} | {_num(r['ratio_a'], '.2f')} | {_num(r['ratio_b'], '.2f')} |"
        )
    lines += [
        "",
        "CPU % is the server side's CPU time over the run (100 = one core): replicas, Serve's "
        "proxy and HAProxy, and redis-server for (c)-(e); the load generator runs on the same "
        "cores and is not included. × (b) of b1, e and e-shadow is against b1 (concurrency 1).",
        "",
        "| target | result | numbers |",
        "|---|---|---|",
    ]
    for t in data["targets"]:
        lines.append(f"| {t['target']} | **{t['status']}** | {t['detail']} |")
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
    colors = ["#999999" if n == "a" else "#6699cc" if n.startswith("b") else "#dd7733"
              for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.bar(names, [r["rps"] for r in rows], color=colors)
    ax1.set_title("throughput (req/s, higher is better)")
    for i, r in enumerate(rows):
        ax1.annotate(f"{r['rps']:.0f}", (i, r["rps"]), ha="center", va="bottom", fontsize=8)
    ax2.bar(names, [r["p99_ms"] for r in rows], color=colors)
    ax2.set_title("p99 latency (ms, lower is better)")
    for i, r in enumerate(rows):
        ax2.annotate(f"{r['p99_ms']:.1f}", (i, r["p99_ms"]), ha="center", va="bottom",
                     fontsize=8)
    m = data["machine"]
    fig.suptitle(f"abserve bench: {m['cores']} cores, ingress {m['ingress']}, "
                 f"{m['duration_s']:g} s per variant, {m['connections']} connections")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(data: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(data, indent=2, default=str))
    (out / "bench.md").write_text(markdown(data))
    chart(data, out / "bench.png")
