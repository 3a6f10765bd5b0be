#!/usr/bin/env bash
# The test command: set-up (idempotent), then lint and the whole suite:
# unit (no Ray), backends (each framework), integration (real Ray + real redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2 RAY_USAGE_STATS_ENABLED=0
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
