"""The experiment service: everything the controller does, without Ray.

It is the single writer of the experiment state. Operations are validated
and applied one at a time under a lock, persisted and only then made
visible, each with an audit entry; routers report their counters through
``sync`` and get the revision and the bandit's counts back; feedback is
joined in the ledger; a canary plan is started, ticked and acted on here and
persisted beside the state, so a restarted controller carries on where it
stopped. A plan with a replay gate waits (no weight changes) until the injected
``replay`` callable (serve/app.py binds serve.offline.replay.replay_gate_result,
which this layer may not import) has passed the candidate on the prediction log;
``canary_tick`` starts it in a thread, one at a time. The store and the clock
are injected, so tests/unit/test_service.py drives all of it with a temporary
store and a fake clock; the Serve deployment
(``router/controlplane/controller.py``) only wraps it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pydantic import ValidationError

from models.kinds import REGRESSION
from models.reference import Reference
from router.controlplane.canary import CanaryPlan, CanaryStatus, Verdict, abort
from router.controlplane.drift import DriftMonitor, summarize_drift
from router.controlplane.experiment import Declaration, ExperimentState, effective_weights
from router.controlplane.ledger import Ledger
from router.controlplane.messages import Applied, SyncReply, SyncReport
from router.controlplane.operations import AddCandidate, Operation, apply_operation, audit_entry
from router.controlplane.rollout import Rollout
from router.controlplane.store import Journal
from serve.config import (
    AbserveConfig,
    CanaryGatesConfig,
    CanaryPlanConfig,
    first_error_field,
    format_validation_errors,
)
from serve.errors import InvalidInput, NotFound

__all__ = ["ExperimentService", "Replayer", "StateStore"]

log = logging.getLogger("ray.serve")

CANARY_EXTRA = "canary"  # the store's document that holds the canary plan and state
COUNTERS_EXTRA = "ledger"  # the router replicas' cumulative counters
HISTORY_EXTRA = "history"  # the report's time series
SERVED_JOURNAL = "served"  # served predictions waiting for a label, and counted labels
COUNTERS_EVERY_S = 1.0  # the counters' snapshot is at most this much behind the routers
REPLAY_EXTRA = "replay"  # the canary plan's replay gate: waiting, running, or its verdict

# A canary plan's replay gate: (the gate as the plan writes it, the candidate) -> a verdict
# {"verdict": "passed" | "refused", "reason", "agreement_percent", "rows", "out", ...}.
# Blocking (a Ray Data job): the service calls it in a thread, never on the event loop.
Replayer = Callable[[Mapping[str, Any], str], Mapping[str, Any]]

# A replay's status (canary_status()["replay"]["status"])
WAITING, RUNNING, PASSED, REFUSED, ABORTED = "waiting", "running", "passed", "refused", "aborted"
REPLAY_VIEW = ("candidate", "status", "verdict", "reason", "agreement_percent", "rows", "out",
               "requested", "started", "finished")


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
        references: Mapping[str, Reference | None] | None = None,
        on_drift_alert: Callable[[dict[str, Any]], None] | None = None,
        declared: Declaration | None = None,
        replay: Replayer | None = None,
    ) -> None:
        """``references``: each version's reference statistics (drift.load_references; the
        controller reads them from the registry), None for none: no drift is computed.
        ``declared``: what the deployed config declares (Serve's user_config), by default
        ``config``'s own experiment and canary; the saved state is kept only when it was made
        on that same config revision (``_adopt``). ``replay``: runs a canary plan's replay
        gate (``Replayer``); without one a plan with ``replay`` is refused."""
        self.config = config
        self.deployed = frozenset(m.version for m in config.models)
        self.store = store
        self.clock = clock
        self.lock = asyncio.Lock()
        saved = store.load_extra(CANARY_EXTRA)
        self.rollout = Rollout.from_dict(saved) if saved else None
        self.replayer = replay
        self.replay: dict[str, Any] | None = store.load_extra(REPLAY_EXTRA)
        if self.replay is not None and self.replay.get("status") == RUNNING:
            # the controller stopped during the replay: it runs again
            self.replay = {**self.replay, "status": WAITING, "started": None}
        self._replay_task: asyncio.Task[None] | None = None
        self.declared = declared or Declaration.of(config)
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
        self.drift = DriftMonitor(config.drift, references or {}, clock=clock,
                                  on_alert=on_drift_alert)
        # (when, report, summary): the last drift computation, shared by the sync replies and
        # the controller's gauges so a second's syncs compute the windows once
        self._drift_cache: tuple[float, dict[str, Any], dict[str, str]] | None = None
        self.state: ExperimentState
        self._adopt(self.declared, self._saved_state())

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

    # ------------------------------------------------------------ the declared config

    def _adopt(self, declared: Declaration, saved: ExperimentState | None) -> dict[str, Any]:
        """The reconciliation rule (docs/experiments.md, "The config file is the desired
        state"): a live state made on ``declared``'s config revision is kept, with its live
        changes (admin calls, canary steps); any other (another revision, none recorded, or
        no saved state) is replaced by what ``declared`` says, a running canary of it is
        rolled back, the audit log says what was replaced, and a declared canary plan starts.
        Returns what happened (``abserve diff`` and the controller's log show it)."""
        digest = declared.digest
        if saved is not None and saved.config_revision == digest:
            self.state = saved
            log.info("config revision %s: the live state (revision %d, %d live change(s)) was "
                     "made on it and is kept", digest, saved.revision, saved.live_changes)
            return {"config_revision": digest, "replaced": False,
                    "live_changes": saved.live_changes}
        now = self.clock()
        new = ExperimentState(declared.experiment, revision=1 if saved is None
                              else saved.revision + 1, updated_at=now, updated_by="config",
                              config_revision=digest)
        extra: dict[str, Any] = {}
        if saved is not None:
            extra["replaced"] = {
                "revision": saved.revision, "config_revision": saved.config_revision or None,
                "live_changes": saved.live_changes, "paused": saved.paused,
                "shadows": [s.model_dump(mode="json") for s in saved.experiment.shadows],
            }
        running = self.rollout if self.rollout is not None and not self.rollout.state.done \
            else None
        if running is not None:
            running.state = abort(running.state, now, f"config revision {digest} deployed")
            extra["canary_replaced"] = running.plan.candidate
        self.store.save(new.to_dict(), audit_entry(
            now, "config", "init" if saved is None else "deploy",
            {"config_revision": digest}, saved, new, **extra))
        self.state = new
        if running is not None:
            self._save_rollout(running.state.history[-1].to_dict())
            self._cancel_replay_locked(now, "config", f"config revision {digest} deployed")
        log.info("config revision %s deployed: experiment revision %d%s", digest, new.revision,
                 "" if saved is None else f" replaces revision {saved.revision} (config "
                 f"revision {saved.config_revision or 'unknown'}, {saved.live_changes} live "
                 "change(s))")
        outcome = {"config_revision": digest, "replaced": saved is not None,
                   "live_changes": 0 if saved is None else saved.live_changes,
                   "canary_replaced": extra.get("canary_replaced"), "canary": None}
        if declared.canary is not None:
            try:
                self._start_canary_locked(declared.canary.model_dump(mode="json"), "config")
                outcome["canary"] = "started"
            except InvalidInput as exc:  # a plan that does not fit: said, never fatal
                log.error("config revision %s: the declared canary plan was refused: %s",
                          digest, exc.message)
                self.store.append_audit(audit_entry(
                    self.clock(), "config", "canary", {"refused": exc.message}, None,
                    self.state))
                outcome["canary"] = f"refused: {exc.message}"
        return outcome

    async def declare(self, declared: Declaration) -> dict[str, Any]:
        """A config revision deployed while running (the controller's reconfigure)."""
        async with self.lock:
            self.declared = declared
            return self._adopt(declared, self.state)

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
        for version, payload in report.drift.items():
            self.drift.add(version, payload)
        self._save_counters(added_history)
        counts = self.ledger.bandit_counts()
        return SyncReply(self.state.revision, counts["successes"], counts["failures"],
                         drift=self.drift_summary())

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
        out = self.ledger.record_feedback(request_id, label)
        if out.get("counted") and "correct" in out:  # the window's accuracy: concept drift
            self.drift.add_feedback(str(out["version"]), bool(out["correct"]))
        return out

    def drift_summary(self) -> dict[str, str]:
        """Per version its drift in a word or two, recomputed at most once a second; empty
        when drift is off or no version has a reference (nothing is computed then)."""
        if not self.config.drift.enabled or not any(self.drift.references.values()):
            return {}
        return self._recent_drift()[2]

    def recent_drift_report(self) -> dict[str, Any]:
        """``drift_report``, computed at most once a second (the gauges' source)."""
        return self._recent_drift()[1]

    def _recent_drift(self) -> tuple[float, dict[str, Any], dict[str, str]]:
        now = self.clock()
        cached = self._drift_cache
        if cached is None or now - cached[0] >= 1.0:
            report = self.drift_report()
            summary = {v: summarize_drift(r) for v, r in report["versions"].items()}
            cached = self._drift_cache = (now, report, summary)
        return cached

    def drift_report(self) -> dict[str, Any]:
        """The drift windows of every deployed version (the report's ``drift`` section)."""
        return self.drift.report(sorted(self.deployed), self.state.experiment.baseline)

    def report(self) -> dict[str, Any]:
        report = self.ledger.report(self.state.experiment.baseline, effective_weights(self.state))
        report["experiment"] = self.state.experiment.name
        report["revision"] = self.state.revision
        report["drift"] = self.drift_report()
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
        """Start a waiting replay gate; judge a running canary's window and carry out its
        decision (advance, promote, rollback)."""
        if self._replay_due():
            async with self.lock:
                self._start_replay_locked()
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
                drift=(self.drift.version_report(rollout.plan.candidate,
                                                 self.state.experiment.baseline)
                       if rollout.plan.gates.drift else None),
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
        """A plan as the admin API and the config write it (percent, serve.config's
        CanaryPlanConfig: field-named errors), checked against the live experiment."""
        try:
            body = CanaryPlanConfig.model_validate(dict(plan))
        except ValidationError as exc:
            raise InvalidInput(f"canary plan: {format_validation_errors(exc)}",
                               field=first_error_field(exc)) from None
        baseline = self.state.experiment.baseline
        if body.baseline not in (None, baseline):
            raise InvalidInput(f"canary plan: baseline must be the experiment's baseline "
                               f"{baseline!r}", field="baseline")
        if body.candidate not in self.deployed:
            raise InvalidInput(f"candidate {body.candidate!r} is not deployed; deployed: "
                               f"{sorted(self.deployed)}", field="candidate")
        if body.replay is not None and self.replayer is None:
            raise InvalidInput("canary plan: replay: this controller has no replay runner "
                               "(serve/app.py gives it serve.offline.replay's); leave replay "
                               "out, or run `abserve replay` yourself first", field="replay")
        try:
            return CanaryPlan.from_dict(body.plan_fields(baseline))
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidInput(f"canary plan: {exc}") from None

    async def start_canary(self, plan: Mapping[str, Any], who: str) -> dict[str, Any]:
        """Start a plan for a deployed candidate against the current baseline."""
        async with self.lock:
            return self._start_canary_locked(plan, who)

    def _start_canary_locked(self, plan: Mapping[str, Any], who: str) -> dict[str, Any]:
        if self.rollout is not None and not self.rollout.state.done:
            raise InvalidInput(
                f"a canary for {self.rollout.plan.candidate} is {self.rollout.state.status}; "
                "abort it first"
            )
        parsed = self._parse_plan(plan)
        rollout = Rollout.create(parsed)
        if parsed.replay is None:
            self._begin_locked(rollout, who)
            if self.replay is not None:  # an earlier plan's verdict
                self._save_replay(None)
            return self.canary_status()
        rollout.check_fits(self.state.weights())  # refused now, not after a long replay
        now = self.clock()
        self.rollout = rollout  # pending: no weight changes until the replay passes
        self._save_replay({
            "id": uuid.uuid4().hex[:12], "candidate": parsed.candidate, "who": who,
            "status": WAITING, "verdict": None, "agreement_percent": None, "rows": None,
            "out": None, "requested": now, "started": None, "finished": None,
            "reason": f"waiting for the replay of {parsed.replay.log} with {parsed.candidate}",
        })
        self._save_rollout()
        self._audit_replay(now, who, {"status": WAITING, "log": parsed.replay.log})
        log.info("canary plan for %s waits for its replay gate", parsed.candidate)
        return self.canary_status()

    def _begin_locked(self, rollout: Rollout, who: str) -> None:
        """The plan's first step, as the weights are now; refuses a misfit plan unchanged."""
        first = rollout.start(self.state.weights(), self.clock())  # refuses a misfit plan
        if rollout.plan.candidate not in self.state.weights():
            self._apply_locked(AddCandidate(rollout.plan.candidate), who)
        self._apply_locked(first, who)
        self.rollout = rollout
        self._save_rollout(rollout.state.history[-1].to_dict())

    # ------------------------------------------------------------ the canary's replay gate

    def _save_replay(self, record: dict[str, Any] | None) -> None:
        """The replay record, durable (a restarted controller resumes a waiting replay)."""
        self.replay = record
        self.store.save_extra(REPLAY_EXTRA, record)

    def _audit_replay(self, now: float, who: str, params: Mapping[str, Any],
                      **extra: Any) -> None:
        candidate = None if self.replay is None else self.replay.get("candidate")
        self.store.append_audit(audit_entry(now, who, "canary_replay",
                                            {"candidate": candidate, **params}, None,
                                            self.state, **extra))

    def _replay_due(self) -> bool:
        """A replay waits, its plan is still pending, and no replay job is in flight (one
        aborted a moment ago may still be finishing in its thread)."""
        return (self.replay is not None and self.replay.get("status") == WAITING
                and self.rollout is not None
                and self.rollout.state.status is CanaryStatus.PENDING
                and (self._replay_task is None or self._replay_task.done()))

    def _start_replay_locked(self) -> None:
        if not self._replay_due():  # checked again under the lock
            return
        assert self.replay is not None and self.rollout is not None
        record, plan = self.replay, self.rollout.plan
        if self.replayer is None or plan.replay is None:  # restarted without a replay runner
            self._finish_replay_locked(str(record.get("id")), {
                "verdict": REFUSED, "reason": "this controller has no replay runner"})
            return
        now = self.clock()
        self._save_replay({**record, "status": RUNNING, "started": now,
                           "reason": f"replaying {plan.replay.log} with {plan.candidate}"})
        self._audit_replay(now, "canary", {"status": RUNNING})
        self._replay_task = asyncio.get_running_loop().create_task(
            self._run_replay(str(record.get("id")), self.replayer,
                             plan.replay.model_dump(mode="json"), plan.candidate),
            name=f"replay gate of {plan.candidate}")

    async def _run_replay(self, replay_id: str, replayer: Replayer, gate: Mapping[str, Any],
                          candidate: str) -> None:
        try:
            verdict = dict(await asyncio.to_thread(replayer, gate, candidate))
        except Exception as exc:  # noqa: BLE001 - a replay that cannot run refuses the plan
            log.exception("the replay gate of %s failed", candidate)
            verdict = {"verdict": REFUSED,
                       "reason": f"the replay failed: {type(exc).__name__}: {exc}"}
        async with self.lock:
            try:
                self._finish_replay_locked(replay_id, verdict)
            except Exception:  # noqa: BLE001 - e.g. the store; nothing awaits this task
                log.exception("could not record the replay gate's verdict on %s", candidate)

    def _finish_replay_locked(self, replay_id: str, verdict: Mapping[str, Any]) -> None:
        """The verdict of replay ``replay_id``: passed starts the plan as any plan starts,
        refused ends it unstarted. A replay aborted or replaced meanwhile is moot."""
        record, rollout = self.replay, self.rollout
        if (record is None or record.get("id") != replay_id
                or record.get("status") not in (WAITING, RUNNING) or rollout is None
                or rollout.state.status is not CanaryStatus.PENDING):
            log.info("replay %s finished after its plan was aborted or replaced: ignored",
                     replay_id)
            return
        now = self.clock()
        passed = verdict.get("verdict") == PASSED
        reason = str(verdict.get("reason") or ("passed" if passed else "refused"))
        numbers = {"agreement_percent": verdict.get("agreement_percent"),
                   "rows": verdict.get("rows")}
        self._audit_replay(now, "canary", {"verdict": PASSED if passed else REFUSED,
                                           **numbers}, reason=reason)
        if passed:
            try:
                self._begin_locked(Rollout.create(rollout.plan), str(record.get("who")))
            except InvalidInput as exc:  # the weights changed while it replayed
                passed = False
                reason = f"the replay passed ({reason}) but the plan cannot start: {exc.message}"
                self._audit_replay(now, "canary", {"verdict": REFUSED, **numbers},
                                   reason=reason)
        self._save_replay({**record, **numbers, "status": PASSED if passed else REFUSED,
                           "verdict": PASSED if passed else REFUSED, "reason": reason,
                           "out": verdict.get("out"), "finished": now})
        if not passed:
            rollout.refuse(now, reason)
            self._save_rollout()
            log.warning("canary plan for %s refused by its replay gate: %s",
                        rollout.plan.candidate, reason)
        else:
            log.info("canary plan for %s started: its replay gate passed: %s",
                     rollout.plan.candidate, reason)

    def _cancel_replay_locked(self, now: float, who: str, reason: str) -> None:
        """A waiting or running replay aborted (its plan aborted or replaced). A job in flight
        cannot be stopped from here: it finishes in its thread and its verdict is ignored;
        the next replay starts after it (one at a time)."""
        record = self.replay
        if record is None or record.get("status") not in (WAITING, RUNNING):
            return
        self._save_replay({**record, "status": ABORTED, "reason": reason, "finished": now})
        self._audit_replay(now, who, {"status": ABORTED}, reason=reason)

    def replay_view(self) -> dict[str, Any] | None:
        """The replay gate's record as canary_status shows it."""
        return None if self.replay is None else {k: self.replay.get(k) for k in REPLAY_VIEW}

    async def canary_action(self, action: str, who: str) -> dict[str, Any]:
        """pause | resume | abort (abort rolls the candidate back to 0 %; a plan waiting for
        its replay gate is dropped, the replay's verdict ignored)."""
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
                    rollback = self.rollout.abort(now)
                    if rollback is not None:
                        self._apply_locked(rollback, who)
                    else:  # it waited for its replay: no weights to roll back
                        self._cancel_replay_locked(now, who, f"aborted by {who}")
                else:
                    raise NotFound(f"unknown canary action {action!r}")
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            self._save_rollout(self.rollout.state.history[-1].to_dict())
            return self.canary_status()

    def canary_status(self) -> dict[str, Any]:
        """The plan, its state and history, its replay gate, and the pid of the process that
        runs the canary."""
        status: dict[str, Any] = ({"plan": None, "state": None} if self.rollout is None
                                  else self.rollout.to_dict())
        if status["plan"] is not None:  # the gates as users write them: rates in percent
            gates = CanaryGatesConfig.from_gate_fields(status["plan"]["gates"])
            status["plan"] = {**status["plan"], "gates": gates.model_dump(mode="json")}
        return {**status, "replay": self.replay_view(), "controller_pid": os.getpid()}
