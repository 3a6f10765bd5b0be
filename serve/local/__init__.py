"""Local processes: free ports, PIDs, redis-server, the Ray head and its ingress
environment, a private Ray for benchmarks and tests, and their teardown
(Serve's HAProxy included, by PID).

One implementation for the CLI, every benchmark, the soak and the test
fixtures; nothing here imports the CLI or the benchmarks.
"""

from serve.local.env import IngressMode, ray_env
from serve.local.haproxy import haproxy_pids
from serve.local.pids import pid_alive, psutil_module, stop_pid
from serve.local.ports import LISTEN_PORTS, free_port, free_ports, port_free, port_open
from serve.local.private_ray import (
    PrivateRay,
    private_ray,
    private_ray_env,
    stop_private_ray,
    use_private_ray_env,
)
from serve.local.ray_head import (
    connect,
    enable_token_auth,
    ray_head_command,
    start_ray_head,
    stop_ray_head,
    wait_for_gcs,
)
from serve.local.redis_server import redis_command, start_redis

__all__ = [
    "LISTEN_PORTS", "IngressMode", "PrivateRay", "connect", "enable_token_auth", "free_port",
    "free_ports", "haproxy_pids", "pid_alive", "port_free", "port_open", "private_ray",
    "private_ray_env", "psutil_module", "ray_env", "ray_head_command", "redis_command",
    "start_ray_head", "start_redis", "stop_pid", "stop_private_ray", "stop_ray_head",
    "use_private_ray_env", "wait_for_gcs",
]
