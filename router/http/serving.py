"""What the route modules share of the data plane: the model they serve and one prediction's path.

``Predictions.run`` is the same for /predict, /predict/batch and the OIP infer
routes: the core answers, Serve's request id names the answer, the
follower keeps it for the feedback join, and the prediction log (when on)
buffers it with its latency.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.kinds import OutputSpec
from models.registry import Manifest
from models.schema import Schema
from router.dataplane.core import Prediction, RouterCore
from router.dataplane.predlog import PredictionLog
from router.http.follower import Follower

__all__ = ["ModelInfo", "Predictions", "Runtime", "UpstreamArms"]


class Runtime(Protocol):
    """router.dataplane.upstream.RayRuntime, or a fake in tests."""

    def replica_id(self) -> str: ...

    def request_id(self) -> str: ...


class UpstreamArms(Protocol):
    """router.dataplane.upstream.Arms, or a fake in tests."""

    @property
    def versions(self) -> list[str]: ...

    async def predict(self, version: str, batch: np.ndarray, timeout_s: float) -> np.ndarray: ...

    async def ready(self, version: str, timeout_s: float) -> bool: ...

    async def stats(self, version: str, timeout_s: float) -> dict[str, Any] | None: ...

    def running_replicas(self, version: str) -> int | None: ...

    def hop_limit(self, version: str) -> int: ...


@dataclass(frozen=True)
class ModelInfo:
    """The one model a router serves: its versions' manifests, input shape or schema, and
    what its answers are (the output kind, shared by every version)."""

    name: str
    manifests: Mapping[str, Manifest]
    input_shape: tuple[int, ...]
    labels: tuple[str, ...]
    output_spec: OutputSpec | None = None  # None: multiclass over ``labels``
    schema: Schema | None = None  # a tabular model's input fields
    label_index: Mapping[str, int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_index", {lb: i for i, lb in enumerate(self.labels)})

    @property
    def spec(self) -> OutputSpec:
        """What the answers are: the kind, its labels, threshold or output names."""
        return self.output_spec or OutputSpec.of("multiclass", self.labels)

    @classmethod
    def from_manifests(cls, name: str, manifests: Mapping[str, Manifest]) -> ModelInfo:
        shapes = {tuple(m.input_shape) for m in manifests.values()}
        specs = {m.spec for m in manifests.values()}
        schemas = {json.dumps(m.input_schema, sort_keys=True) for m in manifests.values()}
        if len(shapes) != 1 or len(specs) != 1 or len(schemas) != 1:
            raise ValueError(
                "every version of one model must share its input shape (or schema) and its "
                f"output kind, labels, threshold and outputs; got shapes {shapes}, "
                f"outputs {sorted(map(str, specs))} and {len(schemas)} input schemas"
            )
        first = next(iter(manifests.values()))
        spec = specs.pop()
        schema = None if first.input_schema is None else Schema.parse(first.input_schema)
        return cls(name, dict(manifests), shapes.pop(), spec.class_labels, spec, schema)

    @property
    def kind(self) -> str:
        return self.spec.kind


class Predictions:
    def __init__(self, core: RouterCore, follower: Follower, runtime: Runtime,
                 predlog: PredictionLog | None = None) -> None:
        """``predlog``: the prediction log (router/dataplane/predlog.py), None when off."""
        self.core = core
        self.follower = follower
        self.runtime = runtime
        self.predlog = predlog

    async def run(
        self, batch: np.ndarray, user_key: str | None, pinned: str | None
    ) -> tuple[str, Prediction]:
        """The prediction and its request id (the caller has awaited ``ensure_synced``)."""
        start = time.perf_counter()
        pred = await self.core.predict(batch, user_key=user_key, pinned=pinned)
        rid = self.runtime.request_id()
        if self.predlog is not None:  # one append; the log's thread does the rest
            self.predlog.record(rid, self.follower.recorder.experiment, pred, batch,
                                (time.perf_counter() - start) * 1000.0)
        self.follower.remember(rid, pred)
        self.follower.observe(batch, pred)
        return rid, pred
