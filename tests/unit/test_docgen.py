"""The generated docs: the config reference follows serve/config.py, and the measured
tables follow the bench's and the soak's JSON, so neither is pasted by hand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report
from benchmarks.faultload import Event, Record, summarize
from benchmarks.loadgen import LoadResult
from benchmarks.soak import Sample, SoakOptions, evaluate, reference_time
from serve import docgen

ROOT = Path(__file__).resolve().parents[2]


def test_committed_pages_equal_what_docgen_renders() -> None:
    for path, text in docgen.pages().items():
        assert path.read_text() == text, (
            f"{path.relative_to(ROOT)} is out of date: run .venv/bin/python -m serve.docgen"
        )


def test_every_config_section_and_field_is_documented() -> None:
    page = (docgen.DOCS / "config.md").read_text()
    for path, model in docgen.sections():
        title = path or "top level"
        assert docgen.section_note(model), f"section {title} ({model.__name__}) says nothing"
        assert f"\n## {title}\n" in page
        chunk = page.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
        if "The same fields as" in chunk:
            continue
        for name, field in model.model_fields.items():
            assert docgen.field_description(field), (
                f"{title}.{name} has no description: add one in serve/config.py"
            )
            assert f"| `{name}` |" in chunk, f"{title}.{name} is missing from docs/config.md"


def test_config_reference_shows_types_defaults_and_constraints() -> None:
    page = docgen.config_reference()
    assert "| `num_replicas` | integer | `1` | ≥ 1, ≤ 1024 |" in page
    assert "| `precision` | `fp32` \\| `fp16` \\| `bf16` | `fp32` |" in page
    assert "| `baseline` | string | required |" in page
    link = "[models[].autoscaling](#modelsautoscaling)"
    assert f"| `autoscaling` | {link} \\| null | `null` |" in page
    assert "| `resources` | map of string to number | `{}` |" in page
    assert "## router.autoscaling\n\nThe same fields as [models[].autoscaling]" in page


def test_docgen_runs_without_ray_or_frameworks() -> None:
    blocked = ["ray", "torch", "tensorflow", "keras", "sklearn", "fastapi", "starlette"]
    code = (
        "import sys\n"
        f"for m in {blocked!r}:\n"
        "    sys.modules[m] = None\n"
        "from serve import docgen\n"
        "docgen.pages()\n"
        "assert docgen.main(['--check']) == 0\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- fixtures in the tools' shape


def _variant(name: str, rps: float, p50: float, p99: float, **notes: Any) -> dict[str, Any]:
    """One row as benchmarks/runner.py's VariantResult.to_dict() writes it."""
    load = LoadResult(tool="wrk", connections=32, duration_s=15.0, requests=int(rps * 15),
                      rps=rps, p50_ms=p50, p99_ms=p99, errors=0,
                      extra={"client_cpu_pct": 40.0})
    return {"name": name, "description": f"variant {name}", **load.to_dict(), "cpu_pct": 120.0,
            "cpu_by_process": {"router": 60.0},
            "rss_mb": {"router": 200.0} if name in "cde" else {}, "notes": notes}


def bench_json() -> dict[str, Any]:
    results = {
        "a": _variant("a", 160, 190.0, 370.0),
        "b": _variant("b", 1600, 19.0, 33.0),
        "b1": _variant("b1", 100, 9.7, 12.3),
        "c": _variant("c", 970, 32.0, 60.0, cache={"hit_rate": 0.0, "hits": 0, "misses": 900,
                                                    "bypasses": 0}),
        "d": _variant("d", 2500, 11.0, 41.0),
        "e": _variant("e", 126, 7.6, 14.3),
    }
    opts = type("Opts", (), {"short": False, "duration_s": 15.0, "connections": 32,
                             "ingress": "throughput", "variants": ("a", "b", "c", "d", "e")})()
    machine = {"cores": 2, "cpu_model": "Test CPU", "ingress": "throughput", "duration_s": 15.0,
               "warmup_s": 2.0, "connections": 32, "threads": 2, "short": False,
               "python": "3.11.7", "ray": "2.60.0", "wrk": "wrk 4.1.0", "platform": "Linux"}
    data = report.build(results, opts, machine, wall_s=150.0)
    data["generated_at"] = "2026-12-01T20:00:00+00:00"
    return json.loads(json.dumps(data, default=str))  # as write_all stores it


def soak_json(failed: int = 0) -> dict[str, Any]:
    """A report with the keys benchmarks/soak.py's _soak returns, from its own pure parts."""
    records = [Record(tag=f"soak-{i}", t=i / 20, user=f"u{i % 7}", repeated=i % 2 == 0,
                      status=503 if i < failed else 200, latency_ms=10.0 + i % 5,
                      fallback=i % 10 == 0, fallback_reason="timeout" if i % 10 == 0 else None,
                      cache="HIT" if i % 2 == 0 else "MISS", version="v1", arm="v1")
               for i in range(2400)]
    events = [Event(60.0, "redis_hang", {"pid": 1, "frozen_s": 8, "took_s": 8.1}),
              Event(90.0, "kill_candidate_replicas",
                    {"pids": [2, 3], "running_again_s": 9.5, "took_s": 9.6})]
    samples = [Sample(t, 200.0 + t / 100, 70, 500) for t in (10.0, 40.0, 80.0, 120.0)]
    opts = SoakOptions(duration_s=120.0, rate=20.0, ttl_s=60)
    summary = summarize(records, window_s=60.0)
    criteria = evaluate(summary, samples, opts, 120.0)
    report_ = {
        "duration_s": 120.0, "rate": 20.0, "fault_interval_s": 30.0, "ttl_s": 60,
        "router_pid": 123, "criteria": [asdict(c) for c in criteria],
        "passed": all(c.held for c in criteria),
        "summary": {k: v for k, v in summary.items() if k != "windows"},
        "minutes": summary["windows"],
        "faults": [{"t": e.t, "event": e.name, **e.detail} for e in events],
        "samples": [asdict(s) for s in samples], "reference_t_s": reference_time(120.0),
    }
    return json.loads(json.dumps(report_, default=str))


# ---------------------------------------------------------------- renderers


def test_bench_tables_are_the_bench_report_of_its_json() -> None:
    data = bench_json()
    text = docgen.render_bench(data)
    assert text == report.markdown(data).rstrip("\n")
    assert "| c | variant c | 32 | 970 |" in text
    assert "| (c) p99 <= 150 ms | **PASS** | c p99 60.0 ms |" in text
    assert "| (c) >= 12x (a) req/s | **FAIL** |" in text


def test_soak_tables_show_criteria_totals_and_faults() -> None:
    text = docgen.render_soak(soak_json())
    assert text.startswith("`abserve soak --duration 120 --rate 20`: a fault every 30 s")
    assert "every criterion held" in text
    assert "| success rate | >= 99.9 % | 100.000 % (2400 of 2400) | yes |" in text
    assert "| redis_hang | 1 | 8.1 s | - | 0 |" in text
    assert "| kill_candidate_replicas | 1 | 9.6 s | 9.5 s | 0 |" in text
    assert "Requests 2400, failed 0; fallbacks 240 (timeout 240)" in text
    failing = docgen.render_soak(soak_json(failed=100))
    assert "**a criterion failed**" in failing and "| **NO** |" in failing


def test_replace_section_keeps_the_prose_around_it() -> None:
    page = "intro\n<!-- generated:bench -->\nold\n<!-- /generated:bench -->\noutro\n"
    out = docgen.replace_section(page, "bench", "new table")
    assert out == "intro\n<!-- generated:bench -->\nnew table\n<!-- /generated:bench -->\noutro\n"
    assert docgen.replace_section(out, "bench", "new table") == out
    with pytest.raises(ValueError):
        docgen.replace_section("no markers", "bench", "x")
    with pytest.raises(ValueError):
        docgen.replace_section(page + page, "bench", "x")


def test_command_takes_new_json_and_renders_the_pages(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for page in ("benchmarks.md", "reliability.md"):
        shutil.copyfile(docgen.DOCS / page, docs / page)
    (tmp_path / "bench.json").write_text(json.dumps(bench_json()))
    (tmp_path / "soak.json").write_text(json.dumps(soak_json()))
    assert docgen.main(["--check"], docs=docs) == 1  # config.md missing
    assert docgen.main(["--bench", str(tmp_path / "bench.json"),
                        "--soak", str(tmp_path / "soak.json")], docs=docs) == 0
    assert json.loads((docs / "data" / "bench.json").read_text()) == bench_json()
    bench_page = (docs / "benchmarks.md").read_text()
    assert docgen.render_bench(bench_json()) in bench_page
    assert "Not measured yet" not in bench_page
    assert bench_page.split("<!-- generated:bench -->")[0] == (
        (docgen.DOCS / "benchmarks.md").read_text().split("<!-- generated:bench -->")[0]
    )
    assert docgen.render_soak(soak_json()) in (docs / "reliability.md").read_text()
    assert docgen.main(["--check"], docs=docs) == 0
