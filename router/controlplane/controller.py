"""The experiment controller: one Serve deployment that owns the live experiment.

It is the single writer of the experiment state: admin operations arrive
here (through any router replica), are validated and applied one at a time
under a lock, persisted (``router/controlplane/store.py``) and given a new revision.
Routers poll ``revision()`` and fetch ``get_state()`` when it moves, so a
change reaches every router replica within ``state.poll_interval_s`` plus
one call. On start it loads the persisted state, so weights survive router
restarts, controller restarts and a full ``abserve down`` / ``abserve up``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from ray import serve

from router.controlplane import operations
from router.controlplane.canary import CanaryPlan, CanaryStatus
from router.controlplane.client import SyncReply, SyncReport
from router.controlplane.experiment import ExperimentState, apply_operation, effective_weights
from router.controlplane.ledger import Ledger
from router.controlplane.rollout import Rollout
from router.controlplane.store import FileStore
from serve.config import AbserveConfig, parse_config
from serve.errors import InvalidInput, NotFound

CANARY_TICK_S = 1.0
PLAN_KEYS = {"candidate", "baseline", "steps", "interval_s", "min_requests", "gates"}

__all__ = ["ExperimentController"]

log = logging.getLogger("ray.serve")


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.05}, max_ongoing_requests=1000)
class ExperimentController:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config: AbserveConfig = parse_config(config)
        self.deployed = frozenset(m.version for m in self.config.models)
        self.store = FileStore(self.config.state.dir, self.config.app_name)
        self.lock = asyncio.Lock()
        self.state = self._initial_state()
        saved = self.store.load_extra("canary")
        self.rollout = Rollout.from_dict(saved) if saved else None
        self._ticker: asyncio.Task[None] | None = None
        self.ledger = Ledger(
            versions=sorted(self.deployed),
            ttl_s=self.config.feedback.ttl_s,
            max_entries=self.config.feedback.max_entries,
        )

    def _initial_state(self) -> ExperimentState:
        saved = self.store.load()
        if saved is not None:
            try:
                state = ExperimentState.from_dict(saved)
            except Exception as exc:  # noqa: BLE001 - a bad file must not stop the service
                log.warning("ignoring unreadable experiment state %s: %r",
                            self.store.state_path, exc)
            else:
                missing = {a.version for a in state.experiment.arms} - self.deployed
                if not missing:
                    log.info("experiment state revision %d loaded from %s",
                             state.revision, self.store.state_path)
                    return state
                log.warning("saved experiment state names versions %s that are not deployed; "
                            "starting from the config", sorted(missing))
        state = ExperimentState(self.config.experiment, revision=1, updated_at=time.time())
        self.store.save(state.to_dict(), {
            "time": state.updated_at, "who": "config", "operation": "init",
            "params": {}, "revision": state.revision, "before": None,
            "after": {"weights": state.weights(), "baseline": state.experiment.baseline,
                      "paused": False},
        })
        return state

    def revision(self) -> int:
        return self.state.revision

    def get_state(self) -> dict[str, Any]:
        return self.state.to_dict()

    async def apply(self, op: str, params: dict[str, Any], who: str) -> dict[str, Any]:
        """Validate and apply one operation atomically; raises InvalidInput/NotFound."""
        async with self.lock:
            return self._apply_locked(op, params, who)

    def _apply_locked(self, op: str, params: dict[str, Any], who: str) -> dict[str, Any]:
        new, entry = apply_operation(self.state, op, params, deployed=self.deployed, who=who)
        self.store.save(new.to_dict(), entry)  # durable before it is visible
        self.state = new
        log.info("experiment revision %d: %s by %s", new.revision, op, who)
        return new.to_dict()

    # ------------------------------------------------------------ typed (ControlClient)

    def current_state(self) -> ExperimentState:
        return self.state

    async def apply_op(self, op: operations.Operation, who: str) -> ExperimentState:
        async with self.lock:
            new, entry = operations.apply_operation(
                self.state, op, deployed=self.deployed, who=who
            )
            self.store.save(new.to_dict(), entry)  # durable before it is visible
            self.state = new
            log.info("experiment revision %d: %s by %s", new.revision, op.kind, who)
            return new

    async def sync_report(self, replica_id: str, report: SyncReport) -> SyncReply:
        reply = await self.sync(replica_id, {"metrics": report.metrics,
                                             "shadows": report.shadows,
                                             "served": report.served})
        return SyncReply(reply["revision"], reply["bandit"]["successes"],
                         reply["bandit"]["failures"])

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.store.audit(limit)

    # ------------------------------------------------------------ metrics and feedback

    async def sync(self, replica: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A router replica's report in; the revision and the bandit's counts back."""
        if self._ticker is None:  # the canary clock runs once routers report
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())
        self.ledger.update(replica, payload)
        return {"revision": self.state.revision, "bandit": self.ledger.bandit_counts()}

    def record_feedback(self, request_id: str, label: int) -> dict[str, Any]:
        return self.ledger.record_feedback(request_id, label)

    def report(self) -> dict[str, Any]:
        report = self.ledger.report(self.state.experiment.baseline, effective_weights(self.state))
        report["experiment"] = self.state.experiment.name
        report["revision"] = self.state.revision
        return report

    # ------------------------------------------------------------ canary

    def _save_rollout(self, decision: dict[str, Any] | None = None) -> None:
        self.store.save_extra("canary", self.rollout.to_dict() if self.rollout else None)
        if decision is not None:
            self.store.append_audit({
                "time": decision["time"], "who": "canary", "operation": "canary",
                "params": {"action": decision["action"], "verdict": decision["verdict"]},
                "revision": self.state.revision, "reasons": decision["reasons"],
                "metrics": decision["metrics"], "before": None,
                "after": {"weights": self.state.weights(),
                          "baseline": self.state.experiment.baseline,
                          "paused": self.state.paused},
            })

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(CANARY_TICK_S)
            try:
                await self.canary_tick()
            except Exception:  # noqa: BLE001 - one bad tick must not stop the clock
                log.exception("canary tick failed")

    async def canary_tick(self, now: float | None = None) -> None:
        rollout = self.rollout
        if rollout is None or rollout.state.status is not CanaryStatus.RUNNING:
            return
        async with self.lock:
            decision, op = rollout.tick(
                self.ledger.merged_metrics(), self.state.weights(), now or time.time(),
                shadow=self.ledger.merged_shadows().get(rollout.plan.candidate),
            )
            if decision.verdict.value == "wait":
                return
            if op is not None:
                try:
                    self._apply_locked(op[0], op[1], "canary")
                except Exception as exc:  # noqa: BLE001 - e.g. an operator changed the arms
                    rollout.abort(time.time())
                    log.warning("canary aborted: %s", exc)
            self._save_rollout(decision.to_dict())
            log.info("canary %s: %s", decision.action.value, "; ".join(decision.reasons))

    async def start_canary(self, plan: dict[str, Any], who: str) -> dict[str, Any]:
        """Start a plan for a deployed candidate against the current baseline."""
        async with self.lock:
            if self.rollout is not None and not self.rollout.state.done:
                raise InvalidInput(
                    f"a canary for {self.rollout.plan.candidate} is {self.rollout.state.status}; "
                    "abort it first"
                )
            data = dict(plan)
            data.setdefault("baseline", self.state.experiment.baseline)
            unknown = sorted(set(data) - PLAN_KEYS)
            if unknown:
                raise InvalidInput(
                    f"canary plan: unknown key(s) {unknown}; known {sorted(PLAN_KEYS)}"
                )
            try:
                parsed = CanaryPlan.from_dict(data)
            except (ValueError, TypeError, KeyError) as exc:
                raise InvalidInput(f"canary plan: {exc}") from None
            if parsed.baseline != self.state.experiment.baseline:
                raise InvalidInput("canary plan: baseline must be the experiment's baseline")
            if parsed.candidate not in self.deployed:
                raise InvalidInput(f"candidate {parsed.candidate!r} is not deployed")
            if parsed.candidate not in self.state.weights():
                self._apply_locked("add_candidate", {"version": parsed.candidate}, who)
            rollout = Rollout.create(parsed)
            op, params = rollout.start(self.state.weights(), time.time())
            self._apply_locked(op, params, who)
            self.rollout = rollout
            self._save_rollout(rollout.state.history[-1].to_dict())
            return self.canary_status()

    async def canary_action(self, action: str, who: str) -> dict[str, Any]:
        """pause | resume | abort (abort rolls the candidate back to 0 %)."""
        async with self.lock:
            if self.rollout is None:
                raise NotFound("no canary plan")
            now = time.time()
            try:
                if action == "pause":
                    self.rollout.pause(now)
                elif action == "resume":
                    self.rollout.resume(now)
                elif action == "abort":
                    op, params = self.rollout.abort(now)
                    self._apply_locked(op, params, who)
                else:
                    raise NotFound(f"unknown canary action {action!r}")
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            self._save_rollout(self.rollout.state.history[-1].to_dict())
            return self.canary_status()

    def canary_status(self) -> dict[str, Any]:
        status = {"plan": None, "state": None} if self.rollout is None else self.rollout.to_dict()
        return {**status, "controller_pid": os.getpid()}
