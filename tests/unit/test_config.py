from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve.config import load_config, parse_config
from serve.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def base(**model: Any) -> dict[str, Any]:
    """A valid config; ``model`` adds keys to v1's entry."""
    return {
        "models": [{"version": "v1", **model}, {"version": "v2"}],
        "experiment": {
            "baseline": "v1",
            "arms": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}],
        },
    }


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.message


def test_example_config_is_valid() -> None:
    config = load_config(ROOT / "abserve.yaml")
    assert config.experiment.baseline == "v1"
    assert Path(config.registry).is_absolute()


def test_defaults_fill_in() -> None:
    config = parse_config(base())
    assert config.cache.timeout_ms <= 50
    assert config.http.user_key_header == "X-User-Id"
    assert config.http.max_body_bytes == 1_048_576


def test_unknown_key_is_named() -> None:
    data = base()
    data["models"][0]["replicas"] = 2
    assert "models.0.replicas: unknown key" in error_of(data)
    data = base()
    data["surprise"] = 1
    assert "surprise: unknown key" in error_of(data)


def test_weights_must_sum_to_100() -> None:
    data = base()
    data["experiment"]["arms"][1]["weight"] = 20
    assert "weights sum to 110, they must sum to 100" in error_of(data)


def test_baseline_must_be_an_arm() -> None:
    data = base()
    data["experiment"]["baseline"] = "v2x"
    assert "baseline" in error_of(data)
    del data["experiment"]["baseline"]
    assert "experiment.baseline: Field required" in error_of(data)


def test_arm_version_must_be_deployed() -> None:
    data = base()
    data["experiment"]["arms"][1]["version"] = "v9"
    assert "experiment.arms.1.version: unknown version 'v9'" in error_of(data)


def test_duplicates_and_bad_values_refused() -> None:
    data = base()
    data["models"].append({"version": "v1"})
    assert "listed twice" in error_of(data)
    data = base()
    data["models"][0]["num_replicas"] = 0
    assert "models.0.num_replicas" in error_of(data)
    data = base()
    data["models"][0]["version"] = "../etc"
    assert "models.0.version" in error_of(data)


def test_validate_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(base()))
    bad = tmp_path / "bad.yaml"
    data = base()
    data["experiment"]["arms"][0]["weight"] = 50
    bad.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "serve.cli", "validate"]
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    ko = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert ko.returncode != 0
    assert "weights sum to 60" in ko.stderr


def test_a_canary_plans_replay_gate_has_defaults_and_bounds() -> None:
    data = base()
    data["canary"] = {"candidate": "v2", "replay": {"log": "prediction-log"}}
    plan = parse_config(data).canary
    assert plan is not None and plan.replay is not None
    gate = plan.replay
    assert (gate.log, gate.min_agreement_percent, gate.min_rows, gate.since_hours) == (
        "prediction-log", 95.0, 100, 24.0)
    assert plan.plan_fields("v1")["replay"] == gate.model_dump(mode="json")
    data["canary"] = {"candidate": "v2"}
    plain = parse_config(data).canary
    assert plain is not None and plain.replay is None
    for replay, says in [
        ({}, "canary.replay.log: Field required"),
        ({"log": " "}, "canary.replay.log: empty; write the prediction log's location"),
        ({"log": "l", "min_agreement_percent": 0}, "canary.replay.min_agreement_percent: "
                                                   "Input should be greater than 0"),
        ({"log": "l", "min_agreement_percent": 100.5}, "canary.replay.min_agreement_percent: "
                                                       "Input should be less than or equal"),
        ({"log": "l", "min_rows": 0}, "canary.replay.min_rows: Input should be greater than "
                                      "or equal to 1"),
        ({"log": "l", "since_hours": 0}, "canary.replay.since_hours: Input should be greater"),
        ({"log": "l", "min_agreement": 90}, "canary.replay.min_agreement: unknown key"),
    ]:
        data["canary"] = {"candidate": "v2", "replay": replay}
        assert says in error_of(data), replay


def test_the_replay_gates_log_is_relative_to_the_config_file(tmp_path: Path) -> None:
    data = base()
    data["canary"] = {"candidate": "v2", "replay": {"log": "logs/prediction-log"}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(data))
    plan = load_config(tmp_path / "a.yaml").canary
    assert plan is not None and plan.replay is not None
    assert plan.replay.log == str((tmp_path / "logs" / "prediction-log").resolve())
    data["canary"]["replay"]["log"] = "s3://bucket/log"  # a URI stays as written
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(data))
    plan = load_config(tmp_path / "b.yaml").canary
    assert plan is not None and plan.replay is not None and plan.replay.log == "s3://bucket/log"
