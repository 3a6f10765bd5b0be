#!/usr/bin/env bash
# Set-up for a fresh Debian/Ubuntu machine with Python 3.11.
#   bash scripts/setup.sh           what running and the benchmarks need: redis-server, wrk,
#                                   a virtualenv in .venv with this project
#   bash scripts/setup.sh --tests   that, plus what only the tests need: prometheus, chromium,
#                                   chromium-driver, and the project's dev extras
# scripts/quickstart.sh runs the first, scripts/test.sh the second.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

TESTS=0
for arg in "$@"; do
  case "$arg" in
    --tests) TESTS=1 ;;
    *) echo "usage: bash scripts/setup.sh [--tests]" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ ! -f /tmp/.abserve-apt-updated ]; then
    $SUDO apt-get update -qq && touch /tmp/.abserve-apt-updated
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

command -v redis-server >/dev/null || apt_install redis-server  # the cache `abserve up` starts
command -v wrk >/dev/null || apt_install wrk  # load generator of `abserve bench`
if [ "$TESTS" = 1 ]; then
  # tests/integration/test_observability.py: a real Prometheus scraping Ray's metrics port,
  # and headless Chromium (driven by selenium) opening the Ray dashboard's Serve page.
  command -v prometheus >/dev/null || apt_install prometheus
  { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || apt_install chromium chromium-driver
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  PY=$(command -v python3.11 || command -v python3)
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv 2>/dev/null || { apt_install python3-venv python3.11-venv || apt_install python3-venv; "$PY" -m venv .venv; }
fi
# torch==2.13.0 is pinned in pyproject.toml: on these machines pip takes the CPU
# build; for CUDA see docs/operations.md ("GPUs").
TARGET="."
if [ "$TESTS" = 1 ]; then TARGET=".[dev]"; fi
.venv/bin/pip install -q --disable-pip-version-check -e "$TARGET" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import ray, torch, tensorflow, sklearn, redis; print('python deps ok: ray', ray.__version__, '| torch', torch.__version__, '| tensorflow', tensorflow.__version__)" 2>&1 | grep -v "^WARNING\|oneDNN\|cuda\|TF-TRT\|rebuild TensorFlow\|AVX" || true
if [ "$TESTS" = 1 ]; then
  .venv/bin/python -c "import pytest, selenium, schemathesis, tritonclient.http; print('test deps ok: pytest', pytest.__version__)"
fi
