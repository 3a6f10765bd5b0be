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

# Every module of the planes that decide (the data plane but its Ray door, the codecs, the
# control plane but its Ray deployment and client), the base, and a few pure helpers.
ADAPTERS = {"router.dataplane.upstream", "router.controlplane.controller",
            "router.controlplane.client"}


def _modules(package: str) -> list[str]:
    root = ROOT / package.replace(".", "/")
    names = [package, *(f"{package}.{p.stem}" for p in sorted(root.glob("*.py"))
                        if p.stem != "__init__")]
    return [n for n in names if n not in ADAPTERS]


PURE = [
    *_modules("router.dataplane"), *_modules("router.protocol"),
    *_modules("router.controlplane"),
    "serve.config", "serve.errors", "serve.telemetry", "serve.local.env", "serve.serve_config",
    "router.http.auth",
    "models", "models.registry", "models.register", "models.activity.data",
    "models.activity.features", "models.activity.train", "deployments.backends",
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
