"""What ``abserve up`` leaves behind for the later commands, in ``.abserve/``.

``state.json`` records the processes ``up`` started (Ray head PID, redis-server
PID) and where each application answers (``apps``: one per config, the first
also as ``app_name`` / ``config`` / ``url``); ``down`` deletes every one of them
and stops exactly those processes, by PID.
``<app>.models.json`` (in the config's ``state.dir``) records the versions
``deploy-version`` added, so that the next ``up`` deploys them again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from serve.config import AbserveConfig, model_route_prefix

__all__ = [
    "DEFAULT_CONFIG", "STATE_DIR", "app_entry", "app_for_model", "merge_apps", "model_url",
    "read_state", "record_extra_model", "state_file", "with_extra_models", "write_state",
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


def model_url(base: str, model: str | None) -> str:
    """Where ``--model NAME`` is addressed: ``<base>/models/NAME``; no name: ``base``, the
    default model (which answers under its own name too)."""
    base = base.rstrip("/")
    return f"{base}{model_route_prefix(model)}" if model else base


def app_entry(config: AbserveConfig, config_path: str, base_url: str) -> dict[str, Any]:
    """What ``state.json`` keeps of one deployed config (``apps``)."""
    prefix = config.http.route_prefix
    return {"app_name": config.app_name, "model": config.model, "route_prefix": prefix,
            "config": config_path,
            "url": base_url.rstrip("/") + ("" if prefix == "/" else prefix)}


def merge_apps(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The applications on the cluster after an ``up``: the new ones, then those an earlier
    ``up`` deployed and this one left running (``down`` deletes them all)."""
    names = {a["app_name"] for a in new}
    return [*new, *(a for a in old if a.get("app_name") not in names)]


def app_for_model(state: dict[str, Any], model: str | None) -> dict[str, Any] | None:
    """The recorded application serving ``model`` (None: the default one, at '/')."""
    apps = list(state.get("apps") or [])
    if model is None:
        return next((a for a in apps if a.get("route_prefix") == "/"),
                    apps[0] if apps else None)
    return next((a for a in apps if a.get("model") == model), None)


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
