#!/usr/bin/env bash
# The test command: set-up with what the tests need (idempotent: scripts/setup.sh --tests adds
# prometheus, chromium, chromium-driver and the dev extras to what running needs), then lint
# and the whole suite: unit (no Ray), backends (each framework), integration (real Ray + real
# redis-server), chaos. Arguments go to pytest, e.g. `bash scripts/test.sh tests/unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
export TF_CPP_MIN_LOG_LEVEL=2 RAY_USAGE_STATS_ENABLED=0
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
