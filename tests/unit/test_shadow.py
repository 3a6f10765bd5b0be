from __future__ import annotations

import json
import random

import numpy as np
import pytest

from router.dataplane.shadow import ShadowStats, pick_shadows, should_shadow


def constructed_case() -> tuple[np.ndarray, np.ndarray]:
    """100 inputs, 3 classes; the shadow disagrees on exactly rows 0..29."""
    primary = np.tile([0.7, 0.2, 0.1], (100, 1))
    shadow = primary.copy()
    shadow[:30] = [0.2, 0.7, 0.1]  # argmax 1 instead of 0: |diff| = (0.5, 0.5, 0) -> mean 1/3
    shadow[30:60] = [0.6, 0.3, 0.1]  # same label, |diff| = (0.1, 0.1, 0) -> mean 1/15
    return primary, shadow


def test_agreement_and_mean_abs_diff_on_a_constructed_case() -> None:
    primary, shadow = constructed_case()
    stats = ShadowStats()
    stats.record(primary, shadow)
    assert stats.compared == 100 and stats.agreed == 70
    assert stats.agreement_rate == pytest.approx(0.70)
    expected = (30 * (1 / 3) + 30 * (1 / 15)) / 100
    assert stats.mean_abs_diff == pytest.approx(expected, rel=1e-12)


def test_rows_one_at_a_time_equal_one_batch() -> None:
    primary, shadow = constructed_case()
    batch, single = ShadowStats(), ShadowStats()
    batch.record(primary, shadow)
    for p, q in zip(primary, shadow, strict=True):
        single.record(p, q)  # 1-D rows
    assert single.compared == batch.compared and single.agreed == batch.agreed
    assert single.mean_abs_diff == pytest.approx(batch.mean_abs_diff)


def test_errors_latency_merge_round_trip() -> None:
    primary, shadow = constructed_case()
    a, b = ShadowStats(), ShadowStats()
    a.record(primary[:50], shadow[:50])
    b.record(primary[50:], shadow[50:])
    a.record_error()
    for ms in (2.0, 4.0, 6.0):
        a.record_latency(ms)
    assert a.agreement_rate == pytest.approx(20 / 50)
    merged = a.merge(b)
    assert merged.agreement_rate == pytest.approx(0.70) and merged.errors == 1
    assert merged.p50_ms == pytest.approx(4.0, rel=0.03)
    assert merged.p99_ms == pytest.approx(6.0, rel=0.03)
    back = ShadowStats.from_dict(json.loads(json.dumps(merged.to_dict())))
    assert back == merged
    summary = merged.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["agreement_rate"] == pytest.approx(0.70)
    empty = ShadowStats()
    assert empty.agreement_rate is None and empty.mean_abs_diff is None and empty.p99_ms is None


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        ShadowStats().record(np.zeros((2, 3)), np.zeros((2, 4)))


def test_should_shadow_and_sampling() -> None:
    assert should_shadow(0.05, 0.1) and not should_shadow(0.1, 0.1)
    assert not should_shadow(0.0, 0.0) and should_shadow(0.999, 1.0)
    with pytest.raises(ValueError):
        should_shadow(0.5, 1.5)
    rng = random.Random(5)
    n = 20_000
    picks = [pick_shadows({"v2": 0.1, "v3": 0.5, "v4": 0.0}, rng) for _ in range(n)]
    assert abs(sum("v2" in p for p in picks) / n - 0.1) < 0.01
    assert abs(sum("v3" in p for p in picks) / n - 0.5) < 0.015
    assert not any("v4" in p for p in picks)
    again = random.Random(5)
    assert [pick_shadows({"v2": 0.1, "v3": 0.5, "v4": 0.0}, again) for _ in range(100)] == picks[
        :100
    ]
