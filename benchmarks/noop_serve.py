"""Variant (n): the ceiling, a plain Ray Serve deployment that does no work.

One replica with (b)'s CPU share, its own ingress (raw Starlette request), in
the same Ray instance and ingress mode as (b). It reads the body
(``await request.body()``, no JSON parse) and answers a constant dict shaped
like (b)'s answer (label, one probability per activity class, version): no
model, no batching, no router. What it serves under (b)'s load is the most one
Serve replica moves on these cores; it is context for the other rows, not a
target.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from starlette.requests import Request

__all__ = ["ANSWER", "NOOP_APP", "NOOP_DEPLOYMENT", "NoopModel", "noop_app"]

NOOP_APP = "noop"
NOOP_DEPLOYMENT = "noop"
# (b)'s answer shape, fixed: the activity model's eight classes, a uniform distribution.
_LABELS = ("Still", "Walking", "Running", "Biking", "Car", "Bus", "Train", "Subway")
ANSWER: dict[str, Any] = {
    "label": _LABELS[0],
    "probabilities": dict.fromkeys(_LABELS, 1.0 / len(_LABELS)),
    "version": "v1",
}


@serve.deployment(max_ongoing_requests=256)  # (b)'s
class NoopModel:
    async def __call__(self, request: Request) -> dict[str, Any]:
        await request.body()
        return ANSWER


def noop_app(num_cpus: float) -> Any:
    return NoopModel.options(  # type: ignore[attr-defined]
        name=NOOP_DEPLOYMENT, num_replicas=1, ray_actor_options={"num_cpus": num_cpus}
    ).bind()
