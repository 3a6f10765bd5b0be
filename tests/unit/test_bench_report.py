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
        "c": _row("c", 1300, 30, 120, rss={"router": 210.0}),
        "d": _row("d", 1600, 10, 30, rss={"router": 220.0}),
        "e": _row("e", 70, 11.5, 20, rss={"router": 230.0}),
    }
    rows.update(over)
    return rows


def _status(results: dict[str, Any]) -> dict[str, str]:
    return {t["target"]: t["status"] for t in report.targets(report._rows(results))}


def test_targets_pass_and_fail_on_the_numbers() -> None:
    s = _status(_results())
    assert s == {
        "(c) >= 12x (a) req/s": "PASS",
        "(c) p99 <= 150 ms": "PASS",
        "(c) >= 0.6x (b) req/s": "PASS",
        "(d) >= 1.5x (b) req/s": "PASS",
        "(e) p50 <= (b) p50 at concurrency 1 + 2 ms": "PASS",
        "zero errors in every run": "PASS",
        "router replica RSS < 400 MB": "PASS",
    }
    s = _status(_results(c=_row("c", 1100, 30, 151, errors=3, rss={"router": 401.0}),
                         e=_row("e", 70, 12.5, 20)))
    assert s["(c) >= 12x (a) req/s"] == "FAIL"
    assert s["(c) p99 <= 150 ms"] == "FAIL"
    assert s["(c) >= 0.6x (b) req/s"] == "PASS"
    assert s["(e) p50 <= (b) p50 at concurrency 1 + 2 ms"] == "FAIL"
    assert s["zero errors in every run"] == "FAIL"
    assert s["router replica RSS < 400 MB"] == "FAIL"


def test_missing_variants_skip_their_targets() -> None:
    s = _status({"a": _row("a", 100, 150, 300)})
    assert s["(c) >= 12x (a) req/s"] == "SKIP"
    assert s["router replica RSS < 400 MB"] == "SKIP"
    assert s["zero errors in every run"] == "PASS"


def test_ratios_compare_like_with_like() -> None:
    rows = {r["name"]: r for r in report._rows(_results())}
    assert rows["c"]["ratio_a"] == 13.0 and rows["c"]["ratio_b"] == 1.3
    assert rows["e"]["ratio_a"] is None and rows["e"]["ratio_b"] == round(70 / 90, 2)


def test_markdown_has_every_row_target_and_the_machine() -> None:
    opts = SimpleNamespace(ingress="throughput", duration_s=3.0, warmup_s=1.0, connections=32,
                           threads=2, short=True, variants=("a", "b", "c", "d", "e"))
    data = report.build(_results(), opts, report.machine_info(opts, 2), wall_s=1.0)
    md = report.markdown(data)
    assert "Machine: 2 cores" in md and "`abserve bench --short`" in md
    for name in ("a", "b", "b1", "c", "d", "e"):
        assert f"| {name} |" in md
    assert md.count("**PASS**") == 7
    json.dumps(data)  # the JSON file holds all of it


def test_unique_bodies_are_distinct_float32_inputs(tmp_path: Path) -> None:
    template = write_bodies(tmp_path / "u.txt", n=4, seed=1, unique=True)
    bodies = unique_bodies(template, 3000, salt=5)
    arrays = {np.asarray(json.loads(b)["features"], dtype=np.float32).tobytes() for b in bodies}
    assert len(arrays) == 3000
    assert all(np.asarray(json.loads(b)["features"]).shape == (50, 9) for b in bodies[:8])


def test_shadow_target_compares_e_shadow_with_e() -> None:
    target = "shadow at 100 %: p50 within 1 ms of shadow off"
    assert _status(_results(**{"e-shadow": _row("e-shadow", 69, 12.4, 21)}))[target] == "PASS"
    assert _status(_results(**{"e-shadow": _row("e-shadow", 60, 12.6, 25)}))[target] == "FAIL"
    assert target not in _status(_results())
