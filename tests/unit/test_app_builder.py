"""serve.app:app through Ray Serve's own builder call (what `serve run serve.app:app config=...`
and a Serve config file's import_path/args do), without a cluster: args validated by AppArgs
with field-named errors, the overrides applied, the whole application built."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

from serve.app import AppArgs, app, config_from_args

ROOT = Path(__file__).resolve().parents[2]


def test_serve_validates_the_args_with_app_args_and_builds_the_application() -> None:
    args = {"config": str(ROOT / "abserve.yaml")}
    built = call_user_app_builder_with_args_if_necessary(app, args)
    assert isinstance(built, Application)
    with pytest.raises(ValidationError) as err:
        call_user_app_builder_with_args_if_necessary(app, {"config": "x.yaml", "colour": 1})
    assert err.value.errors()[0]["loc"] == ("colour",)
    with pytest.raises(ValidationError) as err:
        call_user_app_builder_with_args_if_necessary(app, {})
    assert err.value.errors()[0]["loc"] == ("config",)


def test_overrides_replace_the_config_settings(tmp_path: Path) -> None:
    config = config_from_args(AppArgs(config=str(ROOT / "abserve.yaml"),
                                      redis_url="redis://10.0.0.5:6380/0",
                                      registry=str(tmp_path / "reg"),
                                      state_dir=str(tmp_path / "state")))
    assert config.cache.redis_url == "redis://10.0.0.5:6380/0"
    assert config.registry == str(tmp_path / "reg")
    assert config.state.dir == str(tmp_path / "state")


def test_a_bad_config_file_is_refused_with_its_field(tmp_path: Path) -> None:
    from serve.errors import ConfigError

    data = yaml.safe_load((ROOT / "abserve.yaml").read_text())
    data["experiment"]["timeout_ms"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="timeout_ms"):
        app(AppArgs(config=str(bad)))
