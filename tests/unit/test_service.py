"""The experiment service without Ray: a FileStore in tmp_path and a fake clock.

Everything the controller deployment does is driven here directly: the initial
state, operations under the lock and their audit, sync and feedback, the report,
and a canary plan through its steps, its operator actions and a restart; a plan
with a replay gate, its replay run by a fake in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

from router.controlplane.canary import CanaryStatus
from router.controlplane.client import ControlClient
from router.controlplane.experiment import Declaration, ExperimentState
from router.controlplane.messages import Applied, SyncReply, SyncReport
from router.controlplane.operations import (
    AddCandidate,
    Pause,
    Promote,
    RemoveArm,
    Rollback,
    SetWeights,
)
from router.controlplane.service import ExperimentService, Replayer
from router.controlplane.store import FileStore
from router.dataplane.measures import ArmMetrics
from serve.config import AbserveConfig, ExperimentConfig, parse_config
from serve.errors import InvalidInput, NotFound

T = TypeVar("T")

CONFIG = parse_config({
    "models": [{"version": "v1"}, {"version": "v2"}, {"version": "v3"}],
    "experiment": {"name": "exp", "baseline": "v1",
                   "arms": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}]},
})
PLAN = {"candidate": "v3", "steps": [50, 100], "interval_s": 10, "min_requests": 20}


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def service(tmp_path: Path, clock: Clock | None = None,
            config: AbserveConfig = CONFIG, replay: Replayer | None = None,
            declared: Declaration | None = None) -> ExperimentService:
    return ExperimentService(config, FileStore(tmp_path, "app"), clock=clock or Clock(),
                             replay=replay, declared=declared)


def report(**requests: int) -> SyncReport:
    metrics = {}
    for version, n in requests.items():
        m = ArmMetrics()
        for _ in range(n):
            m.record(5.0)
        m.record_comparison(n, 0)  # the baseline agrees with every answer
        metrics[version] = m.to_dict()
    return SyncReport(metrics=metrics, shadows={}, served=[])


def test_initial_state_from_the_config_is_saved_with_an_init_entry(tmp_path: Path) -> None:
    svc = service(tmp_path, Clock(7.0))
    assert svc.state.revision == 1 and svc.state.weights() == {"v1": 90, "v2": 10}
    assert svc.state.updated_at == 7.0 and not svc.state.paused
    assert ExperimentState.from_dict(FileStore(tmp_path, "app").load() or {}) == svc.state
    [entry] = svc.audit()
    assert entry["operation"] == "init" and entry["who"] == "config" and entry["before"] is None
    assert entry["after"] == {"weights": {"v1": 90, "v2": 10}, "baseline": "v1", "paused": False}


def test_initial_state_from_a_saved_state(tmp_path: Path) -> None:
    svc = service(tmp_path)
    run(svc.apply(SetWeights({"v1": 60, "v2": 40}), "alice"))
    again = service(tmp_path)
    assert again.state == svc.state and again.state.revision == 2
    assert again.state.updated_by == "alice"
    assert [e["operation"] for e in again.audit()] == ["init", "set_weights"]  # no second init


def test_a_saved_state_naming_undeployed_versions_is_ignored(tmp_path: Path) -> None:
    exp = ExperimentConfig.model_validate(
        {"baseline": "v1", "arms": [{"version": "v1", "weight": 50},
                                    {"version": "v9", "weight": 50}]})
    FileStore(tmp_path, "app").save(ExperimentState(exp, revision=12).to_dict())
    svc = service(tmp_path)
    assert svc.state.revision == 1 and svc.state.weights() == {"v1": 90, "v2": 10}


def test_an_unreadable_saved_state_is_ignored(tmp_path: Path) -> None:
    FileStore(tmp_path, "app").save({"experiment": {"arms": "nonsense"}})
    assert service(tmp_path).state.revision == 1


class FailingStore(FileStore):
    """Fails the next save; records what the service showed while saving."""

    def __init__(self, directory: Path, svc: list[ExperimentService]) -> None:
        super().__init__(directory, "app")
        self.fail = False
        self.svc = svc
        self.visible_during_save: list[int] = []

    def save(self, state: dict[str, Any], audit_entry: dict[str, Any] | None = None) -> None:
        if self.svc:
            self.visible_during_save.append(self.svc[0].state.revision)
        if self.fail:
            raise OSError("disk full")
        super().save(state, audit_entry)


def test_apply_persists_before_the_new_state_is_visible(tmp_path: Path) -> None:
    holder: list[ExperimentService] = []
    store = FailingStore(tmp_path, holder)
    svc = ExperimentService(CONFIG, store, clock=Clock())
    holder.append(svc)
    applied = run(svc.apply(Promote("v2"), "bob"))
    new = applied.state
    assert store.visible_during_save == [1] and svc.state is new and new.revision == 2
    assert applied.reassigned is None  # promoting the newest candidate keeps the promise
    store.fail = True
    with pytest.raises(OSError):
        run(svc.apply(Rollback("v1"), "bob"))
    assert svc.state is new  # the failed save left the old state visible
    assert [e["operation"] for e in svc.audit()] == ["init", "promote"]


def test_apply_returns_the_users_a_change_moves_beyond_the_promise(tmp_path: Path) -> None:
    """The result of ``apply`` carries the audit entry's ``reassigned`` (what the admin route
    answers): None for a change inside the promise, the share and moves outside it."""
    config = parse_config({
        "models": [{"version": "v1"}, {"version": "v2"}, {"version": "v3"}],
        "experiment": {"name": "exp", "baseline": "v1",
                       "arms": [{"version": "v1", "weight": 80}, {"version": "v2", "weight": 10},
                                {"version": "v3", "weight": 10}]},
    })
    svc = service(tmp_path, config=config)
    moved = run(svc.apply(SetWeights({"v1": 40, "v2": 50, "v3": 10}), "ops"))  # v2 into v3
    assert moved.state is svc.state and moved.state.revision == 2
    assert moved.reassigned is not None and moved.reassigned == svc.audit()[-1]["reassigned"]
    assert moved.reassigned["percent_of_users"] == pytest.approx(4.02, abs=0.01)  # the docs'
    assert "v3 -> v2" in moved.reassigned["moves"]
    kept = run(svc.apply(SetWeights({"v1": 30, "v2": 50, "v3": 20}), "ops"))  # the newest
    assert kept.reassigned is None and "reassigned" not in svc.audit()[-1]
    assert run(svc.apply(Pause(), "ops")).reassigned is None


def test_audit_entries_name_who_what_before_and_after(tmp_path: Path) -> None:
    clock = Clock(50.0)
    svc = service(tmp_path, clock)
    clock.t = 60.0
    run(svc.apply(AddCandidate("v3", 5), "carol"))
    run(svc.apply(Pause(), "dave"))
    _, add, pause = svc.audit()
    assert add == {
        "time": 60.0, "who": "carol", "operation": "add_candidate",
        "params": {"version": "v3", "weight": 5}, "revision": 2,
        "before": {"weights": {"v1": 90, "v2": 10}, "baseline": "v1", "paused": False},
        "after": {"weights": {"v1": 85, "v2": 10, "v3": 5}, "baseline": "v1", "paused": False},
    }
    assert pause["operation"] == "pause" and pause["params"] == {}
    assert pause["after"]["paused"] and pause["revision"] == 3
    assert [e["revision"] for e in svc.audit(limit=1)] == [3]


def test_a_refused_operation_changes_nothing(tmp_path: Path) -> None:
    svc = service(tmp_path)
    before = svc.state
    saved = FileStore(tmp_path, "app").load()
    for op, error in ((SetWeights({"v1": 95, "v2": 10}), InvalidInput),
                      (AddCandidate("v9"), InvalidInput),
                      (Promote("v7"), NotFound)):
        with pytest.raises(error):
            run(svc.apply(op, "eve"))
    assert svc.state is before and FileStore(tmp_path, "app").load() == saved
    assert len(svc.audit()) == 1


def test_sync_returns_the_revision_and_the_bandit_counts(tmp_path: Path) -> None:
    svc = service(tmp_path)
    served = [("r1", "v1", 1), ("r2", "v2", 0), ("r3", "v2", 1)]
    reply = svc.sync("replica-a", SyncReport(metrics={}, shadows={}, served=served))
    assert reply == SyncReply(revision=1, bandit_successes={}, bandit_failures={})
    assert svc.record_feedback("r1", 1)["correct"] is True
    assert svc.record_feedback("r2", 1)["correct"] is False
    assert svc.record_feedback("r3", 1)["status"] == "recorded"
    run(svc.apply(SetWeights({"v1": 50, "v2": 50}), "x"))
    reply = svc.sync("replica-a", report(v1=3))
    assert reply == SyncReply(2, {"v1": 1, "v2": 1}, {"v1": 0, "v2": 1})


def test_feedback_joins_once_and_unknown_ids_are_not_found(tmp_path: Path) -> None:
    clock = Clock()
    svc = ExperimentService(CONFIG.model_copy(update={"feedback": CONFIG.feedback.model_copy(
        update={"ttl_s": 60})}), FileStore(tmp_path, "app"), clock=clock)
    svc.sync("a", SyncReport(metrics={}, shadows={}, served=[("r1", "v2", 1), ("r2", "v1", 0)]))
    assert svc.record_feedback("r1", 1) == {"request_id": "r1", "status": "recorded",
                                            "counted": True, "version": "v2", "correct": True}
    assert svc.record_feedback("r1", 1)["status"] == "duplicate"
    with pytest.raises(NotFound, match="unknown or expired"):
        svc.record_feedback("nope", 1)
    clock.t += 61  # the ledger's ttl runs on the injected clock
    with pytest.raises(NotFound):
        svc.record_feedback("r2", 0)


def test_report_sums_the_replicas(tmp_path: Path) -> None:
    clock = Clock(5.0)
    svc = service(tmp_path, clock)
    svc.sync("a", report(v1=30, v2=4))
    svc.sync("b", report(v1=10))
    svc.sync("a", report(v1=30, v2=4))  # a repeated report changes nothing
    out = svc.report()
    assert out["experiment"] == "exp" and out["revision"] == 1 and out["generated_at"] == 5.0
    assert out["arms"]["v1"]["requests"] == 40 and out["arms"]["v2"]["requests"] == 4


def status(svc: ExperimentService) -> str:
    return svc.canary_status()["state"]["status"]


def test_a_canary_advances_and_promotes_on_the_fake_clock(tmp_path: Path) -> None:
    clock = Clock(0.0)
    svc = service(tmp_path, clock)
    run(svc.apply(Rollback("v2"), "ops"))  # room for v3 at 100 %
    out = run(svc.start_canary(PLAN, "ops"))
    assert out["state"]["status"] == "running" and "controller_pid" in out
    assert svc.state.weights() == {"v1": 50, "v2": 0, "v3": 50}  # added, then 50 %
    run(svc.canary_tick())  # opens the window's snapshot; too early to judge
    assert svc.state.revision == 4
    svc.sync("a", report(v1=60, v2=60, v3=60))
    clock.t = 11.0
    run(svc.canary_tick())
    assert svc.state.weights() == {"v1": 0, "v2": 0, "v3": 100} and svc.state.revision == 5
    run(svc.canary_tick())  # a new window: nothing yet
    svc.sync("a", report(v1=120, v2=120, v3=120))
    clock.t = 22.0
    run(svc.canary_tick())
    assert svc.state.experiment.baseline == "v3" and status(svc) == "promoted"
    ops = [(e["operation"], e["who"]) for e in svc.audit()]
    assert ops == [("init", "config"), ("rollback", "ops"), ("add_candidate", "ops"),
                   ("set_weights", "ops"),
                   ("canary", "canary"), ("set_weights", "canary"), ("canary", "canary"),
                   ("promote", "canary"), ("canary", "canary")]
    assert svc.audit()[4]["params"] == {"action": "start", "verdict": "manual"}
    assert svc.audit()[-1]["params"] == {"action": "promote", "verdict": "pass"}
    assert svc.audit()[-1]["reasons"] and "metrics" in svc.audit()[-1]
    run(svc.canary_tick())  # done: ticking changes nothing
    assert svc.state.revision == 6


def test_a_canary_whose_operation_is_refused_is_aborted(tmp_path: Path) -> None:
    clock = Clock(0.0)
    svc = service(tmp_path, clock)
    run(svc.apply(Rollback("v2"), "ops"))
    run(svc.start_canary(PLAN, "ops"))
    run(svc.canary_tick())
    run(svc.apply(RemoveArm("v3"), "operator"))  # the arms changed under the canary
    svc.sync("a", report(v1=60, v2=60, v3=60))
    clock.t = 11.0
    run(svc.canary_tick())  # SetWeights for an arm that is gone: refused
    assert status(svc) == "rolled_back" and svc.state.weights() == {"v1": 100, "v2": 0}
    assert svc.audit()[-1]["operation"] == "canary"


def test_canary_pause_resume_abort(tmp_path: Path) -> None:
    svc = service(tmp_path)
    with pytest.raises(NotFound, match="no canary plan"):
        run(svc.canary_action("pause", "ops"))
    run(svc.start_canary(PLAN, "ops"))
    assert run(svc.canary_action("pause", "ops"))["state"]["status"] == "paused"
    with pytest.raises(InvalidInput, match="cannot pause"):
        run(svc.canary_action("pause", "ops"))
    revision = svc.state.revision
    run(svc.canary_tick())  # paused: not judged
    assert svc.state.revision == revision
    assert run(svc.canary_action("resume", "ops"))["state"]["status"] == "running"
    with pytest.raises(NotFound, match="unknown canary action 'explode'"):
        run(svc.canary_action("explode", "ops"))
    run(svc.canary_action("abort", "ops"))
    assert status(svc) == "rolled_back" and svc.state.weights()["v3"] == 0
    assert svc.audit()[-2]["operation"] == "rollback"
    assert svc.audit()[-2]["params"] == {"version": "v3"}
    with pytest.raises(InvalidInput, match="already"):
        run(svc.canary_action("abort", "ops"))
    run(svc.start_canary(PLAN, "ops"))  # a finished canary makes room for a new one
    assert status(svc) == "running"


@pytest.mark.parametrize("plan, needle", [
    ({**PLAN, "stepz": [100]}, r"stepz: unknown key"),
    ({**PLAN, "candidate": "v9"}, "not deployed"),
    ({**PLAN, "baseline": "v2"}, "must be the experiment's baseline"),
    ({**PLAN, "steps": [50, 90]}, "last step must be 100"),
    ({"steps": [100]}, "canary plan"),
])
def test_a_bad_plan_is_refused_and_changes_nothing(
    tmp_path: Path, plan: dict[str, Any], needle: str
) -> None:
    svc = service(tmp_path)
    with pytest.raises(InvalidInput, match=needle):
        run(svc.start_canary(plan, "ops"))
    assert svc.rollout is None and svc.state.revision == 1


def test_a_second_canary_is_refused_while_one_runs(tmp_path: Path) -> None:
    svc = service(tmp_path)
    run(svc.start_canary(PLAN, "ops"))
    with pytest.raises(InvalidInput, match="abort it first"):
        run(svc.start_canary({**PLAN, "candidate": "v2"}, "ops"))


def test_canary_state_survives_a_new_service_over_the_same_store(tmp_path: Path) -> None:
    svc = service(tmp_path)
    run(svc.start_canary(PLAN, "ops"))
    run(svc.canary_action("pause", "ops"))
    again = service(tmp_path)
    assert again.rollout is not None and status(again) == "paused"
    assert again.canary_status()["plan"] == svc.canary_status()["plan"]
    assert again.state == svc.state
    run(again.canary_action("resume", "ops"))
    assert again.rollout.state.status is CanaryStatus.RUNNING
    run(again.canary_action("abort", "ops"))
    assert status(service(tmp_path)) == "rolled_back"


# ------------------------------------------------------------ the typed client over a fake handle


class Wrapped(Exception):
    """What Ray raises when the controller raises: the original as ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


class FakeResponse:
    def __init__(self, result: Any = None, error: BaseException | None = None,
                 delay_s: float = 0.0) -> None:
        self.result, self.error, self.delay_s, self.cancelled = result, error, delay_s, False

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self) -> Any:
        return self._run().__await__()

    async def _run(self) -> Any:
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.result


class FakeMethod:
    def __init__(self, handle: FakeHandle, name: str) -> None:
        self.handle, self.name = handle, name

    def remote(self, *args: Any) -> FakeResponse:
        self.handle.calls.append((self.name, args))
        return self.handle.responses.get(self.name, FakeResponse())


class FakeHandle:
    def __init__(self, **responses: FakeResponse) -> None:
        self.responses = responses
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> FakeMethod:
        return FakeMethod(self, name)


def test_the_client_calls_the_controllers_typed_methods(tmp_path: Path) -> None:
    state = service(tmp_path).state
    reply = SyncReply(3, {"v1": 1}, {"v1": 0})
    handle = FakeHandle(get_state=FakeResponse(state), sync=FakeResponse(reply),
                        apply=FakeResponse(Applied(state)), audit=FakeResponse([{"x": 1}]))
    client = ControlClient(handle)  # type: ignore[arg-type]
    sync = SyncReport(metrics={}, shadows={}, served=[("r", "v1", 1)])
    assert run(client.get_state(1.0)) is state
    assert run(client.sync("replica-a", sync, 1.0)) == reply
    applied = run(client.apply(Pause(), "ops"))
    assert applied.state is state and applied.reassigned is None
    assert run(client.audit(5)) == [{"x": 1}]
    run(client.start_canary(PLAN, "ops"))
    run(client.canary_action("abort", "ops"))
    assert [c[0] for c in handle.calls] == ["get_state", "sync", "apply", "audit",
                                           "start_canary", "canary_action"]
    assert handle.calls[1][1] == ("replica-a", sync) and handle.calls[2][1] == (Pause(), "ops")


def test_the_client_unwraps_our_errors_and_passes_others() -> None:
    refused = InvalidInput("weights: expected an object")
    client = ControlClient(FakeHandle(  # type: ignore[arg-type]
        apply=FakeResponse(error=Wrapped(refused)),
        record_feedback=FakeResponse(error=Wrapped(NotFound("unknown request_id"))),
        report=FakeResponse(error=Wrapped(KeyError("boom"))),
    ))
    with pytest.raises(InvalidInput) as info:
        run(client.apply(SetWeights(None), "ops"))
    assert info.value is refused
    with pytest.raises(NotFound):
        run(client.record_feedback("r1", 1))
    with pytest.raises(Wrapped):  # not ours: propagates as Ray raised it
        run(client.report())


def test_the_client_times_out_and_cancels_the_call() -> None:
    slow = FakeResponse(delay_s=5.0)
    client = ControlClient(FakeHandle(get_state=slow))  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        run(client.get_state(0.01))
    assert slow.cancelled


# ------------------------------------------------------------ durability (issue 16, item 5)

def served(*entries: tuple[str, str, int], **requests: int) -> SyncReport:
    return SyncReport(metrics=report(**requests).metrics, shadows={}, served=list(entries))


def test_pending_predictions_and_counted_labels_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    svc.sync("a", served(("r1", "v1", 2), ("r2", "v2", 1), ("r3", "v2", 0), v1=5, v2=2))
    assert svc.record_feedback("r1", 2)["counted"] is True
    # The controller is SIGKILLed here: nothing is flushed, a new one reads the disk.
    again = service(tmp_path, clock)
    assert again.record_feedback("r1", 2)["status"] == "duplicate"  # counted once, ever
    assert again.record_feedback("r2", 0)["counted"] is True  # still waiting: joins now
    arms = again.report()["arms"]
    assert (arms["v1"]["feedback_n"], arms["v2"]["feedback_n"]) == (1, 1)
    assert again.sync("a", served(v1=5)).bandit_successes == {"v1": 1, "v2": 0}
    third = service(tmp_path, clock)  # and a third start counts the same
    assert third.report()["arms"]["v2"]["accuracy"] == 0
    assert third.record_feedback("r3", 0)["correct"] is True


def test_a_report_resent_after_a_lost_reply_does_not_reopen_a_counted_label(
    tmp_path: Path,
) -> None:
    svc = service(tmp_path)
    svc.sync("a", served(("r1", "v1", 2)))
    svc.record_feedback("r1", 2)
    svc.sync("a", served(("r1", "v1", 2)))  # the router never saw the first reply
    assert svc.record_feedback("r1", 2)["status"] == "duplicate"
    assert service(tmp_path).record_feedback("r1", 2)["status"] == "duplicate"


def test_the_replicas_counters_and_history_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    svc.sync("a", report(v1=30, v2=4))
    svc.sync("b", report(v1=10))  # within the same second: saved on a later sync
    clock.t += 1.0
    svc.sync("a", report(v1=31, v2=4))
    before = svc.report()["arms"]
    assert before["v1"]["requests"] == 41
    after = service(tmp_path, clock)
    assert after.report()["arms"] == before
    assert len(after.report()["history"]) == 1
    after.sync("a", report(v1=40, v2=4))  # a live replica's cumulative counters replace its own
    assert after.report()["arms"]["v1"]["requests"] == 50


def test_flush_saves_the_last_second(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    svc.sync("a", report(v1=3))
    svc.sync("a", report(v1=9))  # not saved yet: less than a second since the first
    assert service(tmp_path, clock).report()["arms"]["v1"]["requests"] == 3
    svc.flush()  # what the controller's graceful shutdown does
    assert service(tmp_path, clock).report()["arms"]["v1"]["requests"] == 9


def test_the_journal_is_compacted_and_a_torn_line_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import router.controlplane.ledger as ledger_mod

    monkeypatch.setattr(ledger_mod, "COMPACT_SLACK", 10)
    clock = Clock()
    config = CONFIG.model_copy(update={"feedback": CONFIG.feedback.model_copy(
        update={"ttl_s": 60})})
    svc = ExperimentService(config, FileStore(tmp_path, "app"), clock=clock)
    for i in range(30):
        svc.sync("a", served((f"old{i}", "v1", 0)))
        svc.record_feedback(f"old{i}", i % 2)
    clock.t += 61  # every old prediction expires; their labels stay counted
    svc.sync("a", served(("new", "v2", 1)))
    path = tmp_path / "app.served.jsonl"
    assert len(path.read_text().splitlines()) == 2  # the counts and the one live entry
    with open(path, "a") as f:
        f.write('["f","new","v2",1')  # a crash in the middle of a write: never acknowledged
    again = ExperimentService(config, FileStore(tmp_path, "app"), clock=clock)
    arms = again.report()["arms"]
    assert (arms["v1"]["accuracy"], arms["v1"]["feedback_n"]) == (0.5, 30)
    assert again.record_feedback("new", 1)["counted"] is True


def test_the_canary_window_survives_a_controller_restart(tmp_path: Path) -> None:
    clock = Clock(0.0)
    svc = service(tmp_path, clock)
    run(svc.apply(Rollback("v2"), "ops"))
    svc.sync("a", report(v1=50))
    run(svc.start_canary(PLAN, "ops"))
    run(svc.canary_tick())  # the window opens: its start is saved
    clock.t = 5.0
    svc.sync("a", report(v1=90, v3=60))  # 60 candidate requests inside the window
    clock.t = 6.0
    again = service(tmp_path, clock)  # SIGKILL and a new controller
    again.sync("a", report(v1=90, v3=60))  # the live router reports its counters again
    clock.t = 11.0
    run(again.canary_tick())  # judged on the window since t=0, not a fresh one
    assert again.state.weights()["v3"] == 100, again.canary_status()["state"]


def test_a_window_whose_counters_went_back_starts_again(tmp_path: Path) -> None:
    clock = Clock(0.0)
    svc = service(tmp_path, clock)
    run(svc.apply(Rollback("v2"), "ops"))
    run(svc.start_canary(PLAN, "ops"))
    svc.sync("a", report(v1=90, v3=40))
    run(svc.canary_tick())  # the window opens at 40 candidate requests
    svc.ledger.replica_metrics.clear()  # replica a's counters lost (it died with the controller)
    svc.sync("b", report(v1=5, v3=5))
    clock.t = 11.0
    run(svc.canary_tick())  # no ValueError every tick: a fresh window, too few requests yet
    assert status(svc) == "running" and svc.state.weights()["v3"] == 50


# ------------------------------------------------------------ a canary plan's replay gate

GATE = {"log": "/logs/activity", "min_agreement_percent": 90, "min_rows": 10,
        "since_hours": 6}
GATED = {**PLAN, "replay": GATE}
PASSED = {"verdict": "passed", "reason": "v3 agrees with what was served on 99.00% of 500 rows",
          "agreement_percent": 99.0, "rows": 500, "out": "/state/replays/replay-v3.parquet"}


class FakeReplayer:
    """A replay gate that holds until released; records its calls and the thread it ran on."""

    def __init__(self, verdict: Mapping[str, Any] | None = None,
                 error: Exception | None = None) -> None:
        self.verdict = dict(verdict or PASSED)
        self.error = error
        self.calls: list[tuple[dict[str, Any], str]] = []
        self.threads: list[threading.Thread] = []
        self.release = threading.Event()

    def __call__(self, gate: Mapping[str, Any], candidate: str) -> Mapping[str, Any]:
        self.calls.append((dict(gate), candidate))
        self.threads.append(threading.current_thread())
        assert self.release.wait(10), "the test never released the replay"
        if self.error is not None:
            raise self.error
        return self.verdict


async def finish(svc: ExperimentService, replayer: FakeReplayer) -> None:
    """Release the replay in flight and wait for its verdict to be recorded."""
    replayer.release.set()
    assert svc._replay_task is not None
    await svc._replay_task


def replay_ops(svc: ExperimentService) -> list[tuple[str, Any]]:
    return [(e["operation"], e["params"].get("status") or e["params"].get("verdict"))
            for e in svc.audit() if e["operation"] == "canary_replay"]


def test_a_plan_with_a_replay_gate_waits_then_starts_when_it_passes(tmp_path: Path) -> None:
    replayer = FakeReplayer()

    async def scenario() -> None:
        svc = service(tmp_path, replay=replayer)
        out = await svc.start_canary(GATED, "ops")
        assert out["state"]["status"] == "pending" and out["state"]["weight"] == 0
        assert out["replay"]["status"] == "waiting" and out["replay"]["candidate"] == "v3"
        assert out["plan"]["replay"] == {**GATE, "min_agreement_percent": 90.0,
                                         "since_hours": 6.0}
        assert svc.state.revision == 1 and svc.state.weights() == {"v1": 90, "v2": 10}
        with pytest.raises(InvalidInput, match="abort it first"):  # one plan at a time
            await svc.start_canary({**PLAN, "candidate": "v2"}, "ops")
        await svc.canary_tick()  # starts the replay, in a thread
        task = svc._replay_task
        assert task is not None and svc.canary_status()["replay"]["status"] == "running"
        await svc.canary_tick()  # one at a time: still the same one
        assert svc._replay_task is task and svc.state.revision == 1
        await finish(svc, replayer)
        assert replayer.calls == [(GATE | {"min_agreement_percent": 90.0,
                                           "since_hours": 6.0}, "v3")]
        assert replayer.threads[0] is not threading.main_thread()  # never on the event loop
        status_now = svc.canary_status()
        assert status_now["state"]["status"] == "running" and status_now["state"]["weight"] == 50
        assert svc.state.weights() == {"v1": 40, "v2": 10, "v3": 50}
        replay = status_now["replay"]
        assert replay["status"] == replay["verdict"] == "passed"
        assert replay["agreement_percent"] == 99.0 and replay["rows"] == 500
        assert replay["out"] == PASSED["out"] and replay["finished"] is not None
        ops = [(e["operation"], e["who"]) for e in svc.audit()]
        assert ops == [("init", "config"), ("canary_replay", "ops"), ("canary_replay", "canary"),
                       ("canary_replay", "canary"), ("add_candidate", "ops"),
                       ("set_weights", "ops"), ("canary", "canary")]
        verdict = svc.audit()[3]
        assert verdict["params"] == {"candidate": "v3", "verdict": "passed",
                                     "agreement_percent": 99.0, "rows": 500}
        assert verdict["reason"] == PASSED["reason"]
        assert len(replayer.calls) == 1
        await svc.canary_tick()  # ticks on as any canary; no second replay
        assert len(replayer.calls) == 1

    run(scenario())


@pytest.mark.parametrize(("replayer", "says"), [
    (FakeReplayer({"verdict": "refused", "rows": 500, "agreement_percent": 71.5,
                   "reason": "v3's replay agrees on 71.50% of 500 rows, below 90%"}),
     "below 90%"),
    (FakeReplayer(error=RuntimeError("the actor pool died")),
     "the replay failed: RuntimeError: the actor pool died"),
])
def test_a_refused_or_failed_replay_never_starts_the_plan(
    tmp_path: Path, replayer: FakeReplayer, says: str,
) -> None:
    async def scenario() -> None:
        svc = service(tmp_path, replay=replayer)
        await svc.start_canary(GATED, "ops")
        await svc.canary_tick()
        await finish(svc, replayer)
        out = svc.canary_status()
        assert out["state"]["status"] == "refused" and out["state"]["weight"] == 0
        assert out["replay"]["status"] == out["replay"]["verdict"] == "refused"
        assert says in out["replay"]["reason"]
        assert out["state"]["history"][-1]["action"] == "refuse"
        assert says in out["state"]["history"][-1]["reasons"][0]
        assert svc.state.revision == 1 and svc.state.weights() == {"v1": 90, "v2": 10}
        entry = svc.audit()[-1]
        assert entry["operation"] == "canary_replay" and entry["params"]["verdict"] == "refused"
        assert says in entry["reason"]
        await svc.canary_tick()  # refused is final: no second replay
        assert len(replayer.calls) == 1
        await svc.start_canary(PLAN, "ops")  # and makes room for the next plan
        assert svc.canary_status()["replay"] is None and status(svc) == "running"

    run(scenario())


def test_a_passed_replay_whose_steps_no_longer_fit_refuses_the_plan(tmp_path: Path) -> None:
    replayer = FakeReplayer()

    async def scenario() -> None:
        svc = service(tmp_path, replay=replayer)
        await svc.start_canary(GATED, "ops")
        await svc.canary_tick()
        await svc.apply(SetWeights({"v1": 40, "v2": 60}), "alice")  # v3 at 50 % won't fit
        await finish(svc, replayer)
        out = svc.canary_status()
        assert out["state"]["status"] == "refused" and "cannot start" in out["replay"]["reason"]
        assert svc.state.weights() == {"v1": 40, "v2": 60}

    run(scenario())


def test_aborting_a_plan_waiting_for_its_replay_drops_it(tmp_path: Path) -> None:
    replayer = FakeReplayer()

    async def scenario() -> None:
        svc = service(tmp_path, replay=replayer)
        await svc.start_canary(GATED, "ops")
        out = await svc.canary_action("abort", "bob")  # before the replay started
        assert out["state"]["status"] == "rolled_back" and out["replay"]["status"] == "aborted"
        assert out["replay"]["reason"] == "aborted by bob"
        assert svc.state.revision == 1  # nothing to roll back
        await svc.canary_tick()
        assert replayer.calls == [] and svc._replay_task is None
        assert replay_ops(svc) == [("canary_replay", "waiting"), ("canary_replay", "aborted")]
        # While it runs: the verdict that comes afterwards is ignored.
        await svc.start_canary(GATED, "ops")
        await svc.canary_tick()
        with pytest.raises(InvalidInput, match="cannot pause a canary that is pending"):
            await svc.canary_action("pause", "bob")
        await svc.canary_action("abort", "bob")
        # A new plan's replay waits for the aborted one's thread to end (one at a time).
        await svc.start_canary(GATED, "ops")
        await svc.canary_tick()
        assert svc.canary_status()["replay"]["status"] == "waiting"
        await finish(svc, replayer)
        assert svc.state.revision == 1 and status(svc) == "pending"
        await svc.canary_tick()  # now it starts
        assert svc.canary_status()["replay"]["status"] == "running"
        await finish(svc, replayer)
        assert status(svc) == "running" and svc.state.weights()["v3"] == 50
        assert len(replayer.calls) == 2

    run(scenario())


def test_a_waiting_replay_survives_a_controller_restart(tmp_path: Path) -> None:
    replayer = FakeReplayer()

    async def scenario() -> None:
        svc = service(tmp_path, replay=replayer)
        await svc.start_canary(GATED, "ops")
        await svc.canary_tick()  # running when the controller "dies": no verdict comes
        assert svc._replay_task is not None
        svc._replay_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await svc._replay_task
        again = service(tmp_path, replay=replayer)
        out = again.canary_status()
        assert out["state"]["status"] == "pending" and out["plan"] == svc.canary_status()["plan"]
        assert out["plan"]["replay"]["min_rows"] == 10
        assert out["replay"]["status"] == "waiting"  # it runs again
        replayer.release.set()
        await again.canary_tick()
        assert again._replay_task is not None
        await again._replay_task
        assert status(again) == "running" and again.state.weights()["v3"] == 50
        assert status(service(tmp_path)) == "running"
        assert service(tmp_path).canary_status()["replay"]["status"] == "passed"
        assert [e["operation"] for e in again.audit()].count("add_candidate") == 1

    run(scenario())


def test_a_plan_with_a_replay_gate_needs_a_replay_runner(tmp_path: Path) -> None:
    svc = service(tmp_path)  # no replay callable
    with pytest.raises(InvalidInput, match="no replay runner") as info:
        run(svc.start_canary(GATED, "ops"))
    assert info.value.field == "replay"
    assert svc.rollout is None and svc.state.revision == 1
    with pytest.raises(InvalidInput, match="min_agreement_percent") as info:
        run(service(tmp_path, replay=FakeReplayer()).start_canary(
            {**PLAN, "replay": {**GATE, "min_agreement_percent": 101}}, "ops"))
    assert info.value.field == "replay.min_agreement_percent"
    with pytest.raises(InvalidInput, match="steps") as info:  # refused now, not after it
        run(service(tmp_path, replay=FakeReplayer()).start_canary(
            {**GATED, "steps": [95, 100]}, "ops"))


def declared(weights: tuple[int, int] = (90, 10), **canary: Any) -> Declaration:
    return Declaration.of(parse_config({
        **CONFIG.model_dump(mode="json", exclude={"experiment", "canary"}),
        "experiment": {"name": "exp", "baseline": "v1",
                       "arms": [{"version": "v1", "weight": weights[0]},
                                {"version": "v2", "weight": weights[1]}]},
        "canary": canary or None,
    }))


def test_a_declared_plan_with_a_replay_gate_waits_and_a_new_revision_replaces_it(
    tmp_path: Path,
) -> None:
    replayer = FakeReplayer()

    async def scenario() -> None:
        svc = service(tmp_path, replay=replayer, declared=declared(**GATED))
        assert status(svc) == "pending" and svc.state.weights() == {"v1": 90, "v2": 10}
        assert svc.canary_status()["replay"]["status"] == "waiting"
        await svc.canary_tick()
        outcome = await svc.declare(declared((80, 20), **{**GATED, "steps": [20, 100]}))
        assert outcome["canary_replaced"] == "v3" and outcome["canary"] == "started"
        assert svc.state.weights() == {"v1": 80, "v2": 20}
        assert svc.canary_status()["replay"]["status"] == "waiting"
        assert svc.canary_status()["plan"]["steps"] == [20.0, 100.0]
        aborted = [e for e in svc.audit() if e["operation"] == "canary_replay"
                   and e["params"].get("status") == "aborted"]
        assert len(aborted) == 1 and "deployed" in aborted[0]["reason"]
        await finish(svc, replayer)  # the first one's verdict: ignored
        assert status(svc) == "pending"
        await svc.canary_tick()
        await finish(svc, replayer)
        assert status(svc) == "running" and svc.state.weights()["v3"] == 20

    run(scenario())


def test_a_declared_plan_with_a_replay_gate_and_no_runner_is_refused(tmp_path: Path) -> None:
    svc = service(tmp_path, declared=declared(**GATED))
    assert svc.rollout is None
    entry = svc.audit()[-1]
    assert entry["operation"] == "canary" and "no replay runner" in entry["params"]["refused"]


def test_a_plan_without_a_replay_gate_keeps_its_config_revision() -> None:
    """``replay: null`` is left out of the declaration, so configs written before the gate
    existed keep their digest (a new digest would replace the live state on upgrade)."""
    plain = declared(**PLAN)
    assert "replay" not in plain.to_user_config()["canary"]
    assert declared(**GATED).to_user_config()["canary"]["replay"]["min_rows"] == 10
    assert declared(**GATED).digest != plain.digest
