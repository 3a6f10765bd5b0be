"""Model deployments: the generic Serve deployment and one backend per framework.

Import ``deployments.model`` for the Ray deployment; ``deployments.backends``
imports no framework until a backend loads.
"""

__all__: list[str] = []
