"""The A/B router: policy, cache, fallback (pure) and the Ray ingress (glue).

Import ``router.ingress`` explicitly for the deployment; this package's
top level stays free of Ray so the pure parts import in milliseconds.
"""

from router.dataplane.fallback import BreakerState, CircuitBreaker
from router.dataplane.policy import Arm, RouteContext, WeightedPolicy

__all__ = ["Arm", "BreakerState", "CircuitBreaker", "RouteContext", "WeightedPolicy"]
