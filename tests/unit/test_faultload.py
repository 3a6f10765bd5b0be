"""The pure parts of the fault-injection load generator and the soak's verdicts."""

from __future__ import annotations

from pathlib import Path

from benchmarks.faultload import Event, Record, percentile, read_jsonl, summarize, write_jsonl
from benchmarks.soak import Sample, SoakOptions, evaluate, key_bound, render_markdown


def _rec(t: float, status: int = 200, latency: float = 10.0, **kw: object) -> Record:
    return Record(tag=f"x-{t}", t=t, user="u", repeated=False, status=status,
                  latency_ms=latency, **kw)  # type: ignore[arg-type]


def test_percentile_is_nearest_rank_and_ignores_nan() -> None:
    assert percentile([5, 1, 3, float("nan")], 50) == 3
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([], 99) != percentile([], 99)  # NaN


def test_summarize_counts_failures_fallbacks_cache_and_windows() -> None:
    records = [
        _rec(0.1, cache="HIT", fallback=False, version="v1", arm="v1"),
        _rec(0.5, cache="MISS", fallback=True, fallback_reason="timeout", version="v1", arm="v2"),
        _rec(1.2, status=0, error="ConnectError"),
        _rec(1.7, status=503, latency=40.0),
        _rec(2.5, cache="BYPASS", fallback=False, latency=30.0),
    ]
    s = summarize(records, window_s=1.0)
    assert (s["requests"], s["ok"], s["failed"]) == (5, 3, 2)
    assert s["fallbacks"] == 1 and s["fallback_reasons"] == {"timeout": 1}
    assert s["cache"] == {"HIT": 1, "MISS": 1, "BYPASS": 1}
    assert s["errors"] == {"ConnectError": 1} and s["statuses"] == {200: 3, 0: 1, 503: 1}
    assert s["p99_ms"] == 30.0  # failed requests' latencies are not in the percentiles
    assert [w["requests"] for w in s["windows"]] == [2, 2, 1]
    assert [w["success_rate"] for w in s["windows"]] == [1.0, 0.0, 1.0]
    assert s["windows"][0]["hit_rate"] == 0.5
    assert summarize(records, start=1.0, end=2.0)["requests"] == 2


def test_jsonl_round_trip(tmp_path: Path) -> None:
    records = [_rec(0.1, cache="HIT"), _rec(0.2, status=0, error="ReadTimeout")]
    events = [Event(0.15, "redis_stop", {"pid": 42})]
    back = read_jsonl(write_jsonl(tmp_path / "log.jsonl", records, events))
    assert back == (records, events)


def test_soak_verdicts() -> None:
    opts = SoakOptions(duration_s=180, rate=20, ttl_s=60, repeat_share=0.5)
    bound = key_bound(20, 0.5, 60)
    assert bound == 932
    good = [Sample(0, 150.0, 40, 10), Sample(60, 200.0, 60, 500), Sample(180, 210.0, 80, 600)]
    summary = summarize([_rec(i / 10) for i in range(1000)])
    rows = evaluate(summary, good, opts, 180)
    assert [r.held for r in rows] == [True, True, True, True], rows
    bad = [Sample(60, 200.0, 60, 500), Sample(180, 240.0, 120, bound + 1)]
    failing = summarize([_rec(i / 10) for i in range(998)] + [_rec(99.9, status=503)] * 2)
    rows = evaluate(failing, bad, opts, 180)
    assert [r.held for r in rows] == [False, False, False, False], rows
    report = {"duration_s": 180, "rate": 20, "fault_interval_s": 60,
              "criteria": [r.__dict__ for r in rows],
              "summary": {k: v for k, v in failing.items() if k != "windows"},
              "minutes": failing["windows"], "faults": [{"t": 60.0, "event": "redis_hang"}],
              "samples": [s.__dict__ for s in bad]}
    md = render_markdown(report)
    assert "| success rate | >= 99.9 % | 99.800 % (998 of 1000) | **NO** |" in md
    assert "| 60.0 | redis_hang |" in md
