"""benchmarks.runner.platform_config: the bench's (c)-(e) config, ABSERVE_BENCH_SET merged in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.runner import platform_config


def _config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, override: str | None) -> Any:
    if override is None:
        monkeypatch.delenv("ABSERVE_BENCH_SET", raising=False)
    else:
        monkeypatch.setenv("ABSERVE_BENCH_SET", override)
    return platform_config(str(tmp_path), "redis://127.0.0.1:1/0", 8000, str(tmp_path / "s"))


def test_defaults_are_the_platform_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path, monkeypatch, None)
    assert cfg.router.batch_in_flight_per_replica == 1 and cfg.router.batch_wait_ms == 10.0
    assert [a.weight for a in cfg.experiment.arms] == [90, 10]


def test_override_merges_sections_and_every_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path, monkeypatch,
                  '{"router": {"batch_wait_ms": 20}, "models": [{"batch_wait_timeout_s": 0}]}')
    assert cfg.router.batch_wait_ms == 20.0
    assert cfg.router.batch_in_flight_per_replica == 1  # the rest of the section stays
    assert [m.batch_wait_timeout_s for m in cfg.models] == [0.0, 0.0]
    assert cfg.cache.enabled  # untouched sections stay
