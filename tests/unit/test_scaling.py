"""ScaleTracker: replica-count snapshots in, scale steps out (no Ray, injected times)."""

from __future__ import annotations

from serve.cli.scaling import ReplicaCount, ScaleStep, ScaleTracker, format_step


def rc(target: int, running: int, total: int | None = None) -> ReplicaCount:
    return ReplicaCount(target, running, running if total is None else total)


def test_steady_deployment_has_no_steps() -> None:
    t = ScaleTracker()
    for now in range(5):
        assert t.observe(now, {"v1": rc(1, 1)}) == []
    assert t.steps == []


def test_upscale_then_downscale_with_durations() -> None:
    t = ScaleTracker()
    t.observe(0.0, {"v1": rc(1, 1), "router": rc(1, 1)})
    [started] = t.observe(1.0, {"v1": rc(3, 1, 3), "router": rc(1, 1)})
    assert (started.from_replicas, started.to_replicas, started.outcome) == (1, 3, "pending")
    assert t.observe(2.0, {"v1": rc(3, 2, 3)}) == []
    [done] = t.observe(4.5, {"v1": rc(3, 3)})
    assert done.outcome == "done" and done.duration_s == 3.5 and done.direction == "up"
    [down] = t.observe(10.0, {"v1": rc(1, 1, 3)})  # two replicas still stopping
    assert down.direction == "down" and down.finished_at is None
    [down] = t.observe(12.0, {"v1": rc(1, 1, 1)})
    assert down.duration_s == 2.0
    assert [(s.from_replicas, s.to_replicas, s.outcome) for s in t.steps] == [
        (1, 3, "done"), (3, 1, "done")]


def test_new_target_before_the_last_one_is_reached_supersedes_it() -> None:
    t = ScaleTracker()
    t.observe(0.0, {"v1": rc(1, 1)})
    t.observe(1.0, {"v1": rc(2, 1, 2)})
    changed = t.observe(2.0, {"v1": rc(3, 1, 3)})
    assert [(s.from_replicas, s.to_replicas, s.outcome) for s in changed] == [
        (1, 2, "superseded"), (2, 3, "pending")]
    t.observe(5.0, {"v1": rc(3, 3)})
    assert t.steps[-1] == ScaleStep("v1", 2, 3, 2.0, 5.0, "done")


def test_first_sight_while_converging_opens_a_step() -> None:
    t = ScaleTracker()
    [step] = t.observe(0.0, {"v1": rc(2, 0, 2)})
    assert (step.from_replicas, step.to_replicas) == (0, 2)
    [done] = t.observe(3.0, {"v1": rc(2, 2)})
    assert done.duration_s == 3.0


def test_deleted_deployment_closes_its_step() -> None:
    t = ScaleTracker()
    t.observe(0.0, {"v1": rc(1, 1)})
    t.observe(1.0, {"v1": rc(2, 1, 2)})
    [gone] = t.observe(2.0, {})
    assert gone.outcome == "superseded"


def test_format_and_dict() -> None:
    step = ScaleStep("activity-v1", 1, 2, 100.0, 103.25, "done")
    line = format_step(step)
    assert "activity-v1" in line and "1 -> 2" in line and "3.2s" in line and "done" in line
    assert step.to_dict()["duration_s"] == 3.25 and step.to_dict()["direction"] == "up"
