"""A model replica that fails or slows down on command: for drills and tests only.

The production deployment (deployments/model.py) has no fault switch; the
chaos suite, the soak and the canary tests bind this one instead
(``build_app(config, model_deployment=FaultInjectingDeployment)``), and set
faults on its live replicas with ``benchmarks.faults.set_fault_all``. A router
replica's colocated copy of a version is built from the same class
(deployments/colocated.py), so it takes the same faults.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import numpy as np
from ray import serve

from deployments.model import ModelReplica

__all__ = ["FaultInjectingDeployment", "FaultInjectingReplica", "InjectedFault"]


class InjectedFault(RuntimeError):
    """Raised on purpose by fault injection (tests and chaos drills)."""


class FaultInjectingReplica(ModelReplica):
    error_rate = 0.0
    delay_s = 0.0

    async def predict(self, batch: np.ndarray) -> np.ndarray:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error_rate and random.random() < self.error_rate:
            raise InjectedFault(f"injected fault in {self.manifest.version}")
        return await super().predict(batch)

    def compute(self, batch: np.ndarray) -> np.ndarray:
        """The colocated copy in a router replica calls this on its own thread: the same
        faults, as a blocking model would show them (a slow call holds the thread)."""
        if self.colocated:
            if self.delay_s:
                time.sleep(self.delay_s)
            if self.error_rate and random.random() < self.error_rate:
                raise InjectedFault(f"injected fault in colocated {self.manifest.version}")
        return super().compute(batch)

    def set_fault(self, error_rate: float = 0.0, delay_s: float = 0.0) -> int:
        """Make this replica fail or slow down on purpose; returns its PID, so a drill
        can tell when every replica has it."""
        self.error_rate = float(error_rate)
        self.delay_s = float(delay_s)
        return os.getpid()


FaultInjectingDeployment = serve.deployment(FaultInjectingReplica)
