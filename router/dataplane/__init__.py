"""The data plane: what one prediction request goes through, as plain Python.

Policy, bandit, circuit breaker, cache, batching, admission, shadows and the
per-arm counters. No Ray import here; ``upstream`` is the one module that
touches Ray's handles and exceptions.
"""

from router.dataplane.core import Prediction, RouterCore

__all__ = ["Prediction", "RouterCore"]
