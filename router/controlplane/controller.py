"""The experiment controller: the one Serve deployment that owns the live experiment.

A thin shell around ``ExperimentService`` (router/controlplane/service.py),
which holds the logic and is unit-tested without Ray. What is left here is
what needs Serve: one replica (the single writer), the store on the
configured directory, the canary's clock, a task that ticks every
``state.canary_tick_s`` once routers report, and the sample-ratio gauges
(``SrmGauges``), set after each sync. A canary plan's replay gate runs the
``replay`` function serve/app.py binds (serve.offline.replay.replay_gate_result:
a layer above this one, so it is handed in, not imported) with this config.
Routers talk to it through ``router.controlplane.client.ControlClient``; on
start the service loads the persisted state, so weights survive router
restarts, controller restarts and a full ``abserve down`` / ``abserve up``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ray import serve

from router.controlplane.drift import DriftGauges, load_references
from router.controlplane.experiment import Declaration, ExperimentState
from router.controlplane.messages import Applied, SyncReply, SyncReport
from router.controlplane.operations import Operation
from router.controlplane.service import ExperimentService, Replayer
from router.controlplane.split import SrmGauges
from router.controlplane.store import FileStore
from serve.config import AbserveConfig, parse_config
from serve.telemetry import ray_metric_factory

__all__ = ["ExperimentController"]

log = logging.getLogger("ray.serve")


@serve.deployment  # its options (one replica, on the head node) are set in serve/app.py
class ExperimentController:
    def __init__(
        self, config: dict[str, Any],
        replay: Callable[[AbserveConfig, Mapping[str, Any], str], Mapping[str, Any]] | None
        = None,
    ) -> None:
        cfg = parse_config(config)
        self.config = cfg
        # A canary plan's replay gate (a Ray Data job on this cluster); None: plans with a
        # replay gate are refused.
        self.replayer: Replayer | None = (None if replay is None
                                          else functools.partial(replay, cfg))
        self.drift_gauges = DriftGauges(ray_metric_factory, cfg.experiment.name)
        # The service starts in the first reconfigure, which Serve calls before this replica
        # is ready: what the deployed config declares (experiment, canary) comes as its
        # user_config (serve/app.py, serve/serve_config.py), so that a file changing only
        # those redeploys without restarting a replica, and the saved state is judged
        # against that declaration, not against a stale copy of the file.
        self.service: ExperimentService
        self._drift_at = float("-inf")
        self._drift_failed = False
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

    def _count_drift_alert(self, alert: dict[str, Any]) -> None:
        try:
            self.drift_gauges.alert(alert)
        except Exception:  # noqa: BLE001 - a metric must not fail the report
            log.exception("could not count a drift alert")

    def _update_drift(self) -> None:
        """The drift gauges (and alerts), at most once per second: syncs come more often."""
        now = time.monotonic()
        if now - self._drift_at < 1.0:
            return
        self._drift_at = now
        try:
            self.drift_gauges.update(self.service.drift, self.service.recent_drift_report())
        except Exception:  # noqa: BLE001 - a metric must not fail the router's sync
            if not self._drift_failed:
                log.exception("could not set the drift gauges")
            self._drift_failed = True

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """A config revision: at start, and on every `serve deploy` whose user_config changed.
        A bad one raises, so Serve marks the deployment failed with the field-named error."""
        declared = Declaration.from_user_config(user_config, self.config)
        if not hasattr(self, "service"):
            cfg = self.config
            self.service = ExperimentService(
                cfg, FileStore(cfg.state.dir, cfg.app_name),
                references=load_references(cfg) if cfg.drift.enabled else None,
                on_drift_alert=self._count_drift_alert, declared=declared,
                replay=self.replayer,
            )
            return
        outcome = await self.service.declare(declared)
        log.info("config revision %s: %s", declared.digest, outcome)

    def __del__(self) -> None:
        # Serve calls this on a graceful shutdown (abserve down, a redeploy): the counters'
        # last second reaches the disk. A SIGKILL skips it; the journal has the labels.
        try:
            if hasattr(self, "service"):
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
        # Every sync, not only those carrying new rows: the window slides, and the last rows
        # of a burst may come within a second of the update before them.
        if self.config.drift.enabled and any(self.service.drift.references.values()):
            self._update_drift()
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
