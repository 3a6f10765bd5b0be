# abserve in one image: Ray (Serve), the three model frameworks, redis-server and this project.
#
#   docker build -t abserve .
#   docker run --rm --shm-size=2g -p 127.0.0.1:8000:8000 -p 127.0.0.1:8265:8265 abserve
#   curl -s 127.0.0.1:8000/health
#
# The default CMD trains the demo models (unless the registry already holds them) and runs
# `abserve up` with deploy/docker/abserve.docker.yaml, which starts a one-node Ray cluster and a
# redis-server inside the container. docker-compose.yml runs the same image as a multi-node
# cluster instead (its own commands; see there).
FROM python:3.11-slim

# torch==2.13.0 is pinned in pyproject.toml. This image installs the CPU build from PyTorch's
# index first (PyPI's Linux wheel is the CUDA build and pulls several GB of CUDA libraries);
# pip then sees the pin satisfied. For a GPU image pass the index of a CUDA build of torch 2.13.0
# that your driver supports, e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128,
# and run with `--gpus all` (NVIDIA Container Toolkit): the driver stays on the host, the CUDA
# runtime comes in the wheel.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# redis-server: `abserve up` starts one when cache.redis_url is empty.
# tini: PID 1 that reaps the Ray and redis processes `abserve up` leaves running.
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server tini \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 --shell /bin/bash abserve
WORKDIR /app

# Dependencies first, from pyproject.toml alone, so code changes do not reinstall them.
COPY pyproject.toml ./
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0" \
    && python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project (see .dockerignore), installed editable as in development.
COPY . .
RUN pip install -e . \
    && mkdir -p /app/registry /app/.abserve /tmp/ray /var/lib/ray-auth \
    && chown -R abserve:abserve /app /tmp/ray /var/lib/ray-auth

USER abserve
ENV ABSERVE_CONFIG=deploy/docker/abserve.docker.yaml

# 8000 HTTP (Serve), 8265 Ray dashboard, 6385 Ray GCS, 8080 Ray metrics (compose sets it).
EXPOSE 8000 8265 6385 8080

# Liveness of the router: /health answers 200 once the application is up. Training and the
# first deployment take minutes, hence the long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD python -c "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4); sys.exit(0 if r.status == 200 else 1)" || exit 1

ENTRYPOINT ["tini", "--"]
CMD ["bash", "-c", "set -e; abserve validate \"$ABSERVE_CONFIG\" --check-registry || abserve train --registry /app/registry; abserve up --config \"$ABSERVE_CONFIG\"; exec tail -n +1 -F .abserve/ray.log"]
