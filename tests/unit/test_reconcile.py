"""The config file is the desired state: the reconciliation rule, case by case (issue 18,
item 3), on the experiment service with a FileStore in tmp_path and a fake clock.

The rule (docs/experiments.md, "The config file is the desired state"): what a config
declares of the live experiment (its ``experiment`` block and ``canary`` plan) is a
``Declaration`` whose digest is the config revision. A live change (an admin call, a canary
step) is an override recorded against the config revision it was made on. Starting or
redeploying with the same config revision keeps the live state; a new config revision
replaces it, rolls back a canary still running, starts a declared plan, and the audit log
says what was replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.controlplane.canary import CanaryStatus
from router.controlplane.experiment import Declaration, ExperimentState
from router.controlplane.operations import Pause, SetShadows, SetWeights
from router.controlplane.service import ExperimentService
from router.controlplane.store import FileStore
from serve.config import AbserveConfig, parse_config
from serve.errors import ConfigError
from tests.unit.test_service import PLAN, Clock, run

BASE: dict[str, Any] = {
    "models": [{"version": "v1"}, {"version": "v2"}, {"version": "v3"}],
    "experiment": {"name": "exp", "baseline": "v1",
                   "arms": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}]},
}


def config(weights: tuple[float, float] = (90, 10), **extra: Any) -> AbserveConfig:
    exp = {**BASE["experiment"], "arms": [{"version": "v1", "weight": weights[0]},
                                          {"version": "v2", "weight": weights[1]}]}
    return parse_config({**BASE, "experiment": exp, **extra})


def start(tmp_path: Path, cfg: AbserveConfig, clock: Clock | None = None) -> ExperimentService:
    """A controller start: the service over the store, told what ``cfg`` declares."""
    return ExperimentService(cfg, FileStore(tmp_path, "app"), clock=clock or Clock(),
                             declared=Declaration.of(cfg))


def operations(svc: ExperimentService) -> list[str]:
    return [e["operation"] for e in svc.audit()]  # oldest first


# ------------------------------------------------------------------ the config revision


def test_the_config_revision_is_the_declarations_digest() -> None:
    a, b = Declaration.of(config()), Declaration.of(config())
    assert a.digest == b.digest and len(a.digest) == 12
    assert Declaration.of(config((80, 20))).digest != a.digest
    assert Declaration.of(config(canary={"candidate": "v3"})).digest != a.digest
    # Key order and the file around the experiment do not matter.
    moved = parse_config({**BASE, "router": {"num_replicas": 3}})
    assert Declaration.of(moved).digest == a.digest
    assert Declaration.from_user_config(a.to_user_config(), moved) == a


@pytest.mark.parametrize(("user_config", "says"), [
    ({"experiment": {**BASE["experiment"], "arms": [{"version": "v9", "weight": 100}],
                     "baseline": "v9"}}, "experiment.arms.0.version: unknown version 'v9'"),
    ({"experiment": BASE["experiment"], "canary": {"candidate": "v7"}},
     "canary.candidate: unknown version 'v7'"),
    ({"experiment": {**BASE["experiment"], "shadows": [{"version": "v3", "share": 0.1}]}},
     "write percent: 10 instead of share: 0.1"),
])
def test_a_bad_user_config_is_refused_naming_the_field(user_config: dict[str, Any],
                                                       says: str) -> None:
    with pytest.raises(ConfigError) as info:
        Declaration.from_user_config(user_config, config())
    assert says in str(info.value)


def test_a_user_config_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="experiment: ..., canary: ..."):
        Declaration.from_user_config({"weights": {"v1": 100}}, config())


# ------------------------------------------------------------------ the rule, case by case


def test_first_start_takes_the_declaration(tmp_path: Path) -> None:
    svc = start(tmp_path, config())
    digest = Declaration.of(config()).digest
    assert svc.state.revision == 1 and svc.state.config_revision == digest
    assert svc.state.live_changes == 0 and svc.state.weights() == {"v1": 90, "v2": 10}
    [entry] = svc.audit()
    assert entry["operation"] == "init" and entry["params"] == {"config_revision": digest}


def test_a_restart_on_the_same_config_revision_keeps_the_live_changes(tmp_path: Path) -> None:
    svc = start(tmp_path, config())
    run(svc.apply(SetWeights({"v1": 60, "v2": 40}), "alice"))
    run(svc.apply(Pause(), "bob"))
    again = start(tmp_path, config())
    assert again.state == svc.state
    assert again.state.weights() == {"v1": 60, "v2": 40} and again.state.paused
    assert again.state.live_changes == 2 and again.state.revision == 3
    assert operations(again) == ["init", "set_weights", "pause"]  # nothing replaced


def test_a_new_config_revision_replaces_the_live_changes_and_says_so(tmp_path: Path) -> None:
    clock = Clock(50.0)
    svc = start(tmp_path, config(), clock)
    old = svc.state.config_revision
    run(svc.apply(SetWeights({"v1": 60, "v2": 40}), "alice"))
    run(svc.apply(SetShadows([{"version": "v3", "percent": 20}]), "alice"))
    clock.t = 60.0
    again = start(tmp_path, config((70, 30)), clock)
    new = Declaration.of(config((70, 30))).digest
    assert again.state.weights() == {"v1": 70, "v2": 30}
    assert again.state.experiment.shadows == [] and not again.state.paused
    assert again.state.revision == 4 and again.state.config_revision == new
    assert again.state.live_changes == 0 and again.state.updated_by == "config"
    entry = again.audit(1)[0]
    assert entry["operation"] == "deploy" and entry["who"] == "config"
    assert entry["params"] == {"config_revision": new}
    assert entry["replaced"] == {"revision": 3, "config_revision": old, "live_changes": 2,
                                 "paused": False,
                                 "shadows": [{"version": "v3", "percent": 20.0}]}
    assert entry["before"]["weights"] == {"v1": 60, "v2": 40}
    assert entry["after"]["weights"] == {"v1": 70, "v2": 30}
    # ... and the replaced state's own changes stay in the log.
    assert operations(again) == ["init", "set_weights", "set_shadows", "deploy"]


def test_a_redeploy_while_running_applies_the_rule(tmp_path: Path) -> None:
    svc = start(tmp_path, config())
    run(svc.apply(SetWeights({"v1": 50, "v2": 50}), "alice"))
    same = run(svc.declare(Declaration.of(config())))
    assert same == {"config_revision": svc.state.config_revision, "replaced": False,
                    "live_changes": 1}
    assert svc.state.weights() == {"v1": 50, "v2": 50}
    changed = run(svc.declare(Declaration.of(config((80, 20)))))
    assert changed["replaced"] is True and changed["live_changes"] == 1
    assert svc.state.weights() == {"v1": 80, "v2": 20} and svc.state.revision == 3
    # What a restart after it finds: the redeployed revision, kept.
    assert start(tmp_path, config((80, 20))).state == svc.state


def test_a_state_from_before_config_revisions_is_replaced(tmp_path: Path) -> None:
    """A saved state that records no config revision (an earlier release) cannot be told
    apart from a stale one: the declaration wins, and the audit says the revision was
    unknown."""
    cfg = config()
    old = ExperimentState(config((60, 40)).experiment, revision=9)
    FileStore(tmp_path, "app").save(old.to_dict())
    svc = start(tmp_path, cfg)
    assert svc.state.weights() == {"v1": 90, "v2": 10} and svc.state.revision == 10
    assert svc.audit(1)[0]["replaced"]["config_revision"] is None


def test_a_new_config_revision_rolls_back_a_running_canary(tmp_path: Path) -> None:
    svc = start(tmp_path, config())
    run(svc.start_canary(PLAN, "ops"))
    assert svc.state.weights()["v3"] == 50
    again = start(tmp_path, config((85, 15)))
    assert again.rollout is not None
    assert again.rollout.state.status == CanaryStatus.ROLLED_BACK
    assert "config revision" in again.rollout.state.history[-1].reasons[0]
    assert again.state.weights() == {"v1": 85, "v2": 15}  # v3 is not in the new file
    deploy = [e for e in again.audit() if e["operation"] == "deploy"][0]
    assert deploy["canary_replaced"] == "v3" and deploy["replaced"]["live_changes"] == 2


# ------------------------------------------------------------------ a declared canary


CANARY = {"candidate": "v3", "steps": [50, 100], "interval_s": 10, "min_requests": 20}


def test_a_declared_canary_starts_with_its_config_revision_and_only_then(
        tmp_path: Path) -> None:
    cfg = config(canary=CANARY)
    svc = start(tmp_path, cfg)
    assert svc.rollout is not None and svc.rollout.state.status == CanaryStatus.RUNNING
    assert svc.state.weights()["v3"] == 50
    started = [e for e in svc.audit() if e["who"] == "config"]
    assert {e["operation"] for e in started} >= {"init", "set_weights"}
    # A restart on the same revision carries on with the same canary (not a second start).
    again = start(tmp_path, cfg)
    assert again.rollout is not None and again.rollout.to_dict() == svc.rollout.to_dict()
    # Ended (aborted here), it is not started again by a restart on that revision.
    run(again.canary_action("abort", "ops"))
    third = start(tmp_path, cfg)
    assert third.rollout is not None and third.rollout.state.status == CanaryStatus.ROLLED_BACK
    assert third.state.weights()["v3"] == 0


def test_a_declared_canary_that_does_not_fit_is_refused_and_said(tmp_path: Path) -> None:
    """v2 holds 60 %: a first step of 50 % for v3 does not fit beside it. The declared
    experiment is still adopted; the plan is refused, logged, and in the audit log."""
    cfg = config((40, 60), canary=CANARY)
    svc = start(tmp_path, cfg)
    assert svc.rollout is None and svc.state.weights() == {"v1": 40, "v2": 60}
    refused = svc.audit(1)[0]
    assert refused["operation"] == "canary" and "does not fit" in refused["params"]["refused"]


# ------------------------------------------------------------------ abserve diff


def diff(svc: ExperimentService, cfg: AbserveConfig) -> tuple[list[str], bool]:
    from serve.cli.admin import diff_lines

    return diff_lines(Declaration.of(cfg), svc.state.to_dict(), svc.canary_status(), "a.yaml")


def test_diff_says_when_the_live_experiment_is_the_file(tmp_path: Path) -> None:
    lines, same = diff(start(tmp_path, config()), config())
    assert same and lines[-1] == "the live experiment is what the file declares"
    assert "made on config revision " + Declaration.of(config()).digest in lines[1]


def test_diff_shows_the_live_overrides_field_by_field(tmp_path: Path) -> None:
    svc = start(tmp_path, config())
    run(svc.apply(SetWeights({"v1": 60, "v2": 40}), "alice"))
    run(svc.apply(SetShadows([{"version": "v3", "percent": 20}]), "alice"))
    run(svc.apply(Pause(), "alice"))
    lines, same = diff(svc, config())
    assert not same and "3 live change(s) since, last by alice" in lines[1]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:-1]}
    assert rows == {"arms.v1.weight": ["90", "60"], "arms.v2.weight": ["10", "40"],
                    "shadows.v3.percent": ["-", "20"], "paused": ["false", "true"]}
    assert "override this config revision" in lines[-1]


def test_diff_says_what_deploying_another_file_would_replace(tmp_path: Path) -> None:
    svc = start(tmp_path, config())
    lines, same = diff(svc, config((70, 30), canary=CANARY))
    assert not same
    assert any(line.split()[:3] == ["arms.v1.weight", "70", "90"] for line in lines)
    assert any(line.split()[0] == "canary" and "v3 (steps 50,100)" in line for line in lines)
    assert "deploying this file (abserve up, serve deploy) replaces it" in lines[-1]


def test_diff_of_a_declared_canary_running_as_declared(tmp_path: Path) -> None:
    cfg = config(canary=CANARY)
    svc = start(tmp_path, cfg)
    lines, same = diff(svc, cfg)
    # The running canary is the file's own plan: only its step's weights differ.
    assert not any(line.split()[0] == "canary" for line in lines[3:-1])
    assert {line.split()[0] for line in lines[3:-1]} == {"arms.v1.weight", "arms.v3.weight"}
    assert not same and "override" in lines[-1]
