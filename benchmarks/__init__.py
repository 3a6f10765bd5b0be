"""Benchmarks, the soak and drill helpers: top layer, imported by the CLI only inside
its commands (abserve bench, soak, bench-precision).
"""

__all__: list[str] = []
