#!/usr/bin/env bash
# One command from a fresh clone to a served prediction: set-up (what running needs:
# redis-server, wrk, .venv with the project; the tests' extras come with scripts/test.sh),
# train the demo versions (activity and sales), start a local Ray cluster + redis-server,
# deploy both models side by side (each with its own A/B split), send requests.
# Leaves the application running; stop it with `.venv/bin/abserve down`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/abserve train --registry registry
.venv/bin/abserve up --config abserve.yaml --config sales.yaml
.venv/bin/abserve predict
.venv/bin/abserve predict --user alice
.venv/bin/abserve predict --model sales
.venv/bin/abserve status
echo
echo "The application keeps running: try 'curl -s localhost:8000/models' or open http://127.0.0.1:8000/docs"
echo "Stop everything with: .venv/bin/abserve down"
