"""The import rule of ARCHITECTURE.md: the pure core imports no Ray, torch or TensorFlow.

Checked in a fresh interpreter with those packages blocked, so a stray import anywhere
in the chain fails here rather than slowing every unit test and the router replica.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PURE = [
    "router.dataplane.policy",
    "router.dataplane.fallback",
    "router.dataplane.cache",
    "router.protocol.request",
    "router.dataplane.core",
    "router.dataplane.batcher",
    "router.controlplane.experiment",
    "router.http.auth",
    "router.controlplane.store",
    "router.controlplane.ledger",
    "router.controlplane.analysis",
    "router.dataplane.shadow",
    "router.controlplane.canary",
    "router.controlplane.rollout",
    "router.dataplane.bandit",
    "router.protocol.oip",
    "router.controlplane.report_html",
    "serve.config",
    "serve.errors",
    "serve.local.env",
    "serve.scaling",
    "router.dataplane.recorder",
    "models",
    "models.registry",
    "models.register",
    "models.activity.data",
    "models.activity.features",
    "models.activity.train",
    "deployments.backends",
]
BLOCKED = ["ray", "torch", "tensorflow", "keras", "sklearn", "joblib", "fastapi", "starlette"]


def test_pure_modules_import_without_ray_or_frameworks() -> None:
    code = (
        "import sys, importlib\n"
        f"for m in {BLOCKED!r}:\n"
        "    sys.modules[m] = None\n"
        f"for m in {PURE!r}:\n"
        "    importlib.import_module(m)\n"
        "from models.activity.data import make_windows\n"
        "make_windows(8, 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
