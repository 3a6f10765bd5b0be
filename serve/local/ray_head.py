"""A Ray head that outlives the command that started it (``abserve up`` .. ``abserve down``).

``ray start --head --block`` runs as our child in its own session, so that
``abserve down`` can stop it (and it its own children) by the PID recorded in
``.abserve/state.json``. Ray 2.60's ``ray start`` turns on token auth and
writes ``~/.ray/auth_token``: a driver connecting to such a cluster must opt in
(``enable_token_auth``) before ray is first imported.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from serve.config import AbserveConfig
from serve.errors import AbserveError
from serve.local.env import ray_env
from serve.local.haproxy import haproxy_pids, stop_haproxy
from serve.local.pids import stop_pid
from serve.local.ports import port_open

__all__ = [
    "connect", "enable_token_auth", "ray_head_command", "start_ray_head", "stop_ray_head",
    "wait_for_gcs",
]


def _ray_binary() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def ray_head_command(config: AbserveConfig) -> list[str]:
    """``ray start --head``: node IP and dashboard on loopback unless the config says so."""
    c = config.cluster
    cmd = [
        _ray_binary(), "start", "--head", "--block", "--disable-usage-stats",
        f"--port={c.gcs_port}", "--node-ip-address=127.0.0.1",
        f"--dashboard-host={c.dashboard_host}", f"--dashboard-port={c.dashboard_port}",
        "--include-dashboard=true",
    ]
    if c.num_cpus:
        cmd.append(f"--num-cpus={c.num_cpus}")
    return cmd


def start_ray_head(config: AbserveConfig, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``ray start --head --block`` as a child we can stop by PID; returns it and its address.

    The head's processes get the ingress flags of ``http.ingress`` in their
    environment: Serve reads them when its processes start, not per deployment.
    """
    cmd = ray_head_command(config)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **ray_env(config.http.ingress)}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )
    return proc, f"127.0.0.1:{config.cluster.gcs_port}"


def wait_for_gcs(port: int, proc: subprocess.Popen[bytes], timeout_s: float,
                 log_path: Path) -> None:
    """Until the head's GCS accepts connections; raise if ``ray start`` exits first."""
    deadline = time.monotonic() + timeout_s
    while not port_open(port):
        if proc.poll() is not None:
            raise AbserveError(f"ray start exited with {proc.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            raise AbserveError(f"Ray's GCS did not open port {port} in {timeout_s:.0f}s")
        time.sleep(0.5)
    time.sleep(2)  # the head writes its auth token and address file right after


def stop_ray_head(pid: int, timeout_s: float = 60.0) -> None:
    """Stop a head started by ``start_ray_head``, then the HAProxy its Serve proxy spawned."""
    haproxy = haproxy_pids(pid)
    stop_pid(pid, timeout_s=timeout_s)
    stop_haproxy(haproxy)


def enable_token_auth() -> None:
    """Opt this driver into Ray's token auth when ``ray start`` left a token behind.

    Must run before ray is first imported; an explicit RAY_AUTH_MODE wins.
    """
    if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"


def connect(address: str, *, retry_s: float = 90.0) -> None:
    """Connect this driver to the cluster at ``address``, retrying while its head starts.

    ``retry_s=0`` tries once (``abserve status``: a table without replica counts
    beats a wait). A driver already connected stays as it is.
    """
    enable_token_auth()
    import ray

    deadline = time.monotonic() + retry_s
    while not ray.is_initialized():
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except Exception:  # noqa: BLE001 - the head may still be starting
            if time.monotonic() >= deadline:
                raise
            time.sleep(1)
