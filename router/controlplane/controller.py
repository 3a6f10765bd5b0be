"""The experiment controller: the one Serve deployment that owns the live experiment.

A thin shell around ``ExperimentService`` (router/controlplane/service.py),
which holds the logic and is unit-tested without Ray. What is left here is
what needs Serve: one replica (the single writer), the store on the
configured directory, the canary's clock, a task that ticks every
``state.canary_tick_s`` once routers report, and the sample-ratio gauges
(``SrmGauges``), set after each sync. Routers talk to it through
``router.controlplane.client.ControlClient``; on start the service loads the
persisted state, so weights survive router restarts, controller restarts
and a full ``abserve down`` / ``abserve up``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from router.controlplane.experiment import ExperimentState
from router.controlplane.messages import Applied, SyncReply, SyncReport
from router.controlplane.operations import Operation
from router.controlplane.service import ExperimentService
from router.controlplane.split import SrmGauges
from router.controlplane.store import FileStore
from serve.config import parse_config
from serve.telemetry import ray_metric_factory

__all__ = ["ExperimentController"]

log = logging.getLogger("ray.serve")


@serve.deployment  # its options (one replica, on the head node) are set in serve/app.py
class ExperimentController:
    def __init__(self, config: dict[str, Any]) -> None:
        cfg = parse_config(config)
        self.service = ExperimentService(cfg, FileStore(cfg.state.dir, cfg.app_name))
        self.tick_s = cfg.state.canary_tick_s
        self._ticker: asyncio.Task[None] | None = None
        self.srm_gauges = SrmGauges(ray_metric_factory)
        self._gauges_failed = False

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.service.canary_tick()
            except Exception:  # noqa: BLE001 - one bad tick must not stop the clock
                log.exception("canary tick failed")

    def __del__(self) -> None:
        # Serve calls this on a graceful shutdown (abserve down, a redeploy): the counters'
        # last second reaches the disk. A SIGKILL skips it; the journal has the labels.
        try:
            self.service.flush()
        except Exception:  # noqa: BLE001 - shutting down; nothing to report to
            log.exception("could not save the experiment counters on shutdown")

    # ------------------------------------------------------------ ControlClient's calls, typed

    def get_state(self) -> ExperimentState:
        return self.service.state

    async def apply(self, op: Operation, who: str) -> Applied:
        return await self.service.apply(op, who)

    async def sync(self, replica_id: str, report: SyncReport) -> SyncReply:
        if self._ticker is None:  # the canary clock runs once routers report
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())
        reply = self.service.sync(replica_id, report)
        try:
            self.srm_gauges.update(self.service.ledger.split, self.service.state.experiment.name)
        except Exception:  # noqa: BLE001 - a metric must not fail the router's sync
            if not self._gauges_failed:  # once: syncs come every second from every router
                log.exception("could not set the sample-ratio gauges")
            self._gauges_failed = True
        return reply

    def record_feedback(self, request_id: str, label: int | list[float]) -> dict[str, Any]:
        return self.service.record_feedback(request_id, label)

    def report(self) -> dict[str, Any]:
        return self.service.report()

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.service.audit(limit)

    def canary_status(self) -> dict[str, Any]:
        return self.service.canary_status()

    async def start_canary(self, plan: dict[str, Any], who: str) -> dict[str, Any]:
        return await self.service.start_canary(plan, who)

    async def canary_action(self, action: str, who: str) -> dict[str, Any]:
        return await self.service.canary_action(action, who)
