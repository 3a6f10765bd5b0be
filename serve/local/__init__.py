"""Local processes: free ports, PIDs, redis-server, the Ray head and its
ingress environment, and their teardown. Used by the CLI, the benchmarks,
the soak and the test fixtures.
"""

from serve.local.env import IngressMode, ray_env

__all__ = ["IngressMode", "ray_env"]
