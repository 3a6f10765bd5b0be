"""The experiment service: everything the controller does, without Ray.

It is the single writer of the experiment state. Operations are validated
and applied one at a time under a lock, persisted and only then made
visible, each with an audit entry; routers report their counters through
``sync`` and get the revision and the bandit's counts back; feedback is
joined in the ledger; a canary plan is started, ticked and acted on here and
persisted beside the state, so a restarted controller carries on where it
stopped. The store and the clock are injected, so tests/unit/test_service.py
drives all of it with a temporary store and a fake clock; the Serve
deployment (``router/controlplane/controller.py``) only wraps it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from models.kinds import REGRESSION
from router.controlplane.canary import CanaryPlan, CanaryStatus, Verdict
from router.controlplane.experiment import ExperimentState, effective_weights
from router.controlplane.ledger import Ledger
from router.controlplane.messages import Applied, SyncReply, SyncReport
from router.controlplane.operations import AddCandidate, Operation, apply_operation, audit_entry
from router.controlplane.rollout import Rollout
from router.controlplane.store import Journal
from serve.config import AbserveConfig
from serve.errors import InvalidInput, NotFound

__all__ = ["PLAN_KEYS", "ExperimentService", "StateStore"]

log = logging.getLogger("ray.serve")

PLAN_KEYS = frozenset({"candidate", "baseline", "steps", "interval_s", "min_requests", "gates"})
CANARY_EXTRA = "canary"  # the store's document that holds the canary plan and state
COUNTERS_EXTRA = "ledger"  # the router replicas' cumulative counters
HISTORY_EXTRA = "history"  # the report's time series
SERVED_JOURNAL = "served"  # served predictions waiting for a label, and counted labels
COUNTERS_EVERY_S = 1.0  # the counters' snapshot is at most this much behind the routers


class StateStore(Protocol):
    """What the service needs of its store (``router.controlplane.store.FileStore``)."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any], audit_entry: dict[str, Any] | None = None) -> None: ...

    def append_audit(self, entry: dict[str, Any]) -> None: ...

    def audit(self, limit: int = 100) -> list[dict[str, Any]]: ...

    def load_extra(self, kind: str) -> dict[str, Any] | None: ...

    def save_extra(self, kind: str, data: dict[str, Any] | None) -> None: ...

    def journal(self, kind: str) -> Journal: ...


class ExperimentService:
    def __init__(
        self,
        config: AbserveConfig,
        store: StateStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.deployed = frozenset(m.version for m in config.models)
        self.store = store
        self.clock = clock
        self.lock = asyncio.Lock()
        self.state = self._initial_state()
        saved = store.load_extra(CANARY_EXTRA)
        self.rollout = Rollout.from_dict(saved) if saved else None
        self.ledger = Ledger(
            versions=sorted(self.deployed),
            ttl_s=config.feedback.ttl_s,
            max_entries=config.feedback.max_entries,
            clock=clock,
            journal=store.journal(SERVED_JOURNAL),
        )
        self.ledger.restore(store.load_extra(COUNTERS_EXTRA), store.load_extra(HISTORY_EXTRA))
        self._counters_saved_at = float("-inf")
        self._counters_dirty = False

    def _saved_state(self) -> ExperimentState | None:
        """The persisted state, if it is readable and names only deployed versions."""
        saved = self.store.load()
        if saved is None:
            return None
        try:
            state = ExperimentState.from_dict(saved)
        except Exception as exc:  # noqa: BLE001 - a bad file must not stop the service
            log.warning("ignoring unreadable experiment state: %r", exc)
            return None
        missing = {a.version for a in state.experiment.arms} - self.deployed
        if missing:
            log.warning("saved experiment state names versions %s that are not deployed; "
                        "starting from the config", sorted(missing))
            return None
        log.info("experiment state revision %d loaded", state.revision)
        return state

    def _initial_state(self) -> ExperimentState:
        state = self._saved_state()
        if state is not None:
            return state
        state = ExperimentState(self.config.experiment, revision=1, updated_at=self.clock())
        self.store.save(state.to_dict(), audit_entry(state.updated_at, "config", "init", {},
                                                     None, state))
        return state

    # ------------------------------------------------------------ the experiment

    async def apply(self, op: Operation, who: str) -> Applied:
        """Validate and apply one operation atomically; raises InvalidInput/NotFound.

        The result carries the new state and the sticky users it moved beyond the promise."""
        async with self.lock:
            return self._apply_locked(op, who)

    def _apply_locked(self, op: Operation, who: str) -> Applied:
        new, entry = apply_operation(self.state, op, deployed=self.deployed, who=who,
                                     clock=self.clock)
        self.store.save(new.to_dict(), entry)  # durable before it is visible
        self.state = new
        log.info("experiment revision %d: %s by %s", new.revision, op.kind, who)
        if "reassigned" in entry:
            log.warning("experiment revision %d moves sticky users beyond the promise: %s",
                        new.revision, entry["reassigned"]["moves"])
        return Applied(new, entry.get("reassigned"))

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.store.audit(limit)

    # ------------------------------------------------------------ metrics and feedback

    def sync(self, replica_id: str, report: SyncReport) -> SyncReply:
        """A router replica's report in; the revision and the bandit's counts back."""
        def counters() -> tuple[Any, Any]:
            return (self.ledger.replica_metrics.get(replica_id),
                    self.ledger.replica_shadows.get(replica_id))

        before = counters()
        added_history = self.ledger.update(
            replica_id, {"metrics": report.metrics, "shadows": report.shadows,
                         "served": report.served, "kind": report.kind},
            self._weights_in_force())
        self._counters_dirty |= before != counters()
        self._save_counters(added_history)
        counts = self.ledger.bandit_counts()
        return SyncReply(self.state.revision, counts["successes"], counts["failures"])

    def _weights_in_force(self) -> dict[str, float] | None:
        """The weights routers serve with now (the paused experiment's included); None under
        the bandit, where no weights are in force (the sample-ratio checks skip then)."""
        if self.state.experiment.policy == "bandit":
            return None
        return effective_weights(self.state)

    def _save_counters(self, history: bool = False, force: bool = False) -> None:
        """The counters' snapshot, when they changed and at most every COUNTERS_EVERY_S."""
        now = self.clock()
        due = now - self._counters_saved_at >= COUNTERS_EVERY_S
        if self._counters_dirty and (due or force):
            self.store.save_extra(COUNTERS_EXTRA, self.ledger.counters())
            self._counters_saved_at, self._counters_dirty = now, False
        if history:
            self.store.save_extra(HISTORY_EXTRA, {"points": self.ledger.history})

    def flush(self) -> None:
        """Save what is not saved yet (a graceful shutdown)."""
        self._save_counters(force=True)

    def record_feedback(self, request_id: str, label: int | list[float]) -> dict[str, Any]:
        return self.ledger.record_feedback(request_id, label)

    def report(self) -> dict[str, Any]:
        report = self.ledger.report(self.state.experiment.baseline, effective_weights(self.state))
        report["experiment"] = self.state.experiment.name
        report["revision"] = self.state.revision
        return report

    # ------------------------------------------------------------ canary

    def _save_rollout(self, decision: Mapping[str, Any] | None = None) -> None:
        self.store.save_extra(CANARY_EXTRA, self.rollout.to_dict() if self.rollout else None)
        if decision is not None:
            self.store.append_audit(audit_entry(
                decision["time"], "canary", "canary",
                {"action": decision["action"], "verdict": decision["verdict"]},
                None, self.state, reasons=decision["reasons"], metrics=decision["metrics"],
            ))

    async def canary_tick(self) -> None:
        """Judge a running canary's window; carry out its decision (advance, promote, rollback)."""
        rollout = self.rollout
        if rollout is None or rollout.state.status is not CanaryStatus.RUNNING:
            return
        async with self.lock:
            opened, had_errors_base = rollout.base_window, rollout.errors_base is not None
            regression = self.ledger.kind == REGRESSION
            decision, op = rollout.tick(
                self.ledger.merged_metrics(), self.state.weights(), self.clock(),
                shadow=self.ledger.merged_shadows().get(rollout.plan.candidate),
                in_force=self._weights_in_force(), kind=self.ledger.kind,
                errors=self.ledger.errors if regression else None,
            )
            if decision.verdict is Verdict.WAIT:
                started_errors = (rollout.errors_base is not None) != had_errors_base
                if rollout.base_window != opened or started_errors:  # durable too
                    self._save_rollout()
                return
            if op is not None:
                try:
                    self._apply_locked(op, "canary")
                except Exception as exc:  # noqa: BLE001 - e.g. an operator changed the arms
                    rollout.abort(self.clock())
                    log.warning("canary aborted: %s", exc)
            self._save_rollout(decision.to_dict())
            log.info("canary %s: %s", decision.action.value, "; ".join(decision.reasons))

    def _parse_plan(self, plan: Mapping[str, Any]) -> CanaryPlan:
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
        return parsed

    async def start_canary(self, plan: Mapping[str, Any], who: str) -> dict[str, Any]:
        """Start a plan for a deployed candidate against the current baseline."""
        async with self.lock:
            if self.rollout is not None and not self.rollout.state.done:
                raise InvalidInput(
                    f"a canary for {self.rollout.plan.candidate} is {self.rollout.state.status}; "
                    "abort it first"
                )
            parsed = self._parse_plan(plan)
            rollout = Rollout.create(parsed)
            first = rollout.start(self.state.weights(), self.clock())  # refuses a misfit plan
            if parsed.candidate not in self.state.weights():
                self._apply_locked(AddCandidate(parsed.candidate), who)
            self._apply_locked(first, who)
            self.rollout = rollout
            self._save_rollout(rollout.state.history[-1].to_dict())
            return self.canary_status()

    async def canary_action(self, action: str, who: str) -> dict[str, Any]:
        """pause | resume | abort (abort rolls the candidate back to 0 %)."""
        async with self.lock:
            if self.rollout is None:
                raise NotFound("no canary plan")
            now = self.clock()
            try:
                if action == "pause":
                    self.rollout.pause(now)
                elif action == "resume":
                    self.rollout.resume(now)
                elif action == "abort":
                    self._apply_locked(self.rollout.abort(now), who)
                else:
                    raise NotFound(f"unknown canary action {action!r}")
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            self._save_rollout(self.rollout.state.history[-1].to_dict())
            return self.canary_status()

    def canary_status(self) -> dict[str, Any]:
        """The plan, its state and history, and the pid of the process that runs the canary."""
        status = {"plan": None, "state": None} if self.rollout is None else self.rollout.to_dict()
        return {**status, "controller_pid": os.getpid()}
