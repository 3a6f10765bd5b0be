"""Live experiment operations and admin auth: validated like the config, atomic, audited."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from router.controlplane.experiment import ExperimentState, effective_weights
from router.controlplane.operations import (
    OPERATION_TYPES,
    AddCandidate,
    Operation,
    Pause,
    Promote,
    RemoveArm,
    Resume,
    Rollback,
    SetShadows,
    SetWeights,
    apply_operation,
    from_params,
)
from router.controlplane.store import FileStore
from router.http.auth import AdminAuth, load_admin_token
from serve.config import AdminConfig, ExperimentConfig
from serve.errors import AbserveError, ConfigError, Forbidden, InvalidInput, NotFound, Unauthorized

DEPLOYED = {"v1", "v2", "v3"}


def state() -> ExperimentState:
    arms = [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}]
    exp = ExperimentConfig.model_validate({"baseline": "v1", "arms": arms})
    return ExperimentState(exp)


def apply(s: ExperimentState, op: Operation) -> ExperimentState:
    new, entry = apply_operation(s, op, deployed=DEPLOYED, who="tester", clock=lambda: 5.0)
    assert entry["revision"] == new.revision == s.revision + 1
    assert entry["before"]["weights"] == s.weights() and entry["after"]["weights"] == new.weights()
    assert entry["who"] == "tester" and entry["time"] == 5.0
    assert entry["operation"] == op.kind and entry["params"] == op.params()
    return new


def refuse(op: Operation, s: ExperimentState | None = None) -> None:
    apply_operation(s or state(), op, deployed=DEPLOYED, who="t")


def test_set_weights() -> None:
    new = apply(state(), SetWeights({"v1": 50, "v2": 50}))
    assert new.weights() == {"v1": 50, "v2": 50}
    assert new.updated_by == "tester" and new.updated_at == 5.0


@pytest.mark.parametrize(
    "weights, needle",
    [
        ({"v1": 95, "v2": 10}, "sum to 105"),
        ({"v1": 110, "v2": -10}, "negative"),
        ({"v1": math.nan, "v2": 10}, "finite"),
        ({"v1": "90", "v2": 10}, "finite number"),
        ({"v9": 0}, "not an arm"),
        ({}, "expected an object"),
    ],
)
def test_invalid_weights_refused_and_state_unchanged(weights: dict[str, Any], needle: str) -> None:
    s = state()
    with pytest.raises(InvalidInput, match=needle):
        refuse(SetWeights(weights), s)
    assert s.weights() == {"v1": 90, "v2": 10} and s.revision == 1


def test_add_candidate_takes_from_baseline_and_must_be_deployed() -> None:
    new = apply(state(), AddCandidate("v3", weight=5))
    assert new.weights() == {"v1": 85, "v2": 10, "v3": 5}
    assert apply(state(), AddCandidate("v3")).weights() == {"v1": 90, "v2": 10, "v3": 0}
    with pytest.raises(InvalidInput, match="not deployed"):
        refuse(AddCandidate("v7"))
    with pytest.raises(InvalidInput, match="already an arm"):
        refuse(AddCandidate("v2"))
    with pytest.raises(InvalidInput, match="expected a version name"):
        refuse(AddCandidate(None))
    with pytest.raises(InvalidInput, match="weight: expected a finite number"):
        refuse(AddCandidate("v3", weight="5"))


def test_remove_promote_rollback_pause() -> None:
    s = state()
    assert apply(s, RemoveArm("v2")).weights() == {"v1": 100}
    promoted = apply(s, Promote("v2"))
    assert promoted.experiment.baseline == "v2" and promoted.weights() == {"v1": 0, "v2": 100}
    back = apply(s, Rollback("v2"))
    assert back.weights() == {"v1": 100, "v2": 0}
    assert apply(s, Rollback()).weights() == {"v1": 100, "v2": 0}  # every candidate
    paused = apply(s, Pause())
    assert paused.weights() == {"v1": 90, "v2": 10} and paused.paused
    assert effective_weights(paused) == {"v1": 100, "v2": 0}
    assert effective_weights(apply(paused, Resume())) == {"v1": 90, "v2": 10}
    with pytest.raises(InvalidInput, match="baseline"):
        refuse(RemoveArm("v1"), s)
    with pytest.raises(InvalidInput, match="already the baseline"):
        refuse(Promote("v1"), s)
    with pytest.raises(InvalidInput, match="cannot roll back the baseline"):
        refuse(Rollback("v1"), s)
    with pytest.raises(NotFound):
        refuse(Promote("v5"), s)
    with pytest.raises(NotFound):
        refuse(RemoveArm(["v2"]), s)
    with pytest.raises(InvalidInput, match="not an experiment operation"):
        refuse("promote", s)  # type: ignore[arg-type]


def test_audit_names_stay_the_old_strings() -> None:
    kinds = [cls.kind for cls in OPERATION_TYPES]
    assert kinds == ["set_weights", "set_shadows", "add_candidate", "remove_arm", "promote",
                     "rollback", "pause", "resume"]
    assert Rollback().params() == {} and Rollback("v2").params() == {"version": "v2"}
    assert AddCandidate("v3", 5).params() == {"version": "v3", "weight": 5}
    assert Pause().params() == {}


def test_from_params_refuses_unknown_keys_and_fills_defaults() -> None:
    assert from_params(AddCandidate, {"version": "v3"}) == AddCandidate("v3", 0)
    assert from_params(Rollback, {}) == Rollback(None)
    assert from_params(SetWeights, {}) == SetWeights(None)  # refused when applied
    assert from_params(Promote, {"version": "v2"}) == Promote("v2")
    assert from_params(Resume, {}) == Resume()
    with pytest.raises(InvalidInput, match=r"promote: unexpected parameters \['verison'\]"):
        from_params(Promote, {"verison": "v2"})
    with pytest.raises(InvalidInput, match=r"add_candidate: unexpected parameters"):
        from_params(AddCandidate, {"version": "v3", "weigth": 5})
    with pytest.raises(InvalidInput, match="pause takes no parameters"):
        from_params(Pause, {"x": 1})
    with pytest.raises(InvalidInput, match="weights: expected an object"):
        refuse(from_params(SetWeights, {}))


def test_operations_are_frozen_values() -> None:
    op = SetWeights({"v1": 100})
    with pytest.raises(AttributeError):
        op.weights = {}  # type: ignore[misc]
    assert op == SetWeights({"v1": 100}) and Pause() == Pause() and Pause() != Resume()


def test_state_round_trip_and_store(tmp_path: Path) -> None:
    s = apply(state(), SetWeights({"v1": 70, "v2": 30}))
    store = FileStore(tmp_path, "app")
    assert store.load() is None
    store.save(s.to_dict(), {"revision": s.revision, "operation": "set_weights"})
    store.append_audit({"revision": 3, "operation": "pause"})
    again = FileStore(tmp_path, "app")
    assert ExperimentState.from_dict(again.load() or {}) == s
    assert [e["revision"] for e in again.audit()] == [2, 3]
    assert [e["revision"] for e in again.audit(limit=1)] == [3]


TOKEN = "s3cret-token-0123456789"


def test_auth_accepts_only_the_bearer_header() -> None:
    auth = AdminAuth(TOKEN.encode())
    auth.check(f"Bearer {TOKEN}")
    auth.check(f"bearer   {TOKEN}")
    for header in (None, "", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer a b",
                   TOKEN, f"Token {TOKEN}"):
        with pytest.raises(Unauthorized) as info:
            auth.check(header)
        assert TOKEN not in info.value.message
    with pytest.raises(Unauthorized, match="URL"):
        auth.check(f"Bearer {TOKEN}", query_keys=["token"])
    assert TOKEN not in repr(auth)


def test_disabled_without_token(tmp_path: Path) -> None:
    assert load_admin_token(AdminConfig(), environ={}) is None
    with pytest.raises(Forbidden, match="disabled"):
        AdminAuth(None).check(f"Bearer {TOKEN}")
    assert load_admin_token(AdminConfig(), environ={"ABSERVE_ADMIN_TOKEN": TOKEN}) == TOKEN.encode()
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert load_admin_token(AdminConfig(token_file=str(f)), environ={}) == TOKEN.encode()
    with pytest.raises(ConfigError, match="shorter"):
        load_admin_token(AdminConfig(), environ={"ABSERVE_ADMIN_TOKEN": "short"})


def test_errors_carry_status() -> None:
    from serve.errors import to_http

    assert to_http(Unauthorized("x"))[0] == 401
    assert to_http(Forbidden("x"))[0] == 403
    assert isinstance(Unauthorized("x"), AbserveError)


def test_set_shadows_validated_like_the_config() -> None:
    new = apply(state(), SetShadows([{"version": "v3", "percent": 25}]))
    assert [(s.version, s.share) for s in new.experiment.shadows] == [("v3", 0.25)]
    assert apply(new, SetShadows([])).experiment.shadows == []
    for bad, needle in (([{"version": "v9", "percent": 10}], "deployed"),
                        ([{"version": "v3", "percent": 150}], "percent"),
                        ([{"version": ["v3"], "percent": 10}], "deployed"),
                        (["v3"], "deployed"),
                        ("v3", "list")):
        with pytest.raises(InvalidInput, match=needle):
            refuse(SetShadows(bad))
