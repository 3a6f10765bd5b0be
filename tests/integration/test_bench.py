"""`abserve bench --short` end to end: every variant runs, and the table, JSON and PNG exist.

A subprocess, not an in-process call: the bench starts its own Ray instance
(``address="local"``, its own throughput-mode ports) while this session's
Ray is already up. The targets are not asserted: on a shared 2-core machine
they are findings the report states, not test outcomes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {"a", "b", "b1", "c", "c-open", "d", "e", "e-shadow"}


def test_bench_short_end_to_end(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed; scripts/setup.sh installs it")
    out = tmp_path / "bench"
    abserve = Path(sys.executable).parent / "abserve"
    # Not this session's Serve settings: the session's HAProxy holds those ports.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_SERVE_", "RAY_ADDRESS"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(
        [str(abserve), "bench", "--short", "--out", str(out)],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    md = (out / "bench.md").read_text()
    assert "| variant |" in md and "| target |" in md and "| process |" in md
    assert "| variant |" in proc.stdout  # the table is printed too

    data = json.loads((out / "bench.json").read_text())
    assert data["machine"]["cores"] == os.cpu_count()
    rows = {r["name"]: r for r in data["variants"]}
    assert set(rows) == VARIANTS
    for name, row in rows.items():
        assert row["rps"] > 0, name
        assert row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"], name
        assert {"ratio_a", "ratio_b", "errors", "cpu_pct", "rss_mb"} <= set(row), name
    assert rows["c"]["ratio_a"] > 0 and rows["c"]["ratio_b"] > 0
    assert rows["d"]["ratio_b"] > 0 and rows["e"]["ratio_b"] > 0
    # Every replica's RSS is reported, the router's among them.
    assert {"router", "activity-v1", "activity-v2"} <= set(rows["c"]["rss_mb"])
    assert "plain-model" in rows["b"]["rss_mb"] and "naive-uvicorn" in rows["a"]["rss_mb"]
    # The variants measured what they claim: (c) never hits the cache, (d) does. (Not
    # more: on a loaded machine Redis calls time out and the router bypasses the cache.)
    assert rows["c"]["notes"]["cache"]["hits"] == 0, rows["c"]["notes"]
    assert rows["d"]["notes"]["cache"]["hits"] > 0, rows["d"]["notes"]
    statuses = {t["target"]: t["status"] for t in data["targets"]}
    assert len(statuses) == 8 and set(statuses.values()) <= {"PASS", "FAIL"}
    assert "shadow at 100 %: p50 within 1 ms of shadow off" in statuses

    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
