"""benchmarks.runner: the (c)-(e) config (ABSERVE_BENCH_SET merged in) and the CLI's options."""

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


def test_the_cli_selects_mlserver_by_default_and_takes_its_virtualenv() -> None:
    from benchmarks.runner import SELECTABLE, options_from_args
    from serve.cli.parser import build_parser

    opts = options_from_args(build_parser().parse_args(["bench", "--short"]))
    assert opts.variants == SELECTABLE == ("a", "b", "c", "d", "e", "f", "n")
    assert opts.mlserver_venv is None and opts.duration_s == 3.0
    opts = options_from_args(build_parser().parse_args(
        ["bench", "--variants", "a,f", "--mlserver-venv", "/opt/ms"]))
    assert opts.variants == ("a", "f") and opts.mlserver_venv == Path("/opt/ms")


def test_an_unknown_variant_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from benchmarks.runner import BenchOptions, run

    with pytest.raises(ValueError, match=r"unknown variants \['g'\]; choose from a,b,c,d,e,f"):
        run(BenchOptions(variants=("a", "g"), out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()
