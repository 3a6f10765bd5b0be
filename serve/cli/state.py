"""What ``abserve up`` leaves behind for the later commands, in ``.abserve/``.

``state.json`` records the processes ``up`` started (Ray head PID, redis-server
PID) and where the application answers; ``down`` stops exactly those, by PID.
``<app>.models.json`` (in the config's ``state.dir``) records the versions
``deploy-version`` added, so that the next ``up`` deploys them again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from serve.config import AbserveConfig

__all__ = [
    "DEFAULT_CONFIG", "STATE_DIR", "read_state", "record_extra_model", "state_file",
    "with_extra_models", "write_state",
]

DEFAULT_CONFIG = "abserve.yaml"
STATE_DIR = Path(os.environ.get("ABSERVE_STATE_DIR", ".abserve"))


def state_file() -> Path:
    return STATE_DIR / "state.json"


def read_state() -> dict[str, Any]:
    """The recorded state; {} when there is none (or it is unreadable)."""
    try:
        return dict(json.loads(state_file().read_text()))
    except (OSError, ValueError):
        return {}


def write_state(state: dict[str, Any]) -> None:
    """Replace the state file atomically: a crash never leaves half a file."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_file())


def _extra_models_file(config: AbserveConfig) -> Path:
    return Path(config.state.dir) / f"{config.app_name}.models.json"


def with_extra_models(config: AbserveConfig) -> AbserveConfig:
    """The config plus the versions added by `abserve deploy-version` (kept in state.dir)."""
    from serve.config import ModelConfig

    try:
        extra = json.loads(_extra_models_file(config).read_text())
    except FileNotFoundError:
        return config
    known = {m.version for m in config.models}
    added = [ModelConfig.model_validate(m) for m in extra if m["version"] not in known]
    return config.model_copy(update={"models": [*config.models, *added]}) if added else config


def record_extra_model(config: AbserveConfig, entry: dict[str, Any]) -> None:
    """Remember a version ``deploy-version`` added (``entry``: its models[] item)."""
    path = _extra_models_file(config)
    extra = json.loads(path.read_text()) if path.exists() else []
    extra.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(extra, indent=1))
