"""The router replica's follower of the experiment controller. No Ray import.

The controller holds the experiment (arms, weights, revision); each router
replica follows it. The first request waits once for the controller's state
(``state.first_sync_timeout_s``; past it the config's weights serve), then a
poller reports this replica's counters and served predictions every
``state.poll_interval_s`` and picks up a new revision and the bandit's counts.
Served predictions wait here (at most ``state.max_pending_served``) until the
controller has them, so that feedback can be joined to them. A second loop
hands the recorder's counts to Ray's metric objects every
``router.metrics_flush_s``, off the event loop. The inputs and answers of versions with
reference statistics are kept by reference on the request path (``observe``) and binned
in a thread at each sync (router/controlplane/drift.py ``DriftBuffer``); the counts go
to the controller with the report.

All talk to the controller goes through the typed ``ControlPlane`` client.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from models.kinds import BINARY, MULTICLASS
from models.reference import Reference
from router.controlplane.client import ControlPlane, SyncReport
from router.controlplane.drift import DriftBuffer
from router.controlplane.experiment import ExperimentState, effective_weights
from router.dataplane.core import Prediction, RouterCore
from router.dataplane.recorder import BufferedRecorder
from serve.config import AbserveConfig

__all__ = ["Follower", "served_answers"]

log = logging.getLogger("ray.serve")


def served_answers(pred: Prediction) -> list[Any]:
    """Per row, what the controller's ledger joins feedback to (JSON-ready)."""
    spec = pred.spec
    if spec is None or spec.kind == MULTICLASS:
        return [int(label) for label in pred.labels]
    if spec.kind == BINARY:
        return [[int(label), round(float(score), 6)]
                for label, score in zip(pred.labels, pred.outputs[:, 0], strict=True)]
    return [[float(v) for v in row] for row in pred.outputs]


class Follower:
    def __init__(
        self,
        config: AbserveConfig,
        core: RouterCore,
        control: ControlPlane,
        recorder: BufferedRecorder,
        replica_id: str,
        references: dict[str, Reference | None] | None = None,
    ) -> None:
        self.core = core
        self.drift = DriftBuffer((references or {}) if config.drift.enabled else {},
                                 config.drift.max_pending_rows)
        self.control = control
        self.recorder = recorder
        self.replica_id = replica_id
        self._state_cfg = config.state
        self._metrics_flush_s = config.router.metrics_flush_s
        self.paused = False
        self._synced: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._served: list[tuple[str, str, int]] = []
        self.drift_status: dict[str, str] = {}  # the controller's word per version

    def apply_state(self, state: ExperimentState) -> None:
        """A state from the controller; the core changes only on a new revision."""
        if state.revision != self.core.revision:
            self.core.set_experiment(state.experiment, effective_weights(state), state.revision)
            self.paused = state.paused

    async def ensure_synced(self) -> None:
        """The first request waits for the controller's state once; then a poller follows it."""
        if self._synced is None:
            loop = asyncio.get_running_loop()
            self._synced = loop.create_future()
            try:
                self.apply_state(
                    await self.control.get_state(self._state_cfg.first_sync_timeout_s)
                )
            except Exception as exc:  # noqa: BLE001 - serve with the config's weights meanwhile
                log.warning("experiment state not loaded yet (%r); using the config's", exc)
            self._synced.set_result(None)
            self._tasks = [loop.create_task(self._poll()), loop.create_task(self._flush_metrics())]
        elif not self._synced.done():
            await asyncio.shield(self._synced)

    async def close(self) -> None:
        """Stop the loops (the tests' clean-up; a replica just exits)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(self._metrics_flush_s)
            snap = self.recorder.snapshot()
            if snap:
                try:
                    await asyncio.to_thread(self.recorder.emit, snap)
                except Exception as exc:  # noqa: BLE001 - metrics never break serving
                    log.warning("metrics export failed: %r", exc)

    async def _poll(self) -> None:
        interval = self._state_cfg.poll_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sync()
            except Exception as exc:  # noqa: BLE001 - keep serving the last known state
                log.warning("sync with the experiment controller failed: %r", exc)

    async def sync(self) -> None:
        """Report metrics and served predictions; pick up a new revision and bandit counts."""
        served, self._served = self._served, []
        pending = self.drift.take()
        drift = await asyncio.to_thread(self.drift.bin, pending) if pending else {}
        report = SyncReport(
            metrics={v: m.to_dict() for v, m in self.core.metrics.items() if m.requests},
            shadows={v: s.to_dict() for v, s in self.core.shadow_stats.items()},
            served=served,
            kind=self.core.spec.kind if self.core.spec is not None else MULTICLASS,
            drift=drift,
        )
        timeout_s = self._state_cfg.sync_timeout_s
        try:
            reply = await self.control.sync(self.replica_id, report, timeout_s)
        except BaseException:
            self._served = served + self._served  # try again next time
            self.drift.keep(drift)
            self._trim()
            raise
        self.core.set_bandit_counts(reply.bandit_successes, reply.bandit_failures)
        self.drift_status = dict(reply.drift)
        if reply.revision != self.core.revision:
            self.apply_state(await self.control.get_state(timeout_s))
            log.info("experiment revision %d applied", self.core.revision)

    def remember(self, request_id: str, pred: Prediction) -> None:
        """Keep what was served, so that feedback can be joined to it later.

        Item i of a batch request R is "R/i". What is kept is what the feedback is judged
        against: the label index (multiclass), ``[label, score]`` (binary: the score for
        the AUC) or the values (regression).
        """
        answers = served_answers(pred)
        if len(answers) == 1:
            self._served.append((request_id, pred.version, answers[0]))
        else:
            self._served.extend(
                (f"{request_id}/{i}", pred.version, a) for i, a in enumerate(answers)
            )
        self._trim()

    def observe(self, batch: Any, pred: Prediction) -> None:
        """Keep a reference to the inputs and answers for the drift counts (no work here)."""
        if self.drift.active:
            self.drift.append(pred.version, batch, pred.labels if pred.classifies else None,
                              pred.outputs)

    def _trim(self) -> None:
        limit = self._state_cfg.max_pending_served
        if len(self._served) > limit:
            del self._served[:-limit]

    @property
    def pending_served(self) -> int:
        return len(self._served)
