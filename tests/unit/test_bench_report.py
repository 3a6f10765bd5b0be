"""The bench's pure parts: target arithmetic, the markdown, and wrk's unique bodies."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks import report
from benchmarks.loadgen import unique_bodies, write_bodies


def _row(name: str, rps: float, p50: float, p99: float, errors: int = 0,
         rss: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "name": name, "description": name, "tool": "wrk", "connections": 32, "duration_s": 10,
        "requests": int(rps * 10), "rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors,
        "error_detail": {"status": errors}, "extra": {}, "cpu_pct": 100.0,
        "cpu_by_process": {}, "rss_mb": rss or {}, "notes": {},
    }


def _results(**over: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {
        "a": _row("a", 100, 150, 300),
        "b": _row("b", 1000, 20, 40),
        "b1": _row("b1", 90, 10, 14),
        "n": _row("n", 1600, 15, 30),
        "f": _row("f", 1200, 22, 45, rss={"mlserver": 250.0}),
        "c": _row("c", 1300, 30, 120, rss={"router": 210.0}),
        "d": _row("d", 3700, 10, 30, rss={"router": 220.0}),
        "e": _row("e", 70, 10.9, 20, rss={"router": 230.0}),
    }
    rows.update(over)
    return rows


def _targets(results: dict[str, Any],
             not_run: dict[str, dict[str, str]] | None = None) -> dict[str, dict[str, Any]]:
    return {t["target"]: t for t in report.targets(report._rows(results), not_run)}


def _status(results: dict[str, Any],
            not_run: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    return {k: t["status"] for k, t in _targets(results, not_run).items()}


F_TARGETS = ("(c) >= 1.0x (f) req/s", "(d) >= 3x (f) req/s")


def test_targets_pass_and_fail_on_the_numbers() -> None:
    s = _status(_results())
    assert s == {
        "(c) >= 1.0x (f) req/s": "PASS",
        "(c) >= 0.8x (b) req/s": "PASS",
        "(c) >= 12x (a) req/s": "PASS",
        "(c) p99 <= 150 ms": "PASS",
        "(d) >= 3x (f) req/s": "PASS",
        "(e) p50 <= (b1) p50 + 1 ms": "PASS",
        "zero errors in every run": "PASS",
        "router replica RSS < 400 MB": "PASS",
    }
    assert list(s) == list(_status(_results()))  # a stable order: the table's
    s = _status(_results(c=_row("c", 1100, 30, 151, errors=3, rss={"router": 401.0}),
                         d=_row("d", 3500, 10, 30), e=_row("e", 70, 11.1, 20)))
    assert s["(c) >= 1.0x (f) req/s"] == "FAIL"  # 1100 < 1200
    assert s["(c) >= 0.8x (b) req/s"] == "PASS"  # 1100 >= 800
    assert s["(c) >= 12x (a) req/s"] == "FAIL"  # 1100 < 1200
    assert s["(c) p99 <= 150 ms"] == "FAIL"
    assert s["(d) >= 3x (f) req/s"] == "FAIL"  # 3500 < 3600
    assert s["(e) p50 <= (b1) p50 + 1 ms"] == "FAIL"  # 11.1 > 10 + 1
    assert s["zero errors in every run"] == "FAIL"
    assert s["router replica RSS < 400 MB"] == "FAIL"
    s = _status(_results(c=_row("c", 790, 30, 100)))
    assert s["(c) >= 0.8x (b) req/s"] == "FAIL"


def test_targets_hold_at_their_bounds_and_show_their_numbers() -> None:
    t = _targets(_results(c=_row("c", 1200, 30, 150, rss={"router": 399.9}),
                          d=_row("d", 3600, 10, 30), e=_row("e", 70, 11.0, 20)))
    assert {k: v["status"] for k, v in t.items()} == dict.fromkeys(t, "PASS")
    assert t["(c) >= 1.0x (f) req/s"]["detail"] == "c 1200 req/s vs 1 x f 1200 = 1200 (x1.00)"
    assert t["(c) >= 0.8x (b) req/s"]["detail"] == "c 1200 req/s vs 0.8 x b 1000 = 800 (x1.20)"
    assert t["(c) >= 12x (a) req/s"]["detail"] == "c 1200 req/s vs 12 x a 100 = 1200 (x12.00)"
    assert t["(d) >= 3x (f) req/s"]["detail"] == "d 3600 req/s vs 3 x f 1200 = 3600 (x3.00)"
    assert t["(e) p50 <= (b1) p50 + 1 ms"]["detail"] == (
        "e p50 11.00 ms vs b1 p50 10.00 + 1 = 11.00 ms")


def test_the_rss_target_is_per_router_replica() -> None:
    """Two router replicas: rss_mb sums both processes, the target takes the larger one."""
    two = {"rss_mb": {"router": 663.0}, "process_rss_mb": {"router": 350.0},
           "notes": {"pids": {"router": [11, 12]}}}
    t = _targets(_results(c={**_row("c", 1300, 30, 120), **two},
                          d={**_row("d", 3700, 10, 30), **two}, e=_row("e", 70, 10.9, 20)))
    assert t["router replica RSS < 400 MB"]["status"] == "PASS"
    assert t["router replica RSS < 400 MB"]["detail"] == "peak 350 MB (the largest of 2 replicas)"
    over = {**two, "process_rss_mb": {"router": 401.0}}
    t = _targets(_results(c={**_row("c", 1300, 30, 120), **over}))
    assert t["router replica RSS < 400 MB"]["status"] == "FAIL"


def test_missing_variants_skip_their_targets() -> None:
    t = _targets({"a": _row("a", 100, 150, 300)})
    assert t["(c) >= 12x (a) req/s"]["status"] == "SKIP"
    assert t["(c) >= 1.0x (f) req/s"]["detail"] == "needs variants c and f"
    assert t["(e) p50 <= (b1) p50 + 1 ms"]["status"] == "SKIP"
    assert t["router replica RSS < 400 MB"]["status"] == "SKIP"
    assert t["zero errors in every run"]["status"] == "PASS"


def test_an_unbuildable_mlserver_skips_the_f_targets_saying_why() -> None:
    reason = "MLServer virtualenv could not be built: pip install exited 1: ERROR: no network"
    results = _results()
    del results["f"]
    t = _targets(results, {"f": {"status": "skipped", "reason": reason}})
    for name in F_TARGETS:
        assert t[name]["status"] == "SKIP"
        assert t[name]["detail"] == f"(f) skipped: {reason}"
    others = {k: v["status"] for k, v in t.items() if k not in F_TARGETS}
    assert set(others.values()) == {"PASS"}  # the rest is judged as usual


def test_an_mlserver_with_wrong_answers_fails_the_f_targets() -> None:
    reason = "MLServer's predict_proba differs from the artifact's by up to 0.02 (> 1e-06)"
    results = _results()
    del results["f"]
    t = _targets(results, {"f": {"status": "failed", "reason": reason}})
    for name in F_TARGETS:
        assert t[name]["status"] == "FAIL" and reason in t[name]["detail"]


def test_ratios_compare_like_with_like() -> None:
    results = _results(**{"c-open": _row("c-open", 650, 20, 40),
                          "e-shadow": _row("e-shadow", 69, 11.2, 21)})
    rows = {r["name"]: r for r in report._rows(results)}
    assert rows["c"]["ratio_a"] == 13.0 and rows["c"]["ratio_b"] == 1.3
    assert rows["c"]["ratio_f"] == round(1300 / 1200, 2)
    assert rows["d"]["ratio_f"] == round(3700 / 1200, 2)
    assert (rows["f"]["ratio_a"], rows["f"]["ratio_b"], rows["f"]["ratio_f"]) == (12.0, 1.2, 1.0)
    for name in ("e", "e-shadow", "b1"):  # concurrency 1: against b1 only
        assert rows[name]["ratio_a"] is None and rows[name]["ratio_f"] is None, name
    assert rows["e"]["ratio_b"] == round(70 / 90, 2)
    assert rows["c-open"]["ratio_a"] is rows["c-open"]["ratio_f"] is None  # rate-limited
    no_f = _results()
    del no_f["f"]
    assert all(r["ratio_f"] is None for r in report._rows(no_f))


def test_ratio_n_is_each_row_over_the_no_op_ceiling() -> None:
    results = _results(**{"c-open": _row("c-open", 650, 20, 40),
                          "e-shadow": _row("e-shadow", 69, 11.2, 21)})
    rows = {r["name"]: r for r in report._rows(results)}
    assert rows["n"]["ratio_n"] == 1.0
    assert rows["c"]["ratio_n"] == round(1300 / 1600, 2) == 0.81
    assert rows["d"]["ratio_n"] == round(3700 / 1600, 2) == 2.31
    assert rows["b"]["ratio_n"] == 0.62 and rows["a"]["ratio_n"] == 0.06
    assert rows["f"]["ratio_n"] == 0.75
    assert rows["n"]["ratio_b"] == 1.6 and rows["n"]["ratio_f"] == round(1600 / 1200, 2)
    for name in ("b1", "e", "e-shadow", "c-open"):  # other concurrency, or rate-limited
        assert rows[name]["ratio_n"] is None, name
    no_n = _results()
    del no_n["n"]
    assert all(r["ratio_n"] is None for r in report._rows(no_n))


def test_the_ceiling_is_context_not_a_target() -> None:
    with_n = _status(_results())
    no_n = _results()
    del no_n["n"]
    assert with_n == _status(no_n)  # no target reads (n)
    line = report._ceiling_line(report._rows(_results()))
    assert line == ("ceiling: one Serve replica doing no work: 1600 req/s; "
                    "(d) is 2.31 of it, (c) 0.81")
    assert report._ceiling_line(report._rows(no_n)) is None
    only_n = report._rows({"b": _row("b", 1000, 20, 40), "n": _row("n", 1500, 15, 30)})
    assert report._ceiling_line(only_n) == (
        "ceiling: one Serve replica doing no work: 1500 req/s; (d) is - of it, (c) -")


def test_rows_come_in_the_report_order_with_their_system_named() -> None:
    results = _results(**{"c-open": _row("c-open", 650, 20, 40),
                          "e-shadow": _row("e-shadow", 69, 11.2, 21)})
    rows = report._rows(dict(reversed(list(results.items()))))
    assert [r["name"] for r in rows] == ["a", "b", "b1", "n", "f", "c", "c-open", "d", "e",
                                         "e-shadow"]
    assert [r["system"] for r in rows] == [
        "naive FastAPI", "plain Ray Serve", "plain Ray Serve, c=1", "Serve no-op (ceiling)",
        "MLServer",
        "abserve miss 90/10", "abserve miss open loop", "abserve hit", "abserve c=1",
        "abserve c=1 + shadow"]


def _opts(**over: Any) -> SimpleNamespace:
    values = {"ingress": "throughput", "duration_s": 3.0, "warmup_s": 1.0, "connections": 32,
              "threads": 2, "short": True, "variants": report.DEFAULT_VARIANTS}
    values.update(over)
    return SimpleNamespace(**values)


def test_markdown_has_every_row_target_and_the_machine() -> None:
    opts = _opts()
    data = report.build(_results(), opts, report.machine_info(opts, 2), wall_s=1.0)
    md = report.markdown(data)
    assert "Machine: 2 cores" in md and "`abserve bench --short`" in md
    assert "| × (a) | × (b) | × (f) | × (n) |" in md
    for name in ("a", "b", "b1", "n", "f", "c", "d", "e"):
        assert f"| {report.SYSTEMS[name]} | {name} |" in md
    assert ("| MLServer | f | f | 32 | 1200 | 22.00 | 45.00 | 0 | 100 | 12.00 | 1.20 | 1.00 "
            "| 0.75 |") in md
    assert ("| plain Ray Serve, c=1 | b1 | b1 | 32 | 90 | 10.00 | 14.00 | 0 | 100 | - | 1.00 "
            "| - | - |") in md  # concurrency 1: no × (n)
    assert md.count("**PASS**") == 8
    # One line under the targets, before the RSS table.
    ceiling = "ceiling: one Serve replica doing no work: 1600 req/s; (d) is 2.31 of it, (c) 0.81"
    assert f"| router replica RSS < 400 MB | **PASS** | peak 230 MB |\n\n{ceiling}\n\n" in md
    assert md.count("ceiling: ") == 1
    assert data["not_run"] == {}
    json.dumps(data)  # the JSON file holds all of it


def test_markdown_names_a_variant_that_did_not_run() -> None:
    opts = _opts(variants=("b", "f"))
    reason = "MLServer virtualenv could not be built: pip install exited 1: ERROR: offline"
    data = report.build({"b": _row("b", 1000, 20, 40)}, opts, report.machine_info(opts, 2),
                        wall_s=1.0, not_run={"f": {"status": "skipped", "reason": reason}})
    md = report.markdown(data)
    assert f"| MLServer | f | **skipped**: {reason} | | | | | | | | | | |\n" in md
    assert ("| plain Ray Serve | b | b | 32 | 1000 | 20.00 | 40.00 | 0 | 100 | - | 1.00 | - "
            "| - |") in md  # no (n) in this run: × (n) is -
    assert "ceiling:" not in md  # no (n) row
    assert f"| (c) >= 1.0x (f) req/s | **SKIP** | (f) skipped: {reason} |" in md
    assert f"| (d) >= 3x (f) req/s | **SKIP** | (f) skipped: {reason} |" in md
    assert "| (c) >= 0.8x (b) req/s | **SKIP** | needs variants c and b |" in md
    assert "`abserve bench --short --variants b,f`" in md


def test_an_older_bench_json_still_renders() -> None:
    """docs/data/bench.json may predate (f) and (n): no ratio_f, ratio_n, system, not_run."""
    old = json.loads((Path(__file__).parents[2] / "docs" / "data" / "bench.json").read_text())
    old["variants"] = [r for r in old["variants"] if r["name"] not in ("f", "n")]
    for row in old["variants"]:
        row.pop("ratio_f", None)
        row.pop("ratio_n", None)
        row.pop("system", None)
    old.pop("not_run", None)
    md = report.markdown(old)
    assert "× (n)" not in md and "ceiling:" not in md  # rendered as before (n) existed
    assert "| × (a) | × (b) | × (f) |\n" in md
    for row in old["variants"]:
        assert f"| {report.SYSTEMS[row['name']]} | {row['name']} | {row['description']} |" in md
    assert md.count("| - |\n") >= 1  # × (f): no MLServer row to compare with
    for t in old["targets"]:  # shown as they were judged
        assert f"| {t['target']} | **{t['status']}** | {t['detail']} |" in md


def test_unique_bodies_are_distinct_float32_inputs(tmp_path: Path) -> None:
    template = write_bodies(tmp_path / "u.txt", n=4, seed=1, unique=True)
    bodies = unique_bodies(template, 3000, salt=5)
    arrays = {np.asarray(json.loads(b)["features"], dtype=np.float32).tobytes() for b in bodies}
    assert len(arrays) == 3000
    assert all(np.asarray(json.loads(b)["features"]).shape == (50, 9) for b in bodies[:8])


def test_oip_bodies_carry_the_same_unique_windows_and_ask_for_predict_proba(
    tmp_path: Path,
) -> None:
    ours = unique_bodies(write_bodies(tmp_path / "u.txt", n=4, seed=1, unique=True), 300, 5)
    oip = unique_bodies(write_bodies(tmp_path / "o.txt", n=4, seed=1, unique=True, fmt="oip"),
                        300, 5)
    for mine, theirs in zip(ours, oip, strict=True):
        body = json.loads(theirs)
        assert body["outputs"] == [{"name": "predict_proba"}]
        (tensor,) = body["inputs"]
        assert tensor["shape"] == [1, 50, 9] and tensor["datatype"] == "FP32"
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])[0]
        assert np.array_equal(x, np.asarray(json.loads(mine)["features"], dtype=np.float32))
    repeat = write_bodies(tmp_path / "r.txt", n=2, seed=1, unique=False, fmt="oip")
    assert all("@" not in line for line in repeat.read_text().splitlines())


def test_shadow_target_compares_e_shadow_with_e() -> None:
    target = "shadow at 100 %: p50 within 1 ms of shadow off"
    assert _status(_results(**{"e-shadow": _row("e-shadow", 69, 11.8, 21)}))[target] == "PASS"
    assert _status(_results(**{"e-shadow": _row("e-shadow", 60, 12.0, 25)}))[target] == "FAIL"
    assert target not in _status(_results())


def test_cpu_per_request_is_each_process_cpu_over_its_requests() -> None:
    """The capacity model's inputs: 50 % of a core at 1000 req/s is 0.5 ms a request."""
    c = {**_row("c", 1000, 30, 120), "cpu_by_process": {"router": 50.0, "haproxy": 20.0}}
    d = {**_row("d", 4000, 10, 30), "cpu_by_process": {"router": 80.0, "redis": 10.0}}
    opts = _opts()
    data = report.build(_results(c=c, d=d), opts, report.machine_info(opts, 2), wall_s=1.0)
    cost = data["cpu_ms_per_request"]
    assert cost["by_variant"] == {"c": {"router": 0.5, "haproxy": 0.2},
                                  "d": {"router": 0.2, "redis": 0.025}}
    assert cost["processes"] == ["router", "haproxy", "redis"]
    md = report.markdown(data)
    assert "| process | c | d |" in md
    assert "| router | 0.500 | 0.200 |" in md and "| redis | - | 0.025 |" in md
    assert "| all server processes | 0.700 | 0.225 |" in md


def _windows(variant: str, values: list[tuple[float, float]]) -> dict[str, dict[str, Any]]:
    """Variant l's windows of ``variant`` in run order (off1, log1, off2, ...), each
    (req/s, p50 ms)."""
    names = report.log_windows((len(values) - 1) // 2)
    return {f"{variant}-{w}": _row(f"{variant}-{w}", rps, p50, 4 * p50)
            for w, (rps, p50) in zip(names, values, strict=True)}


def test_log_targets_read_each_on_window_against_the_off_windows_around_it() -> None:
    c_target = "prediction log: (c) log on >= 0.95x log off req/s"
    e_target = "prediction log: (e) log on p50 within 0.5 ms of log off"
    # A drift down over the run, the same in both states: off 1000, 900, 800; on 950, 850,
    # each exactly between its neighbours -> 1.000x, an interval of zero width.
    c = _windows("c", [(1000, 30), (950, 30), (900, 30), (850, 30), (800, 30)])
    # p50 off 2.0, 2.2, 2.4; on 2.4 (+0.3 on its neighbours' 2.1), 2.8 (+0.5) -> +0.40 ms.
    e = _windows("e", [(60, 2.0), (55, 2.4), (58, 2.2), (50, 2.8), (57, 2.4)])
    t = _targets(_results(**c, **e))
    assert (t[c_target]["status"], t[e_target]["status"]) == ("PASS", "PASS")
    assert t[c_target]["detail"] == ("1.000x over 2 on windows, 95 % interval 1.000-1.000x; "
                                     "on 950 / 850 vs off 1,000 / 900 / 800 req/s")
    assert t[e_target]["detail"].startswith("+0.40 ms over 2 on windows, 95 % interval ")
    # 6 % slower with the log on, under the same drift: 0.940x fails; p50 +0.6 ms fails.
    slow = _windows("c", [(1000, 30), (893, 30), (900, 30), (799, 30), (800, 30)])
    late = _windows("e", [(60, 2.0), (55, 2.7), (58, 2.2), (50, 2.9), (57, 2.4)])
    t = _targets(_results(**slow, **late))
    assert (t[c_target]["status"], t[e_target]["status"]) == ("FAIL", "FAIL")
    assert t[c_target]["detail"].startswith("0.940x over 2 on windows")
    # Four pairs: the interval is the t interval of the pairs' ratios (scipy's t, 3 df).
    four = _windows("c", [(1000, 30), (1000, 30), (1000, 30), (900, 30), (1000, 30),
                          (1100, 30), (1000, 30), (1000, 30), (1000, 30)])
    from scipy import stats
    ratios = np.array([1.0, 0.9, 1.1, 1.0])
    half = stats.t.ppf(0.975, 3) * ratios.std(ddof=1) / 2
    detail = _targets(_results(**four))[c_target]["detail"]
    assert detail.startswith(f"1.000x over 4 on windows, 95 % interval {1 - half:.3f}-"
                             f"{1 + half:.3f}x"), detail
    # A window missing (the run stopped after an on window): no log target, not a reading
    # of part of it.
    partial = dict(c)
    del partial["c-off3"]
    assert c_target not in _targets(_results(**partial))
    assert c_target not in _targets(_results()) and e_target not in _targets(_results())
    rows = {r["name"]: r for r in report._rows(_results(**c, **e))}
    assert rows["c-log1"]["system"] == "abserve miss 90/10, log on (1)"
    assert rows["e-off3"]["ratio_b"] == round(57 / 90, 2)  # c=1 rows against (b1)
    rows = {r["name"]: r for r in report._rows(_results(**four))}
    assert rows["c-off5"]["system"] == "abserve miss 90/10, log off (5)"
    assert rows["c-off5"]["ratio_b"] == 1.0  # 1000 / (b) 1000: with its own concurrency
    assert report.log_windows(2) == ("off1", "log1", "off2", "log2", "off3")


def test_log_windows_are_listed_in_run_order_after_their_variant() -> None:
    four = _windows("c", [(1000, 30)] * 9)
    names = [r["name"] for r in report._rows(_results(**four, **{"zz": _row("zz", 1, 1, 1)}))]
    windows = [n for n in names if n.startswith("c-")]
    assert windows == [f"c-{w}" for w in report.log_windows(4)]
    assert names.index("c") < names.index("c-off1") < names.index("d")
    assert names[-1] == "zz"
