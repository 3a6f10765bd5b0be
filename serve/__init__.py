"""abserve: A/B tests and canary rollouts of ML models on Ray Serve."""

__all__: list[str] = []
