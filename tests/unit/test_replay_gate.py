"""A canary plan's replay gate without Ray: the verdict on a replay's summary
(serve/offline/replay.py, with ``run_replay`` faked), and `abserve canary start
--require-replay`, which puts the gate in the plan it posts and waits for the controller's
verdict (the admin API faked). The controller's side is in tests/unit/test_service.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import serve.cli.admin as admin
import serve.offline.replay as replay
import serve.offline.scoring as scoring
from serve.cli.parser import main
from serve.config import ReplayGateConfig, parse_config
from serve.errors import AbserveError

GATE = {"log": "/logs/activity", "min_agreement_percent": 90, "min_rows": 10,
        "since_hours": 6}
CONFIG = parse_config({
    "models": [{"version": "v1"}, {"version": "v2"}],
    "experiment": {"baseline": "v1", "arms": [{"version": "v1", "weight": 100}]},
    "state": {"dir": "/state"},
})


def summary(n: int, hits: int) -> dict[str, Any]:
    return {"agreement": {"n": n, "hits": hits, "rate": hits / n if n else None},
            "skipped": 2, "out": "/state/replays/r.parquet", "seconds": 1.5}


@pytest.mark.parametrize(("n", "hits", "verdict", "says"), [
    (200, 190, "passed", "v2 agrees with what was served on 95.00% of 200 rows"),
    (200, 180, "passed", ">= 90%, >= 10 rows"),  # 90 % is enough
    (200, 179, "refused", "89.50% of 200 rows logged since 2026-03-01 04:00 UTC, below "
                          "min_agreement_percent 90%"),
    (9, 9, "refused", "scored 9 rows logged since 2026-03-01 04:00 UTC, fewer than min_rows 10"),
    (0, 0, "refused", "scored 0 rows"),
])
def test_the_verdict_on_a_replays_summary(n: int, hits: int, verdict: str, says: str) -> None:
    since = datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    out = replay.replay_verdict(GATE, "v2", summary(n, hits), since)
    assert out["verdict"] == verdict and says in out["reason"], out
    assert out["rows"] == n and out["skipped"] == 2 and out["out"] == "/state/replays/r.parquet"
    assert out["agreement_percent"] == (hits / n * 100 if n else None)
    assert out["since"] == since.isoformat()


def test_the_gate_replays_the_last_since_hours_into_the_state_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_run_replay(config: Any, location: str, version: str, **kw: Any) -> dict[str, Any]:
        calls.append({"location": location, "version": version, **kw})
        return summary(100, 99)

    @contextlib.contextmanager
    def no_ray(address: str | None, num_cpus: int | None = None) -> Iterator[str]:
        yield "nowhere"

    monkeypatch.setattr(replay, "run_replay", fake_run_replay)
    monkeypatch.setattr(scoring, "ray_session", no_ray)
    now = datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
    out = replay.replay_gate_result(CONFIG, GATE, "v2", now=now)
    assert out["verdict"] == "passed" and out["agreement_percent"] == 99.0
    [call] = calls
    assert call["location"] == "/logs/activity" and call["version"] == "v2"
    assert call["since"] == now - timedelta(hours=6)
    assert call["out"] == Path("/state/replays/replay-v2-20260301T103000Z.parquet")
    strict = ReplayGateConfig(log="/l", min_rows=101)  # the model itself does too
    out = replay.replay_gate_result(CONFIG, strict, "v2", now=now)
    assert out["verdict"] == "refused" and "fewer than min_rows 101" in out["reason"]
    assert calls[-1]["since"] == now - timedelta(hours=24)  # the default since_hours

    def no_log(*args: Any, **kw: Any) -> dict[str, Any]:
        raise AbserveError("no prediction log at /logs/activity: ... does not exist")

    monkeypatch.setattr(replay, "run_replay", no_log)
    out = replay.replay_gate_result(CONFIG, GATE, "v2", now=now)
    assert out["verdict"] == "refused" and out["reason"].startswith("no prediction log at")


# ------------------------------------------------------------ the CLI


class FakeAdmin:
    """The admin API's answers to the CLI, one per call, in order."""

    def __init__(self, *statuses: dict[str, Any]) -> None:
        self.calls: list[tuple[str, str, dict[str, Any] | None]] = []
        self.statuses = list(statuses)

    def __call__(self, args: Any, method: str, path: str,
                 body: dict[str, Any] | None = None) -> dict[str, Any]:
        self.calls.append((method, path, body))
        return self.statuses.pop(0)


def canary(state: str, replay_status: str, **replay_fields: Any) -> dict[str, Any]:
    return {"plan": {"candidate": "v2", "baseline": "v1", "steps": [5.0, 100.0],
                     "interval_s": 60.0, "min_requests": 10, "replay": GATE},
            "state": {"status": state, "step": 0, "weight": 5.0 if state == "running" else 0.0,
                      "history": []},
            "replay": {"candidate": "v2", "status": replay_status, "verdict": None,
                       "reason": f"the replay is {replay_status}", "agreement_percent": None,
                       "rows": None, **replay_fields}}


@pytest.fixture
def fake_admin(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeAdmin]]:
    holder: list[FakeAdmin] = []
    monkeypatch.setattr(admin, "admin_call", lambda *a, **k: holder[0](*a, **k))
    monkeypatch.setattr(admin.time, "sleep", lambda s: None)
    yield holder


def test_canary_start_require_replay_puts_the_gate_in_the_plan_and_waits(
    fake_admin: list[FakeAdmin], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    fake_admin.append(FakeAdmin(
        canary("pending", "waiting"), canary("pending", "running"),
        canary("running", "passed", verdict="passed", agreement_percent=97.5, rows=400,
               reason="v2 agrees on 97.50% of 400 rows")))
    argv = ["canary", "start", "v2", "--steps", "5,100", "--require-replay", "prediction-log",
            "--min-agreement", "90", "--min-rows", "10", "--since-hours", "6"]
    assert main(argv) == 0
    method, path, body = fake_admin[0].calls[0]
    assert (method, path) == ("POST", "/admin/canary")
    assert body is not None and body["replay"] == {
        "log": str(tmp_path / "prediction-log"), "min_agreement_percent": 90.0,
        "min_rows": 10, "since_hours": 6.0}
    assert [c[:2] for c in fake_admin[0].calls[1:]] == [("GET", "/admin/canary")] * 2
    out = capsys.readouterr().out
    assert "canary v2 vs v1: pending (waiting for replay)" in out
    assert "replay gate: running: the replay is running" in out
    assert "replay gate: passed (97.50% agreement on 400 rows): v2 agrees" in out
    assert "canary v2 vs v1: running, step 1/2 at 5%" in out


def test_canary_start_require_replay_fails_when_the_controller_refuses(
    fake_admin: list[FakeAdmin], capsys: pytest.CaptureFixture[str],
) -> None:
    fake_admin.append(FakeAdmin(
        canary("pending", "waiting"),
        canary("refused", "refused", verdict="refused", rows=3,
               reason="v2's replay of s3://b/log scored 3 rows, fewer than min_rows 10")))
    argv = ["canary", "start", "v2", "--require-replay", "s3://b/log", "--min-rows", "10"]
    assert main(argv) == 2
    body = fake_admin[0].calls[0][2]
    assert body is not None and body["replay"]["log"] == "s3://b/log"  # a URI as written
    assert body["replay"]["min_agreement_percent"] == 95.0
    err = capsys.readouterr().err
    assert "canary refused: v2's replay of s3://b/log scored 3 rows" in err


def test_canary_start_require_replay_no_wait_returns_after_posting(
    fake_admin: list[FakeAdmin], capsys: pytest.CaptureFixture[str],
) -> None:
    fake_admin.append(FakeAdmin(canary("pending", "waiting")))
    assert main(["canary", "start", "v2", "--require-replay", "/l", "--no-wait"]) == 0
    assert len(fake_admin[0].calls) == 1
    assert "replay gate: waiting" in capsys.readouterr().out
