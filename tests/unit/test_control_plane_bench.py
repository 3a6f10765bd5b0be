"""benchmarks/control_plane.py's fake routers: what they send is what a router sends, as the
controller's ledger reads it (the command itself drives a real controller on Ray)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path

from benchmarks.control_plane import FakeRouter, Result, _drive, _table
from router.controlplane.ledger import Ledger
from router.controlplane.store import Journal


def test_fake_routers_reports_are_counted_and_joined(tmp_path: Path) -> None:
    ledger = Ledger(["v1", "v2"], journal=Journal(tmp_path / "app.served.jsonl"))
    routers = [FakeRouter(i, seed=1) for i in range(2)]
    ids: list[str] = []
    for _ in range(3):
        for r in routers:
            report, sent = r.report(200)
            ledger.update(r.replica_id, asdict(report))
            ids += sent
    assert len(ids) == len(set(ids)) == 1200
    requests = {v: sum(ledger.replica_metrics[r.replica_id][v].requests for r in routers)
                for v in ("v1", "v2")}
    assert sum(requests.values()) == 1200 and 0.85 < requests["v1"] / 1200 < 0.95, requests
    assert ledger.record_feedback(ids[-1], 1)["counted"] is True
    idle, none = routers[0].report(0)
    assert none == [] and idle.served == [] and idle.metrics  # counters only


def test_drive_keeps_its_rate_and_its_bound() -> None:
    calls = {"now": 0, "most": 0}

    async def call() -> None:
        calls["now"] += 1
        calls["most"] = max(calls["most"], calls["now"])
        await asyncio.sleep(0.02)
        calls["now"] -= 1

    n, latencies, wall = asyncio.run(_drive(call, rate=200.0, in_flight=64, seconds=0.5))
    assert 90 <= n <= 101 and len(latencies) == n and wall >= 0.5
    calls["most"] = 0
    n, _, _ = asyncio.run(_drive(call, rate=None, in_flight=3, seconds=0.3))
    assert calls["most"] == 3  # at saturation, never more than in_flight at once
    line = _table([Result("sync", "1/s", 1, 0, 5, 0.5, 1, 2)]).splitlines()[-1]
    assert line == "| sync | 1/s | 1 | 0 | 5 | 0.500 | 1.00 | 2.00 |"
